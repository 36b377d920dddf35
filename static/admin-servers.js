// Live CPU and memory use of every server, from GET /hub/api/stats, every few seconds.
// Without that endpoint (404) or on errors the table keeps its static content and says why.

const PERIOD_MS = 5000;
const table = document.querySelector("table.server-table");
const note = document.getElementById("live-note");
let timer = null;
let busy = false;
let stopped = false;

function say(text) {
  if (note) note.textContent = text;
}

export function formatBytes(n) {
  if (n == null || Number.isNaN(n)) return "—";
  const units = [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]];
  for (const [unit, size] of units) {
    if (Math.abs(n) >= size) return `${(n / size).toFixed(1).replace(/\.0$/, "")} ${unit}`;
  }
  return `${n} B`;
}

export function formatDuration(seconds) {
  if (seconds == null) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s >= 86400) return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  if (s >= 60) return `${Math.floor(s / 60)} min`;
  return `${s} s`;
}

function cores(n) {
  return n == null ? "—" : n.toFixed(n >= 10 ? 0 : 2);
}

function show(row, stat) {
  const cpuMeter = row.querySelector("meter.cpu");
  const memMeter = row.querySelector("meter.memory");
  const cpuText = row.querySelector(".cpu-text");
  const memText = row.querySelector(".memory-text");
  if (!stat) return;
  const cpuLimit = stat.cpus_limit ?? Number(cpuMeter.max);
  cpuMeter.max = cpuLimit || 1;
  cpuMeter.value = Math.min(stat.cpu_cores ?? 0, cpuMeter.max);
  cpuMeter.low = cpuMeter.max * 0.75;
  cpuMeter.high = cpuMeter.max * 0.9;
  cpuMeter.optimum = 0;
  cpuMeter.hidden = false;
  cpuText.textContent = `${cores(stat.cpu_cores)} of ${cpuLimit} CPU`;
  const fraction = stat.memory_fraction ??
    (stat.memory_limit ? stat.memory_bytes / stat.memory_limit : null);
  if (fraction != null) {
    memMeter.value = Math.min(fraction, 1);
    memMeter.hidden = false;
  }
  memText.textContent = `${formatBytes(stat.memory_bytes)} of ${formatBytes(stat.memory_limit)}`;
  row.classList.toggle("warn", Boolean(stat.memory_warning));
  memText.title = stat.memory_warning ? "close to its memory limit" : "";
  const uptime = row.querySelector(".uptime");
  const idle = row.querySelector(".idle");
  if (uptime && stat.uptime_s != null) uptime.textContent = `up ${formatDuration(stat.uptime_s)}`;
  if (idle && stat.idle_s != null) idle.textContent = `idle ${formatDuration(stat.idle_s)}`;
}

async function poll() {
  timer = null;
  if (busy || stopped) return;
  busy = true;
  try {
    await refresh();
  } finally {
    busy = false;
  }
}

async function refresh() {
  let response;
  try {
    response = await fetch(table.dataset.statsUrl, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      cache: "no-store",
    });
  } catch {
    say("Live use is unavailable right now: the hub did not answer. Retrying…");
    schedule();
    return;
  }
  if (response.status === 404) {
    stopped = true;
    say("Live use is not available on this hub; the limits shown are what each server may use.");
    return;
  }
  if (response.status === 401 || response.status === 403) {
    stopped = true;
    say("Live use needs an admin session; reload the page to log in again.");
    return;
  }
  if (!response.ok) {
    say(`Live use is unavailable right now (HTTP ${response.status}). Retrying…`);
    schedule();
    return;
  }
  let data;
  try {
    data = await response.json();
  } catch {
    say("Live use could not be read. Retrying…");
    schedule();
    return;
  }
  const list = Array.isArray(data) ? data : (data.servers ?? []);
  const byKey = new Map(list.map((s) => [`${s.user}/${s.server ?? ""}`, s]));
  for (const row of table.tBodies[0].rows) show(row, byKey.get(row.dataset.key));
  const at = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  say(`Live use as of ${at}; refreshes every ${PERIOD_MS / 1000} s.`);
  schedule();
}

function schedule() {
  if (timer === null && !stopped && !document.hidden) timer = setTimeout(poll, PERIOD_MS);
}

if (table) {
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null && !busy) poll();
  });
  poll();
}
