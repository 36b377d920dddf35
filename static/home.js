// Home: my servers with live use against their limits, my quotas, my home folder.
import {
  api, ApiError, bytes, cores, duration, el, launchAndFollow, meter, pageData, serverPath,
} from "./labdock.js";

const data = pageData();
const user = data.user;
const list = document.getElementById("servers");
const alerts = document.getElementById("alerts");
const cards = new Map(); // server name -> {node, key, model}
const EVERY_MS = 3000;

const STATES = {
  running: "Running",
  starting: "Starting",
  stopping: "Stopping",
  stopped: "Stopped",
  failed: "Failed",
  unknown: "Unknown",
};

function label(model) {
  return model.name || "default";
}

/** The stopped reason as the page says it: "stopped: exceeded its 64 MiB memory limit". */
function reasonText(model) {
  const reason = model.stopped_reason;
  if (!reason) return model.state === "unknown" ? "the container engine cannot be reached" : "";
  return /^(stopped|failed)\b/.test(reason) ? reason : `stopped: ${reason}`;
}

function showError(message) {
  const close = el("button", { type: "button", class: "link", text: "Dismiss" });
  const note = el("p", { class: "error", role: "alert" }, message, " ", close);
  close.addEventListener("click", () => note.remove());
  alerts.append(note);
}

async function act(button, busyText, work) {
  const text = button.textContent;
  button.disabled = true;
  button.textContent = busyText;
  try {
    await work();
  } catch (error) {
    showError(error instanceof ApiError ? error.message : String(error));
  } finally {
    button.disabled = false;
    button.textContent = text;
  }
}

function stop(model, button) {
  return act(button, "Stopping…", async () => {
    await api("DELETE", serverPath(user, model.name));
    await refresh();
  });
}

function restart(model, button) {
  return act(button, "Starting…", () =>
    launchAndFollow(user, model.name, "POST", serverPath(user, model.name) + "/restart"),
  );
}

function remove(model, button) {
  const dialog = document.getElementById("confirm-remove");
  dialog.querySelector("[data-name]").textContent = label(model);
  dialog.returnValue = "";
  dialog.addEventListener(
    "close",
    () => {
      if (dialog.returnValue !== "remove") {
        button.focus();
        return;
      }
      act(button, "Removing…", async () => {
        await api("DELETE", serverPath(user, model.name), { remove: true });
        await refresh();
      });
    },
    { once: true },
  );
  dialog.showModal();
}

function actions(model) {
  const name = label(model);
  const buttons = [];
  const button = (text, cls, handler, hint) =>
    el("button", {
      type: "button",
      class: `button ${cls}`.trim(),
      "aria-label": `${text} ${name}`,
      title: hint,
      onclick: (event) => handler(model, event.currentTarget),
    }, text);
  if (model.state === "running") {
    buttons.push(el("a", { class: "button primary", href: model.url, "aria-label": `Open ${name}` }, "Open"));
    buttons.push(button("Stop", "", stop, "Stop it; the home folder stays"));
    buttons.push(button("Restart", "", restart, "Stop it and start it again"));
  } else if (model.state === "starting") {
    buttons.push(el("a", { class: "button primary", href: `/hub/progress/${encodeURIComponent(model.name)}` }, "Watch progress"));
    buttons.push(button("Stop", "", stop, "Cancel the launch"));
  } else if (model.state !== "stopping") {
    const again = model.state === "failed" ? "Retry" : "Start";
    buttons.push(button(again, "primary", restart, "Start it again with the same size"));
  }
  if (model.state !== "stopping" && model.state !== "starting") {
    buttons.push(button("Remove", "danger quiet", remove, "Delete the container; the home folder stays"));
  }
  return el("div", { class: "button-row" }, buttons);
}

