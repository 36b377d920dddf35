"""Where a labdock launch spends its time: the hub in-process, its steps timed.

    $ .venv/bin/python bench/_spawn_profile.py --rounds 10 --burst 20

Not a benchmark (``bench/run.py`` skips files starting with ``_``): it runs the hub
in this process, wraps the steps of a launch with timers, and launches the same
bench image as ``bench/spawn.py`` through the REST API. A side poller GETs the
container's ``api/status`` every 5 ms from the moment it is started, so the lag
between "the app answers" and "the hub noticed" is measured, not guessed.
Everything it makes is removed at the end, as in ``bench/spawn.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import inspect
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
from tornado.httpclient import AsyncHTTPClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _spawn_setup as setup
from spawn import USER, call, until_ok, wait_launched

# key -> phase -> list of (start, end), perf_counter seconds
Timeline = dict[str, dict[str, list[tuple[float, float]]]]
TIMES: Timeline = defaultdict(lambda: defaultdict(list))
CURRENT: dict[str, str] = {"key": "?"}
ORIGINAL_PROBE: list[Any] = []
# On for sequential launches only: 20 pollers every 5 ms would load a burst.
SIDE_POLLER = [True]


def key_now() -> str:
    """The launch a step belongs to: its launch task, else the request being timed."""
    task = asyncio.current_task()
    name = task.get_name() if task else ""
    return name if name.startswith("launch-") else CURRENT["key"]


def timed(obj: Any, attr: str, phase: str | None = None) -> None:
    """Replace ``obj.attr`` (an async method) by a wrapper that records its duration."""
    original = getattr(obj, attr)
    label = phase or attr

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = key_now()
        t0 = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            TIMES[key][label].append((t0, time.perf_counter()))

    setattr(obj, attr, wrapper)


def timed_sync(obj: Any, attr: str, phase: str | None = None) -> None:
    original = getattr(obj, attr)
    label = phase or attr

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = key_now()
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMES[key][label].append((t0, time.perf_counter()))

    setattr(obj, attr, wrapper)


async def side_poller(host: str, port: int, path: str, secret: str, key: str) -> None:
    """GET the app every 5 ms; note when it first answers."""
    probe = ORIGINAL_PROBE[0]
    t0 = time.perf_counter()
    while True:
        status = await probe(host, port, path, secret=secret, within=1.0)
        if status is not None and status < 500:
            TIMES[key]["app answers (5 ms poller)"].append((t0, time.perf_counter()))
            return
        await asyncio.sleep(0.005)


def instrument(built: Any) -> None:
    """Wrap the steps of a launch on the live objects of one hub."""
    import hub.backends.docker as docker_backend
    import hub.backends.readiness as readiness
    from hub.web.base import BaseHandler

    workspaces = built.workspaces
    backend = workspaces._backend
    timed(BaseHandler, "prepare", "http: auth (prepare)")
    timed(workspaces, "launch", "api: launch() admission")
    timed(workspaces._repo, "claim", "db: claim")
    timed(workspaces._repo, "mark_running", "db: mark_running")
    timed(workspaces, "wait_ready", "api: wait_ready()")
    timed_sync(workspaces._routes, "add", "routes.add")
    for name in (
        "_image_user",
        "_create_or_adopt",
        "ensure_network",
        "_create",
        "_start_container",
        "_wait_ready",
        "start",
    ):
        timed(backend, name, f"backend.{name}")
    timed(backend._volumes, "ensure_home", "backend.volumes.ensure_home")
    timed(backend._exits, "subscribe", "backend.exits.subscribe")
    original_probe = readiness.probe
    ORIGINAL_PROBE.append(original_probe)

    async def probe(*args: Any, **kwargs: Any) -> int | None:
        key = key_now()
        t0 = time.perf_counter()
        status = await original_probe(*args, **kwargs)
        TIMES[key]["readiness probe"].append((t0, time.perf_counter()))
        return status

    readiness.probe = probe  # wait_until_ready looks it up in its module
    original_wait = backend._wait_ready

    async def wait_ready(container: Any, spec: Any, deadline: float) -> Any:
        host = backend._address(container)
        path = readiness.readiness_path(spec.prefix, spec.readiness_path)
        poller = asyncio.ensure_future(
            side_poller(host, spec.port, path, spec.secret, key_now())
            if SIDE_POLLER[0]
            else asyncio.sleep(0)
        )
        try:
            return await original_wait(container, spec, deadline)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(poller, 5)

    backend._wait_ready = wait_ready
    original_call = backend._call
    loop_times = TIMES

    async def call_(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        key = key_now()
        submitted = time.perf_counter()
        started: list[float] = []

        def run() -> Any:
            started.append(time.perf_counter())
            return fn(*args, **kwargs)

        try:
            return await original_call(run)
        finally:
            if started:
                name = getattr(fn, "__name__", "call")
                loop_times[key]["executor queue wait"].append((submitted, started[0]))
                loop_times[key][f"engine: {name}"].append((started[0], time.perf_counter()))

    backend._call = call_
    del docker_backend


def labdock_proxy_wired() -> bool:
    """Whether hub/app.py routes ``/user/...`` to the proxy yet."""
    import hub.app

    return "proxy" in inspect.getsource(hub.app)


def wire_proxy(built: Any) -> None:
    """Until hub/app.py does it: route ``/user/...`` to the proxy in this hub."""
    from hub.domain.activity import ActivityTracker
    from hub.web.proxy import proxy_routes

    built.app.add_handlers(r".*$", proxy_routes(built.deps, built.routes, ActivityTracker()))
    print("profile: the proxy is not wired in hub/app.py; wired here", file=sys.stderr)


def summarize(keys: list[str], title: str) -> list[str]:
    """Median (and max) of each phase's total per launch, over ``keys``."""
    phases: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, list[int]] = defaultdict(list)
    for key in keys:
        for phase, spans in TIMES[key].items():
            phases[phase].append(sum(b - a for a, b in spans))
            counts[phase].append(len(spans))
    lines = [title, f"  {'step':42}{'median':>9}{'max':>9}{'calls':>7}"]
    for phase in sorted(phases, key=lambda p: -statistics.median(phases[p])):
        values = phases[phase]
        lines.append(
            f"  {phase:42}{statistics.median(values) * 1000:>7.1f}ms"
            f"{max(values) * 1000:>7.1f}ms{statistics.median(counts[phase]):>7.0f}"
        )
    return lines


