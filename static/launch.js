// Launch: pick an environment and a size the hub can grant now, name the server, go.
import { api, ApiError, bytes, cores, cpuCount, el, launchAndFollow, pageData, serverPath } from "./labdock.js";

const data = pageData();
const user = data.user;
const form = document.getElementById("launch");
const envBox = document.getElementById("envs");
const cpus = document.getElementById("cpus");
const memory = document.getElementById("memory");
const gpus = document.getElementById("gpus");
const nameInput = document.getElementById("server-name");
const errorBox = document.getElementById("form-error");
const submit = document.getElementById("submit");
const versionField = document.getElementById("version-field");
const versionSelect = document.getElementById("version");
const NAME = /^[a-z0-9][a-z0-9_-]{0,31}$/;

let envs = data.limits.environments;
let chosen = null;
// Environment name -> its versions (current first, then newest first), fetched when first chosen
// and again once its current version changes.
const versionCache = new Map();
let versionTicket = 0;

function byName(name) {
  return envs.find((e) => e.name === name) || null;
}

function capText(offer, key, show) {
  const allowed = offer.allowed[key];
  const by = offer.limited_by[key];
  if (by) return `Up to ${show(allowed)}, the room left in ${by}.`;
  return `Up to ${show(allowed)} for ${offer.name}.`;
}

function fill(select, values, preset, show, keepChoice) {
  // A refresh of the same environment keeps the choice; another environment starts at its preset.
  const current = Number(select.value);
  const keep = keepChoice && values.includes(current) ? current : preset;
  select.replaceChildren(...values.map((v) => el("option", { value: String(v), selected: v === keep }, show(v))));
}

function envCard(offer) {
  const id = `env-${offer.name}`;
  const input = el("input", {
    type: "radio",
    name: "environment",
    id,
    value: offer.name,
    disabled: !offer.launchable,
    "aria-describedby": `${id}-about`,
  });
  input.addEventListener("change", () => choose(offer.name));
  const max = offer.launchable
    ? `up to ${cpuCount(offer.allowed.cpus)} · ${bytes(offer.allowed.memory)}` +
      (offer.allowed.gpus ? ` · ${offer.allowed.gpus} GPU${offer.allowed.gpus === 1 ? "" : "s"}` : "")
    : offer.reason;
  return el("div", { class: `env-option${offer.launchable ? "" : " unavailable"}` },
    input,
    el("label", { for: id },
      el("span", { class: "env-title" },
        el("span", { class: "env-name" }, offer.name),
        offer.version ? el("span", { class: "tag" }, offer.version) : null,
        offer.gpu ? el("span", { class: "tag gpu" }, "GPU") : null),
      el("span", { class: "env-about", id: `${id}-about` },
        el("span", { class: "description" }, offer.description || ""),
        offer.contents && offer.contents !== offer.description && offer.contents !== offer.version
          ? el("span", { class: "contents" }, offer.contents)
          : null,
        el("span", { class: offer.launchable ? "env-max" : "env-max blocked" }, max))));
}

function renderEnvs() {
  const hadFocus = envBox.contains(document.activeElement);
  envBox.replaceChildren(...envs.map(envCard));
  document.getElementById("no-envs").hidden = envs.length > 0;
  const wanted = byName(chosen) || byName(data.environment);
  const first = wanted && wanted.launchable ? wanted : envs.find((e) => e.launchable);
  if (first) {
    const radio = document.getElementById(`env-${first.name}`);
    radio.checked = true;
    if (hadFocus) radio.focus();
    choose(first.name);
  } else {
    choose(null);
  }
}

function shortDigest(digest) {
  return typeof digest === "string" && digest.startsWith("sha256:") ? digest.slice(7, 19) : "";
}

function versionText(v) {
  const parts = [v.current ? `${v.version} (current)` : v.version];
  if (v.created) parts.push(v.created.slice(0, 10));
  if (shortDigest(v.digest)) parts.push(shortDigest(v.digest));
  return parts.join(" · ");
}

/** The version a launch would name: null for the current one (the hub's default). */
function chosenVersion() {
  if (versionField.hidden || versionSelect.dataset.environment !== chosen) return null;
  const option = versionSelect.selectedOptions[0];
  return option && !option.hasAttribute("data-current") ? option.value : null;
}

function renderVersions(name, list, keep) {
  const previous = keep ? versionSelect.value : "";
  const selected = list.some((v) => v.version === previous) ? previous : list[0].version;
  versionSelect.replaceChildren(...list.map((v) =>
    el("option", { value: v.version, selected: v.version === selected, "data-current": v.current },
      versionText(v))));
  versionSelect.dataset.environment = name;
  versionField.hidden = list.length < 2;
}