function card(model) {
  const name = label(model);
  const res = model.resources;
  const size = `${cores(res.cpus)} CPU${res.cpus === 1 ? "" : "s"} · ${bytes(res.memory)}` +
    (res.gpus ? ` · ${res.gpus} GPU${res.gpus === 1 ? "" : "s"}` : "");
  const title = model.state === "running"
    ? el("a", { href: model.url }, name)
    : name;
  const head = el("div", { class: "server-head" },
    el("div", {},
      el("h3", { class: "server-name" }, title),
      el("p", { class: "env" },
        el("span", { class: "env-name" }, model.environment || "unknown environment"),
        model.version ? el("span", { class: "tag" }, model.version) : null,
        el("span", { class: "size" }, size))),
    el("span", { class: `state ${model.state}` }, el("span", { class: "dot", "aria-hidden": "true" }), STATES[model.state] || model.state));
  const reason = reasonText(model);
  const parts = [head];
  parts.push(el("div", { class: "warning", role: "alert", hidden: true, "data-warning": "" }));
  if (reason && model.state !== "running" && model.state !== "starting") {
    parts.push(el("p", { class: `reason ${/memory limit/.test(reason) ? "oom" : ""}`.trim() }, reason));
  }
  if (model.state === "running" || model.state === "starting") {
    // A process the kernel killed while the server lives on (an OOM-killed child).
    for (const notice of model.notices || []) {
      parts.push(el("p", { class: "reason oom", role: "status", "data-notice": "" }, notice));
    }
  }
  if (model.state === "running") {
    parts.push(el("div", { class: "live", "data-live": "" },
      el("div", { class: "stat" },
        el("span", { class: "stat-label" }, "CPU"),
        meter(`CPU use of ${name}`, null, "measuring"),
        el("span", { class: "stat-value", "data-cpu": "" }, "measuring…")),
      el("div", { class: "stat" },
        el("span", { class: "stat-label" }, "Memory"),
        meter(`Memory use of ${name}`, null, "measuring"),
        el("span", { class: "stat-value", "data-memory": "" }, "measuring…"))));
    parts.push(el("p", { class: "facts" },
      el("span", {}, "Up ", el("strong", { "data-uptime": "" }, duration(secondsSince(model.started)))),
      el("span", {}, "Idle ", el("strong", { "data-idle": "" }, duration(secondsSince(model.last_activity))))));
  }
  parts.push(actions(model));
  return el("li", { class: `server card state-${model.state}`, "data-server": model.name }, parts);
}

function secondsSince(iso) {
  return iso ? (Date.now() - Date.parse(iso)) / 1000 : null;
}

function render(servers) {
  const seen = new Set();
  const ordered = [...servers].sort((a, b) => {
    const rank = (m) => (m.state === "running" || m.state === "starting" ? 0 : 1);
    return rank(a) - rank(b) || a.name.localeCompare(b.name);
  });
  let previous = null;
  let changed = false;
  for (const model of ordered) {
    seen.add(model.name);
    const notices = (model.notices || []).join("|");
    const key = `${model.state}|${model.stopped_reason}|${model.started}|${model.version}|${notices}`;
    let entry = cards.get(model.name);
    if (!entry || entry.key !== key) {
      changed = true;
      const node = card(model);
      if (entry) {
        const hadFocus = entry.node.contains(document.activeElement);
        entry.node.replaceWith(node);
        if (hadFocus) node.querySelector(".actions .button")?.focus();
      }
      entry = { node, key, model };
      cards.set(model.name, entry);
    }
    entry.model = model;
    const want = previous ? previous.nextSibling : list.firstChild;
    if (entry.node !== want) list.insertBefore(entry.node, want);
    previous = entry.node;
  }
  for (const [name, entry] of cards) {
    if (!seen.has(name)) {
      changed = true;
      entry.node.remove();
      cards.delete(name);
    }
  }
  list.setAttribute("aria-busy", "false");
  document.getElementById("empty").hidden = servers.length > 0;
  return changed;
}

function setMeter(node, fraction, text) {
  const bar = node.querySelector(".meter");
  const pct = Math.max(0, Math.min(1, fraction)) * 100;
  bar.querySelector(".fill").style.width = `${pct.toFixed(1)}%`;
  bar.setAttribute("aria-valuenow", pct.toFixed(0));
  bar.setAttribute("aria-valuetext", text);
  bar.classList.toggle("high", fraction >= 0.9);
  bar.classList.toggle("mid", fraction >= 0.75 && fraction < 0.9);
}

function showStats(entry, stats) {
  const node = entry.node;
  const [cpuStat, memoryStat] = node.querySelectorAll(".stat");
  if (!cpuStat) return;
  const cpuFraction = stats.cpus_limit ? stats.cpu_cores / stats.cpus_limit : 0;
  const cpuText = `${cores(stats.cpu_cores)} of ${cores(stats.cpus_limit)} core${stats.cpus_limit === 1 ? "" : "s"}`;
  setMeter(cpuStat, cpuFraction, cpuText);
  node.querySelector("[data-cpu]").textContent = cpuText;
  const pct = Math.round(stats.memory_fraction * 100);
  const memoryText = `${bytes(stats.memory_bytes)} of ${bytes(stats.memory_limit)} (${pct}%)`;
  setMeter(memoryStat, stats.memory_fraction, memoryText);
  node.querySelector("[data-memory]").textContent = memoryText;
  node.querySelector("[data-uptime]").textContent = duration(stats.uptime_s);
  node.querySelector("[data-idle]").textContent = stats.idle_s === null ? "—" : duration(stats.idle_s);
  const warning = node.querySelector("[data-warning]");
  if (stats.memory_warning) {
    warning.textContent =
      `Memory is at ${pct}% of its ${bytes(stats.memory_limit)} limit. ` +
      "Save your work now: at 100% the server is stopped. Free memory (restart a kernel, " +
      "drop large objects) or restart it with more memory.";
    warning.hidden = false;
  } else if (!warning.hidden) {
    warning.hidden = true;
    warning.textContent = "";
  }
  node.classList.toggle("memory-high", Boolean(stats.memory_warning));
}