async def profile(run: setup.Run, args: argparse.Namespace) -> None:
    from hub.app import build_hub
    from hub.config import load_settings

    AsyncHTTPClient.configure(None, max_clients=256)
    if args.image:
        image_id = str(run.client.images.get(args.image).id)
    else:
        _tag, image_id = await asyncio.to_thread(
            setup.ensure_bench_image, run.client, args.environment
        )
    data = run.workdir / "labdock"
    data.mkdir()
    db_url = f"sqlite:///{(data / 'labdock.sqlite').as_posix()}"
    token = await setup._prepare_labdock_db(db_url, image_id, "bench-spawn", args.environment)
    port = setup.free_port()
    hub_id = f"prof-{run.run_id[:6]}"
    env = {
        "LABDOCK_HUB_PORT": str(port),
        "LABDOCK_HUB_DATA_DIR": str(data),
        "LABDOCK_HUB_ID": hub_id,
        "LABDOCK_DB_URL": db_url,
        "LABDOCK_QUOTA_SERVERS": "100",
        "LABDOCK_QUOTA_CPUS": "1000",
        "LABDOCK_QUOTA_MEMORY": "1000G",
        "LABDOCK_CAPACITY_OVERCOMMIT": "100",
        "LABDOCK_CAPACITY_GPUS": "",
        "LABDOCK_HUB_MAX_CONCURRENT_LAUNCHES": "32",
        "LABDOCK_BACKEND_LABELS": ",".join(f"{k}={v}" for k, v in run.labels.items()),
        "LABDOCK_BACKEND_STOP_GRACE": "2",
    }
    settings = load_settings(env=env)
    url = f"http://127.0.0.1:{port}"
    api = f"{url}/hub/api/users/{USER}/servers"
    body = {"environment": "bench-spawn"}
    try:
        async with build_hub(settings) as built:
            instrument(built)
            if args.max_delay is not None:  # try another readiness backoff cap
                import hub.backends.readiness as readiness

                defaults = dict(readiness.wait_until_ready.__kwdefaults__ or {})
                defaults["max_delay"] = args.max_delay
                readiness.wait_until_ready.__kwdefaults__ = defaults
            if args.proxy and not labdock_proxy_wired():
                wire_proxy(built)
            server = built.app.listen(port, address="127.0.0.1")
            try:
                CURRENT["key"] = "warmup"
                await call("POST", f"{api}/warmup", token, body)
                await call("DELETE", f"{api}/warmup", token, {"remove": True})
                seq_keys: list[str] = []
                for i in range(args.rounds):
                    key = f"seq-{i}"
                    CURRENT["key"] = key
                    before = set(TIMES)
                    t0 = time.perf_counter()
                    answer = await call("POST", f"{api}/seq", token, body)
                    t1 = time.perf_counter()
                    if answer.code != 201:
                        raise RuntimeError(f"launch answered {answer.code}: {answer.body!r}")
                    TIMES[key]["client: POST until 201"].append((t0, t1))
                    if args.proxy:
                        status = f"{url}/user/{USER}/seq/api/status"
                        await until_ok(status, token, poll=0.05)
                        TIMES[key]["client: proxied GET"].append((t1, time.perf_counter()))
                    # the launch task's own key: merge it into this round's
                    for new in set(TIMES) - before - {key}:
                        for phase, spans in TIMES.pop(new).items():
                            TIMES[key][phase].extend(spans)
                    await call("DELETE", f"{api}/seq", token, {"remove": True})
                    seq_keys.append(key)
                    print(f"profile: seq {i + 1}: {t1 - t0:.3f} s", file=sys.stderr)
                print("\n".join(summarize(seq_keys, f"sequential launches ({args.rounds})")))
                if args.burst:
                    SIDE_POLLER[0] = False
                    names = [f"b{i}" for i in range(args.burst)]
                    before = set(TIMES)
                    CURRENT["key"] = "burst-requests"
                    t0 = time.perf_counter()

                    async def one(name: str) -> float:
                        answer = await call("POST", f"{api}/{name}", token, body)
                        if answer.code == 202:
                            await wait_launched(f"{api}/{name}", name, token, poll=0.05)
                        elif answer.code != 201:
                            raise RuntimeError(f"launch answered {answer.code}: {answer.body!r}")
                        return time.perf_counter() - t0

                    ends = await asyncio.gather(*(one(n) for n in names))
                    print(
                        f"burst of {args.burst}: last 201 after {max(ends):.2f} s, "
                        f"median {statistics.median(ends):.2f} s"
                    )
                    keys = [k for k in set(TIMES) - before if k.startswith("launch-")]
                    print("\n".join(summarize(keys, f"burst: per launch ({len(keys)})")))
                    print(
                        "\n".join(
                            summarize(
                                ["burst-requests"], "burst: request-side steps, summed over all"
                            )
                        )
                    )
                    await asyncio.gather(
                        *(call("DELETE", f"{api}/{n}", token, {"remove": True}) for n in names)
                    )
            finally:
                server.stop()
    finally:
        setup.remove_labelled(run.client, f"labdock.hub={hub_id}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--environment", default="python")
    parser.add_argument("--image", help="start this image instead of the bench image")
    parser.add_argument(
        "--max-delay", type=float, help="readiness backoff cap to try (labdock's: 0.05 s)"
    )
    parser.add_argument(
        "--no-side-poller", action="store_true", help="do not poll the app every 5 ms"
    )
    parser.add_argument("--proxy", action="store_true", help="also time the proxied GET")
    parser.add_argument("--dump", type=Path, help="write the raw timeline as JSON here")
    args = parser.parse_args(argv)
    SIDE_POLLER[0] = not args.no_side_poller
    client = docker.DockerClient.from_env()
    setup.remove_stale(client)
    run = setup.Run(
        client=client,
        run_id=secrets.token_hex(6),
        workdir=Path(tempfile.mkdtemp(prefix="labdock-bench-profile-")),
    )
    os.environ.pop("LABDOCK_DB_URL", None)
    try:
        asyncio.run(profile(run, args))
    finally:
        run.cleanup()
    if args.dump:
        args.dump.write_text(json.dumps(TIMES, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
