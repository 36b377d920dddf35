"""Benchmark: labdock's authenticated proxy against nginx and configurable-http-proxy.

$ flock /tmp/labdock-bench.lock .venv/bin/python bench/proxy.py      # what `make bench` runs
$ python bench/proxy.py --quick                                       # shorter runs, for a try
$ python bench/proxy.py --peers direct,labdock --latency-only --rounds 5   # p50 at 1 conn only

One run, one backend (nginx serving static files on loopback), four ways through:

- ``direct``: straight to the backend;
- ``labdock``: a real hub (``bench/_proxy_hub.py``: ``build_hub`` + ``Hub.listen``, as
  ``labdock serve``) with a user, an API token and a route to the backend; every
  request is authenticated;
- ``nginx``: a second nginx (Debian package) as a reverse proxy, keep-alive upstream;
- ``chp``: the ``configurable-http-proxy`` package from PyPI (the Python port),
  installed into ``.cache/bench/chp-venv``.

Measured: 1 KiB GETs with ``wrk`` at 1 connection (p50, p99) and at 32 connections
(req/s), the medians of 5 cells of 2 s per way through, the ways taking turns so that
a shared machine's changing load falls on all of them alike; a 100 MB download and
upload with ``curl`` (MB/s, best of 3, taking turns too); the proxy's RSS growth over
a 1 GB download; WebSocket echo round trips of 1 KiB per second (through a small
tornado echo server, since nginx cannot echo). Missing nginx, wrk or curl are
installed with apt-get. The table goes to stdout, then one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _spawn_setup import (
    SetupError,
    ensure_venv,
    free_port,
    stop_process,
    tail,
)

HERE = Path(__file__).resolve().parent
PY = sys.executable
CHP_PACKAGES = ("configurable-http-proxy==0.4.0",)
TOOLS = {"nginx": "nginx", "wrk": "wrk", "curl": "curl"}
PROXIES = ("direct", "labdock", "nginx", "chp")
MB = 1_000_000
# Measurements a peer could not complete (say, chp answering 503 to a 1 GB download):
# shown as "-" in the table and listed in the JSON line, never dropped silently.
ERRORS: list[str] = []
ROUNDS = [5]  # wrk rounds of this run, for the JSON line


def log(message: str) -> None:
    """Progress goes to stderr: stdout holds only the table and the JSON line."""
    print(f"proxy: {message}", file=sys.stderr, flush=True)


def ensure_tools() -> None:
    """nginx, wrk and curl from Debian, installed when missing."""
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None and
               not Path(f"/usr/sbin/{tool}").exists()]
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    log(f"installing {' '.join(missing)} with apt-get")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


NGINX_COMMON = """
{user}
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  tcp_nodelay on;
  keepalive_requests 1000000;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  {body}
}}
"""

BACKEND = """
  server {{
    listen 127.0.0.1:{port};
    root {www};
    location /upload/ {{
      client_max_body_size 0;
      client_body_buffer_size 1m;
      dav_methods PUT;
      create_full_put_path on;
    }}
  }}
"""

PROXY = """
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    location /ws/ {{
      proxy_pass http://127.0.0.1:{echo};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 3600s;
    }}
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
      proxy_buffers 16 64k;
      proxy_busy_buffers_size 256k;
      proxy_max_temp_file_size 0;
    }}
  }}
