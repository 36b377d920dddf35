// Progress: follow a launch's Server-Sent Events; open the server once it is ready.
import { api, ApiError, el, launchAndFollow, pageData, serverPath } from "./labdock.js";

const data = pageData();
const user = data.user;
const server = data.server;
const path = serverPath(user, server.name);
const bar = document.getElementById("bar");
const percent = document.getElementById("percent");
const now = document.getElementById("step-now");
const steps = document.getElementById("steps");
const failure = document.getElementById("failure");
const LOGS = "\n\nLast lines of its output:\n";

/** Plain words for the backend's step messages. */
function plain(message) {
  if (/^image .* is ready$/.test(message)) return "The environment's image is ready";
  if (message === "queued") return "Queued";
  if (message === "creating the container") return "Creating the container";
  if (message === "starting the container") return "Starting the container";
  if (message === "the container is already running") return "The container is already running";
  if (message === "waiting for the app to answer") return "Waiting for the app to answer";
  if (message === "ready" || message.startsWith("ready at ")) return "Ready";
  // The backend names servers by id ("server 12 exited ..."): to the analyst it is the app.
  const text = message.replace(/^server \d+ /i, "the app ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function addStep(text, status) {
  const last = steps.lastElementChild;
  if (last && last.dataset.text === text) {
    last.className = status;
    return;
  }
  if (last && last.className === "current") last.className = "done";
  const icon = el("span", { class: "icon", "aria-hidden": "true" });
  const item = el("li", { class: status, "data-text": text }, icon, el("span", {}, text));
  steps.append(item);
}

function setProgress(value) {
  bar.value = value;
  percent.textContent = `${value}%`;
}

function ready(url) {
  setProgress(100);
  addStep("Ready", "done");
  now.textContent = "Ready. Opening your server…";
  document.getElementById("phase").textContent = "Ready";
  const link = document.getElementById("open");
  link.href = url;
  link.textContent = url;
  document.getElementById("ready").hidden = false;
  setTimeout(() => window.location.assign(url), 400);
}

function failed(message) {
  const [reason, logs] = message.includes(LOGS) ? message.split(LOGS) : [message, ""];
  document.getElementById("phase").textContent = "Failed";
  document.querySelector(".progress-card").classList.add("is-failed");
  addStep(plain(reason), "failed");
  now.textContent = "The launch stopped.";
  document.getElementById("reason").textContent = plain(reason);
  document.getElementById("logs").textContent = logs;
  document.getElementById("logs-box").hidden = !logs;
  failure.hidden = false;
  document.getElementById("retry").focus();
}

function follow() {
  const source = new EventSource(`/hub/api${path}/progress`);
  let finished = false;
  source.onmessage = (event) => {
    let payload;
    try {
      payload = JSON.parse(event.data);
    } catch {
      return;
    }
    if (payload.ready) {
      finished = true;
      source.close();
      ready(payload.url || server.url);
      return;
    }
    if (payload.failed) {
      finished = true;
      source.close();
      setProgress(payload.progress || 100);
      failed(payload.message || "the launch failed");
      return;
    }
    setProgress(payload.progress || 0);
    const text = plain(payload.message || "");
    // The final event of a server that is not starting: say so rather than wait.
    if (payload.progress === 100) {
      finished = true;
      source.close();
      now.textContent = text;
      failed(text);
      return;
    }
    now.textContent = `${text}…`;
    addStep(text, "current");
  };
  source.onerror = () => {
    if (finished) return;
    source.close();
    // The stream broke (hub restarted, network): ask for the state and decide.
    setTimeout(check, 1000);
  };
}

async function check() {
  try {
    const model = await api("GET", `/users/${encodeURIComponent(user)}`);
    const found = model.servers[server.name];
    if (!found) failed("this server no longer exists");
    else if (found.state === "running") ready(found.url);
    else if (found.state === "starting") follow();
    else failed(found.stopped_reason || `the server is ${found.state}`);
  } catch (error) {
    failed(error instanceof ApiError ? error.message : String(error));
  }
}

document.getElementById("retry").addEventListener("click", async (event) => {
  const button = event.currentTarget;
  button.disabled = true;
  button.textContent = "Retrying…";
  try {
    await launchAndFollow(user, server.name, "POST", `${path}/restart`);
  } catch (error) {
    document.getElementById("reason").textContent =
      error instanceof ApiError ? `Not launched: ${error.message}` : String(error);
    button.disabled = false;
    button.textContent = "Retry";
  }
});

addStep("Request accepted", "done");
follow();