async function pollStats() {
  const running = [...cards.values()].filter((e) => e.model.state === "running");
  await Promise.all(running.map(async (entry) => {
    try {
      showStats(entry, await api("GET", serverPath(user, entry.model.name) + "/stats"));
    } catch (error) {
      if (error instanceof ApiError && error.status === 409) refresh();
    }
  }));
}

let catalog = null; // environment name -> {version, description}, fetched when first needed

async function describe(servers) {
  const known = new Map([...cards.values()].map((e) => [e.model.name, e.model]));
  const out = servers.map((s) => {
    const was = known.get(s.name);
    // A model without the field (an API that does not report notices) keeps those shown.
    if (s.notices === undefined && was && was.started === s.started) {
      s = { ...s, notices: was.notices, last_oom: was.last_oom };
    }
    return was && was.environment === s.environment
      ? { ...s, version: was.version, description: was.description }
      : { ...s, version: undefined };
  });
  if (out.some((s) => s.version === undefined) && catalog === null) {
    try {
      const envs = await api("GET", "/environments");
      catalog = new Map(envs.map((e) => [e.name, e]));
    } catch {
      catalog = new Map();
    }
  }
  return out.map((s) => {
    if (s.version !== undefined) return s;
    const env = catalog && catalog.get(s.environment);
    return { ...s, version: env ? env.version : null, description: env ? env.description : null };
  });
}

async function refresh() {
  try {
    const model = await api("GET", `/users/${encodeURIComponent(user)}`);
    const servers = await describe(Object.values(model.servers));
    if (render(servers)) {
      refreshQuotas();
      pollStats();
    }
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) window.location.assign("/hub/login?next=/hub/home");
  }
}

// -- quotas and storage ----------------------------------------------------------------------

const RESOURCES = [
  ["cpus", "CPUs", (v) => cores(v)],
  ["memory", "Memory", (v) => bytes(v)],
  ["gpus", "GPUs", (v) => String(v)],
  ["servers", "Servers at once", (v) => String(v)],
];

function quotaCard(title, use, note) {
  const rows = [];
  for (const [key, name, show] of RESOURCES) {
    const item = use[key];
    if (!item) continue;
    if (key === "gpus" && !item.limit && !item.used) continue;
    const limited = item.limit !== null && item.limit !== undefined;
    const fraction = limited ? (item.limit ? item.used / item.limit : 1) : null;
    const text = limited ? `${show(item.used)} of ${show(item.limit)}` : `${show(item.used)} · no limit`;
    rows.push(el("div", { class: "stat" },
      el("span", { class: "stat-label" }, name),
      limited ? meter(`${title}: ${name}`, fraction, text) : null,
      el("span", { class: "stat-value" }, text)));
  }
  return el("div", { class: "card quota-use" },
    el("h3", {}, title),
    note ? el("p", { class: "muted fine" }, note) : null,
    rows);
}

function storageCard(storage) {
  const used = storage.used;
  const quota = storage.quota;
  const known = used !== null && used !== undefined;
  const fraction = known && quota ? used / quota : null;
  const text = !known ? "not measured yet" : quota ? `${bytes(used)} of ${bytes(quota)}` : `${bytes(used)} · no limit`;
  const measured = storage.measured ? `Measured ${duration(secondsSince(storage.measured))} ago.` : "";
  return el("div", { class: "card quota-use storage" },
    el("h3", {}, "Home folder"),
    el("p", { class: "muted fine" }, "Your files, kept across servers. ", measured),
    el("div", { class: "stat" },
      el("span", { class: "stat-label" }, "Storage"),
      meter("Home folder storage", fraction, text),
      el("span", { class: "stat-value" }, text)),
    storage.warning ? el("p", { class: "warning", role: "alert" }, storage.warning) : null);
}

function renderQuotas(quota, storage) {
  const box = document.getElementById("quotas");
  const cardsOut = [quotaCard("My quota", quota.user)];
  for (const team of quota.teams) {
    const hasLimit = RESOURCES.some(([key]) => team[key] && team[key].limit !== null);
    cardsOut.push(quotaCard(`Team ${team.name}`, team, hasLimit ? "Shared by everyone in the team." : "No team limits; the team's use is shown."));
  }
  if (storage) cardsOut.push(storageCard(storage));
  box.replaceChildren(...cardsOut);
}

async function refreshQuotas() {
  try {
    const limits = await api("GET", `/users/${encodeURIComponent(user)}/limits`);
    let storage = null;
    try {
      storage = await api("GET", `/users/${encodeURIComponent(user)}/storage`);
    } catch {
      storage = null; // this hub does not measure storage: the block stays hidden
    }
    renderQuotas(limits.quota, storage);
  } catch {
    // keep what is shown
  }
}

render(data.servers);
renderQuotas(data.quota, data.storage);
pollStats();
setInterval(() => {
  if (document.visibilityState !== "visible") return;
  pollStats();
  refresh();
}, EVERY_MS);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") {
    refresh();
    pollStats();
  }
});
