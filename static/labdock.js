// Shared helpers of the analyst's pages: the REST API with the session cookie, and formatting.

/** The page's first data, rendered by the hub into <script type="application/json">. */
export function pageData() {
  const node = document.getElementById("page-data");
  return node ? JSON.parse(node.textContent) : {};
}

function xsrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : "";
}

/** An API error: `status` and the hub's plain-words `message`. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Call /hub/api with the session cookie; JSON in and out. Throws ApiError. */
export async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (method !== "GET") init.headers["X-XSRFToken"] = xsrfToken();
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch("/hub/api" + path, init);
  } catch {
    throw new ApiError(0, "the hub cannot be reached; check your connection");
  }
  if (response.status === 204) return null;
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  if (!response.ok) {
    const message = payload && payload.message ? payload.message : response.statusText;
    throw new ApiError(response.status, message || `the hub answered ${response.status}`);
  }
  return payload;
}

/** The API path of a user's server: the default server has no name. */
export function serverPath(user, server) {
  const u = encodeURIComponent(user);
  return server ? `/users/${u}/servers/${encodeURIComponent(server)}` : `/users/${u}/server`;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** Bytes as people read them: 512 MiB, 1.5 GiB. */
export function bytes(n) {
  if (n === null || n === undefined) return "—";
  let value = Number(n);
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const text = value >= 10 || unit === 0 ? value.toFixed(0) : value.toFixed(1).replace(/\.0$/, "");
  return `${text} ${UNITS[unit]}`;
}

/** CPU cores: 0.25, 1, 1.5. */
export function cores(n) {
  if (n === null || n === undefined) return "—";
  return String(Math.round(Number(n) * 100) / 100);
}

/** "1 CPU", "0.5 CPUs", "2 CPUs". */
export function cpuCount(n) {
  return `${cores(n)} ${Number(n) === 1 ? "CPU" : "CPUs"}`;
}

/** A duration in seconds as "3 h 12 min", "5 min", "40 s". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min`;
  return `${s} s`;
}

/** Build an element: el("a", {href: "/", class: "x"}, "text", child). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A labelled meter bar: `fraction` of 0..1 (or null when there is no limit). */
export function meter(label, fraction, text, tone = "") {
  const pct = fraction === null ? 0 : Math.max(0, Math.min(1, fraction)) * 100;
  const fill = el("span", { class: "fill" });
  fill.style.width = `${pct.toFixed(1)}%`;
  const level = fraction === null ? "" : fraction >= 0.9 ? "high" : fraction >= 0.75 ? "mid" : "";
  const attrs = {
    class: `meter ${tone || level}`.trim(),
    role: "meter",
    "aria-label": label,
    "aria-valuemin": "0",
    "aria-valuemax": "100",
    "aria-valuenow": pct.toFixed(0),
    "aria-valuetext": text,
  };
  return el("div", attrs, el("span", { class: "track" }, fill));
}

/**
 * Send a launch (or restart) and go to its progress page as soon as the hub has
 * taken it: the request itself only answers once the server is ready (or after
 * a wait), while the progress page shows each step. Refusals throw ApiError.
 */
export async function launchAndFollow(user, server, method, path, body) {
  const progressPage = `/hub/progress/${encodeURIComponent(server)}`;
  const request = api(method, path, body);
  let settled = false;
  const watch = (async () => {
    // Until the hub answers, check whether the server has started starting.
    for (let i = 0; i < 240 && !settled; i += 1) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      if (settled) return false;
      try {
        const model = await api("GET", `/users/${encodeURIComponent(user)}`);
        const found = model.servers[server];
        if (found && found.state === "starting") return true;
      } catch {
        // keep waiting for the launch request itself
      }
    }
    return false;
  })();
  try {
    const first = await Promise.race([
      request.then(() => "answered"),
      watch.then((started) => (started ? "started" : "waiting")),
    ]);
    if (first === "waiting") await request;
    request.catch(() => {}); // the progress page reports what happens from here
  } finally {
    settled = true;
  }
  window.location.assign(progressPage);
}