async function showVersions(offer, keep) {
  const ticket = ++versionTicket;
  const cached = versionCache.get(offer.name);
  if (cached && cached.current === offer.version) {
    renderVersions(offer.name, cached.list, keep);
    return;
  }
  if (!keep) versionField.hidden = true;
  let list;
  try {
    const detail = await api("GET", `/environments/${encodeURIComponent(offer.name)}`);
    const current = detail.versions.filter((v) => v.current);
    list = [...current, ...detail.versions.filter((v) => !v.current)];
  } catch {
    list = []; // the form still launches the current version
  }
  if (list.length) versionCache.set(offer.name, { current: offer.version, list });
  if (ticket !== versionTicket || chosen !== offer.name) return;
  if (list.length) renderVersions(offer.name, list, keep);
  else versionField.hidden = true;
  summarize();
}

function suggestName(envName) {
  if (data.server) return data.server;
  const busy = (n) => ["starting", "running", "stopping"].includes(data.servers[n]);
  if (!busy(envName)) return envName;
  for (let i = 2; i < 100; i += 1) if (!busy(`${envName}-${i}`)) return `${envName}-${i}`;
  return "";
}

function choose(name) {
  const offer = byName(name);
  const previous = chosen;
  chosen = offer ? offer.name : null;
  const size = document.getElementById("size");
  size.disabled = !offer;
  submit.disabled = !offer;
  if (!offer) {
    versionTicket += 1;
    versionField.hidden = true;
    summarize();
    return;
  }
  const same = previous === offer.name;
  showVersions(offer, same);
  fill(cpus, offer.choices.cpus, offer.preset.cpus, (v) => `${cores(v)} CPU${v === 1 ? "" : "s"}`, same);
  fill(memory, offer.choices.memory, offer.preset.memory, bytes, same);
  fill(gpus, offer.choices.gpus, offer.preset.gpus, (v) => (v ? `${v} GPU${v === 1 ? "" : "s"}` : "None"), same);
  document.getElementById("cpus-hint").textContent = capText(offer, "cpus", cpuCount);
  document.getElementById("memory-hint").textContent = capText(offer, "memory", bytes);
  const gpuField = document.getElementById("gpus-field");
  gpuField.hidden = !offer.gpu;
  document.getElementById("gpus-hint").textContent = offer.allowed.gpus
    ? capText(offer, "gpus", (v) => `${v} GPUs`)
    : `No GPU is free for you now${offer.limited_by.gpus ? ` (${offer.limited_by.gpus})` : ""}.`;
  if (!nameInput.value || nameInput.value === suggestName(previous || "")) {
    nameInput.value = suggestName(offer.name);
  }
  summarize();
}

function summarize() {
  const offer = byName(chosen);
  const name = nameInput.value.trim();
  document.getElementById("address").textContent = `/user/${user}/${name ? `${name}/` : ""}`;
  const summary = document.getElementById("summary");
  if (!offer) {
    summary.textContent = "Nothing can be launched right now.";
    return;
  }
  const version = chosenVersion();
  const parts = [version ? `${offer.name} ${version}` : offer.name, `${cores(Number(cpus.value))} CPU${Number(cpus.value) === 1 ? "" : "s"}`, bytes(Number(memory.value))];
  if (offer.gpu && Number(gpus.value)) parts.push(`${gpus.value} GPU${gpus.value === "1" ? "" : "s"}`);
  summary.replaceChildren(el("strong", {}, parts.join(" · ")), name ? ` as ${name}` : "");
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

async function reloadLimits() {
  try {
    const fresh = await api("GET", `/users/${encodeURIComponent(user)}/limits`);
    envs = fresh.environments;
    renderEnvs();
  } catch {
    // keep the form as it is
  }
}

form.addEventListener("input", (event) => {
  if (event.target === nameInput) nameInput.removeAttribute("aria-invalid");
  summarize();
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.hidden = true;
  const offer = byName(chosen);
  if (!offer) return;
  const server = nameInput.value.trim();
  if (server && !NAME.test(server)) {
    nameInput.setAttribute("aria-invalid", "true");
    showError("server name: 1 to 32 of a-z, 0-9, '_' and '-', starting with a letter or digit");
    nameInput.focus();
    return;
  }
  const body = { environment: offer.name, cpus: Number(cpus.value), memory: Number(memory.value) };
  if (offer.gpu) body.gpus = Number(gpus.value);
  const version = chosenVersion();
  if (version) body.version = version;
  submit.disabled = true;
  submit.textContent = "Launching…";
  try {
    await launchAndFollow(user, server, "POST", serverPath(user, server), body);
  } catch (error) {
    showError(error instanceof ApiError ? `Not launched: ${error.message}` : String(error));
    submit.disabled = false;
    submit.textContent = "Launch";
    errorBox.focus?.();
    reloadLimits();
  }
});

errorBox.tabIndex = -1;
renderEnvs();
// Quotas change as others launch and stop: keep the offer current while the form is open.
setInterval(() => {
  if (document.visibilityState === "visible" && !submit.disabled) reloadLimits();
}, 15000);