"""


class Rig:
    """The processes of one run, and what each way through needs."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.base: dict[str, str] = {}
        self.ws: dict[str, str] = {}
        self.headers: dict[str, list[str]] = {p: [] for p in PROXIES}
        self.pids: dict[str, list[int]] = {}

    def spawn(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        logfile = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - kept for the process
        proc = subprocess.Popen(
            argv, stdout=kwargs.pop("stdout", logfile), stderr=logfile,
            stdin=subprocess.DEVNULL, start_new_session=True, **kwargs,
        )
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            stop_process(proc, within=10)

    def nginx(self, name: str, body: str, workers: str) -> None:
        d = self.work / name
        d.mkdir()
        conf = d / "nginx.conf"
        # As root, nginx's workers would run as nobody, who cannot read the work dir.
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(NGINX_COMMON.format(user=user, workers=workers, dir=d, body=body))
        proc = self.spawn(name, [nginx_bin(), "-c", str(conf), "-p", str(d)])
        time.sleep(0.5)
        if proc.poll() is not None:
            raise SetupError(f"nginx {name} failed:\n{tail(self.work / f'{name}.log')}")
        self.pids[name] = _children(proc.pid) or [proc.pid]

    def start(self, peers: list[str]) -> None:
        www = self.work / "www"
        (www / "upload").mkdir(parents=True)
        (www / "file1k").write_bytes(b"k" * 1024)
        for name, size in (("file100m", 100 * MB), ("file1g", 1000 * MB)):
            with open(www / name, "wb") as fh:
                fh.truncate(size)  # sparse: served from the page cache, no disk used
        (self.work / "up100m").write_bytes(b"u" * (100 * MB))
        backend, nginx_port, echo = free_port(), free_port(), free_port()
        self.nginx("backend", BACKEND.format(port=backend, www=www), "auto")
        self.base["direct"] = f"http://127.0.0.1:{backend}"
        proc = self.spawn("echo", [PY, str(HERE / "_proxy_ws.py"), "serve", str(echo)])
        _wait_port(echo, proc)
        self.ws["direct"] = f"ws://127.0.0.1:{echo}/ws/echo"
        if "nginx" in peers:
            self._start_nginx(nginx_port, backend, echo)
        if "chp" in peers:
            self._start_chp(echo)
        if "labdock" in peers:
            self._start_labdock(echo)

    def _start_nginx(self, nginx_port: int, backend: int, echo: int) -> None:
        self.nginx("nginx", PROXY.format(port=nginx_port, backend=backend, echo=echo), "auto")
        self.base["nginx"] = f"http://127.0.0.1:{nginx_port}"
        self.ws["nginx"] = f"ws://127.0.0.1:{nginx_port}/ws/echo"

    def _start_chp(self, echo: int) -> None:
        chp = ensure_venv("chp-venv", CHP_PACKAGES)
        port = free_port()
        api = free_port()
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": "bench"}
        proc = self.spawn("chp", [
            str(chp / "bin" / "configurable-http-proxy"), "--ip", "127.0.0.1",
            "--port", str(port), "--api-ip", "127.0.0.1", "--api-port", str(api),
            "--default-target", self.base["direct"], "--log-level", "error",
        ], env=env)
        _wait_port(port, proc)
        _wait_port(api, proc)
        subprocess.run(
            ["curl", "-sf", "-X", "POST", "-H", "Authorization: token bench",
             "-d", json.dumps({"target": f"http://127.0.0.1:{echo}"}),
             f"http://127.0.0.1:{api}/api/routes/ws"],
            check=True,
        )
        self.base["chp"] = f"http://127.0.0.1:{port}"
        self.ws["chp"] = f"ws://127.0.0.1:{port}/ws/echo"
        self.pids["chp"] = [proc.pid]

    def _start_labdock(self, echo: int) -> None:
        data = self.work / "labdock"
        data.mkdir()
        proc = self.spawn(
            "labdock",
            [PY, str(HERE / "_proxy_hub.py"), str(data), self.base["direct"],
             f"http://127.0.0.1:{echo}"],
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise SetupError(f"the labdock hub did not start:\n{tail(self.work / 'labdock.log')}")
        info = json.loads(line)
        self.base["labdock"] = f"http://127.0.0.1:{info['port']}/user/bench"
        self.ws["labdock"] = f"ws://127.0.0.1:{info['port']}/user/bench/ws/echo"
        self.headers["labdock"] = [f"Authorization: token {info['token']}"]
        self.pids["labdock"] = [info["pid"]]


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    return [int(p) for p in out.split()]


def _wait_port(port: int, proc: subprocess.Popen[bytes], within: float = 30) -> None:
    import socket

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise SetupError(f"nothing listens on {port} after {within:.0f} s")


# Measurements ----------------------------------------------------------------


_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def _us(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, headers: list[str], conns: int, seconds: float) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--latency"]
    for header in headers:
        argv += ["-H", header]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or "Socket errors" in out:
        raise SetupError(f"wrk saw errors through {url}:\n{out}")
    return {
        "rps": rps,
        "p50_us": _us(p50.group(1)) if p50 else 0.0,
        "p99_us": _us(p99.group(1)) if p99 else 0.0,
    }


def curl_speed(argv: list[str], metric: str) -> float:
    out = subprocess.run(
        ["curl", "-sS", "-f", "-o", "/dev/null", "-w", f"%{{{metric}}}", *argv],
        capture_output=True, text=True, check=True,
    ).stdout
    return float(out) / MB


def header_args(headers: list[str]) -> list[str]:
    return [arg for h in headers for arg in ("-H", h)]


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def rss_growth_mb(pids: list[int], run: Any) -> float:
    """Peak RSS (all of ``pids`` together) during ``run()``, minus RSS before it."""
    before = rss_kb(pids)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_kb(pids))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run()
    finally:
        done.set()
        sampler.join()
    return (peak - before) / 1024


def ws_rate(url: str, headers: list[str], seconds: float) -> float:
    out = subprocess.run(
        [PY, str(HERE / "_proxy_ws.py"), "count", url, str(seconds), *headers],
        capture_output=True, text=True, check=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


def latency_rounds(rig: Rig, names: list[str], seconds: float, rounds: int) -> None:
    """``--latency-only``: p50 at 1 connection, the peers taking turns, ``rounds`` times.

    Taking turns spreads a neighbour's load over every peer alike, so that the
    differences within one round mean something on a shared machine.
    """
    for name in names:
        wrk(rig.base[name] + "/file1k", rig.headers[name], 8, 1)  # warm up
    p50s: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            c1 = wrk(rig.base[name] + "/file1k", rig.headers[name], 1, seconds)
            p50s[name].append(c1["p50_us"])
        log("  ".join(f"{n} {p50s[n][-1]:.0f}" for n in names))
    medians = {n: _median(v) for n, v in p50s.items()}
    out: dict[str, Any] = {"bench": "proxy-latency", "p50_us_c1": p50s, "median": medians}
    if "direct" in medians:
        out["added_median_us"] = {
            n: medians[n] - medians["direct"] for n in names if n != "direct"
        }
    print(json.dumps(out))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def measure(
    rig: Rig, names: list[str], seconds: float, rounds: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Every row for every way through, the ways taking turns within each row.

    On a shared machine the load moves within a minute; measured one after
    the other, one way through could get a quiet minute and the next a busy
    one. Taking turns (``rounds`` wrk cells of ``seconds`` each, medians kept;
    ``repeats`` curl runs, best kept) spreads the load over all of them alike.
    """
    for name in names:
        wrk(rig.base[name] + "/file1k", rig.headers[name], 8, 1)  # warm up: connections, auth
    cells: dict[str, dict[str, list[float]]] = {name: {} for name in names}

    def note(name: str, key: str, value: float) -> None:
        cells[name].setdefault(key, []).append(value)

    log(f"1 KiB GETs: {rounds} rounds of {seconds:g} s per way and connection count")
    for _ in range(rounds):
        for name in names:
            c1 = wrk(rig.base[name] + "/file1k", rig.headers[name], 1, seconds)
            note(name, "p50_us_c1", c1["p50_us"])
            note(name, "p99_us_c1", c1["p99_us"])
            note(name, "rps_c1", c1["rps"])
    for _ in range(rounds):
        for name in names:
            c32 = wrk(rig.base[name] + "/file1k", rig.headers[name], 32, seconds)
            note(name, "rps_c32", c32["rps"])
    results = {name: {k: _median(v) for k, v in cells[name].items()} for name in names}
    log(f"100 MB down and up: {repeats} rounds")
    best: dict[str, dict[str, float]] = {name: {} for name in names}
    for i in range(repeats):
        for name in names:
            base, hargs = rig.base[name], header_args(rig.headers[name])
            down = curl_speed([*hargs, base + "/file100m"], "speed_download")
            up = curl_speed(
                [*hargs, "-T", str(rig.work / "up100m"), f"{base}/upload/{name}-{i}"],
                "speed_upload",
            )
            mine = best[name]
            mine["download_100mb_mbps"] = max(mine.get("download_100mb_mbps", 0.0), down)
            mine["upload_100mb_mbps"] = max(mine.get("upload_100mb_mbps", 0.0), up)
    for name in names:
        results[name].update(best[name])
    for name in names:
        log(f"WebSocket echo and RSS: {name}")
        base, headers = rig.base[name], rig.headers[name]
        hargs = header_args(headers)
        figures = results[name]
        try:
            figures["ws_echo_per_s"] = ws_rate(rig.ws[name], headers, 5.0)
        except subprocess.CalledProcessError as exc:
            ERRORS.append(f"{name}: WebSocket echo: {exc.stderr.strip().splitlines()[-1]}")
            log(ERRORS[-1])
        if name != "direct":
            pids = rig.pids[name]
            try:
                figures["rss_growth_mb_1gb"] = rss_growth_mb(
                    pids,
                    lambda argv=[*hargs, base + "/file1g"]: curl_speed(argv, "speed_download"),
                )
            except subprocess.CalledProcessError as exc:
                ERRORS.append(f"{name}: 1 GB download: {exc.stderr.strip()}")
                log(ERRORS[-1])
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    rows = [
        ("p50 latency, 1 KiB, 1 conn (µs)", "p50_us_c1", "{:.0f}"),
        ("p99 latency, 1 KiB, 1 conn (µs)", "p99_us_c1", "{:.0f}"),
        ("req/s, 1 KiB, 32 conns", "rps_c32", "{:.0f}"),
        ("100 MB download (MB/s)", "download_100mb_mbps", "{:.0f}"),
        ("100 MB upload (MB/s)", "upload_100mb_mbps", "{:.0f}"),
        ("RSS growth over 1 GB download (MB)", "rss_growth_mb_1gb", "{:.1f}"),
        ("WebSocket echo, 1 KiB (msg/s)", "ws_echo_per_s", "{:.0f}"),
    ]
    names = [n for n in PROXIES if n in results]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  " + "  ".join(f"{n:>9}" for n in names)]
    for label, key, fmt in rows:
        cells = [fmt.format(results[n][key]) if key in results[n] else "-" for n in names]
        lines.append(f"{label:{width}}  " + "  ".join(f"{c:>9}" for c in cells))
    return "\n".join(lines)


def summary(results: dict[str, dict[str, float]], seconds: float, load: str) -> dict[str, Any]:
    direct, nginx, labdock = results["direct"], results["nginx"], results["labdock"]
    return {
        "bench": "proxy",
        "rps_c32_ratio_vs_nginx": round(labdock["rps_c32"] / nginx["rps_c32"], 3),
        "added_p50_us_c1": round(labdock["p50_us_c1"] - direct["p50_us_c1"], 1),
        "download_100mb_ratio_vs_nginx": round(
            labdock["download_100mb_mbps"] / nginx["download_100mb_mbps"], 3
        ),
        "upload_100mb_ratio_vs_nginx": round(
            labdock["upload_100mb_mbps"] / nginx["upload_100mb_mbps"], 3
        ),
        "rss_growth_mb_1gb": round(labdock["rss_growth_mb_1gb"], 1),
        "ws_echo_ratio_vs_nginx": round(
            labdock.get("ws_echo_per_s", 0.0) / nginx.get("ws_echo_per_s", float("nan")), 3
        ),
        "goals": {
            "rps_c32_ratio_vs_nginx": ">= 0.16",
            "added_p50_us_c1": "<= 150",
            "download_100mb_ratio_vs_nginx": ">= 0.75",
            "rss_growth_mb_1gb": "<= 20",
        },
        "raw": {name: {k: round(v, 1) for k, v in fig.items()} for name, fig in results.items()},
        "errors": ERRORS,
        "wrk_seconds": seconds,
        "wrk_rounds": ROUNDS[0],
        "load_before": load,
        "cpus": os.cpu_count(),
    }


def _option(argv: list[str], name: str, default: str) -> str:
    if name in argv:
        return argv[argv.index(name) + 1]
    return default


USAGE = """usage: proxy.py [--quick] [--peers direct,labdock,nginx,chp]
                [--rounds N] [--seconds S] [--latency-only]

  --quick          one round of wrk cells and one curl run (instead of 5 and 3)
  --rounds N       rounds of wrk cells, the ways through taking turns (default 5)
  --seconds S      seconds per wrk cell (default 2)
  --peers          only these ways through (the JSON summary needs all four but chp)
  --latency-only   only p50 at 1 connection
"""


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(USAGE)
        return 0
    quick = "--quick" in argv
    seconds, rounds, repeats = (2.0, 1, 1) if quick else (2.0, 5, 3)
    seconds = float(_option(argv, "--seconds", str(seconds)))
    rounds = int(_option(argv, "--rounds", str(rounds)))
    ROUNDS[0] = rounds
    peers = [p for p in _option(argv, "--peers", ",".join(PROXIES)).split(",") if p]
    unknown = set(peers) - set(PROXIES)
    if unknown:
        print(f"proxy: unknown peers {sorted(unknown)}; known: {', '.join(PROXIES)}")
        return 2
    ensure_tools()
    load = Path("/proc/loadavg").read_text().split(" ")[0]
    work = Path(tempfile.mkdtemp(prefix="labdock-bench-proxy-"))
    rig = Rig(work)
    results: dict[str, dict[str, float]] = {}
    try:
        rig.start(peers)
        if "--latency-only" in argv:
            latency_rounds(rig, peers, seconds, rounds)
            return 0
        results = measure(rig, peers, seconds, rounds, repeats)
    except (SetupError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or ""
        print(f"proxy: {exc}\n{detail}", file=sys.stderr)
        print(json.dumps({"bench": "proxy", "error": str(exc), "raw": results}))
        return 1
    finally:
        rig.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    if not {"direct", "nginx", "labdock"} <= set(results):
        print(json.dumps({"bench": "proxy", "raw": results, "errors": ERRORS}))
        return 0
    print(f"(wrk 1 thread, medians of {rounds} cells of {seconds:g} s, the ways through "
          f"taking turns; best of {repeats} curl runs; load average before: {load}; "
          f"{os.cpu_count()} CPUs)")
    out = summary(results, seconds, load)
    goals_met = (
        out["rps_c32_ratio_vs_nginx"] >= 0.16
        and out["added_p50_us_c1"] <= 150
        and out["download_100mb_ratio_vs_nginx"] >= 0.75
        and out["rss_growth_mb_1gb"] <= 20
    )
    out["goals_met"] = goals_met
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

