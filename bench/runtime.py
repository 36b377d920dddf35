"""How much runtime volumes save: one environment image started from itself vs. from copies.

    $ .venv/bin/python bench/runtime.py                  # what `make bench` runs
    $ .venv/bin/python bench/runtime.py --rounds 20 --environment jupyter

The hub's own code makes the copies (``RuntimeVolumes.prepare``, as at a first launch),
then the bench alternates two ways of starting the same server: ``create_args`` without
and with the runtime mounts, ``create`` + ``start`` with the environment's default limits,
then ``GET <prefix>api/status`` with the server's token every 5 ms until 200. It reports
the median time from ``start`` returning to that answer (the app's own start), and the
engine's storage driver: with ``overlay2`` the two should be the same. Everything it
makes carries ``labdock.test=1`` and is removed at the end, on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hub.backends.docker_config import create_args
from hub.backends.docker_names import home_volume_name
from hub.backends.docker_runtime import RuntimeImage, RuntimeVolumes, runtime_paths
from hub.backends.readiness import readiness_path
from hub.domain.servers import ServerSpec
from hub.images.build import latest_tag
from hub.images.manifest import images_dir, load_all

LABELS = {"labdock.test": "1"}


def say(message: str) -> None:
    print(f"runtime: {message}", file=sys.stderr, flush=True)


def app_start(client: docker.DockerClient, args: dict[str, Any], url: str, token: str) -> float:
    """Seconds from ``start`` returning until the app answers; the container is removed."""
    container = client.containers.create(**args)
    try:
        container.start()
        started = time.perf_counter()
        container.reload()
        networks = container.attrs["NetworkSettings"]["Networks"]
        host = next(n["IPAddress"] for n in networks.values() if n.get("IPAddress"))
        request = urllib.request.Request(
            url.format(host=host), headers={"Authorization": f"token {token}"}
        )
        deadline = started + 120
        while True:
            try:
                with urllib.request.urlopen(request, timeout=2):
                    return time.perf_counter() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                if time.perf_counter() > deadline:
                    logs = container.logs()[-500:]
                    raise RuntimeError(f"the server did not answer: {logs!r}") from exc
                time.sleep(0.005)
    finally:
        container.remove(force=True)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    client = docker.from_env()
    env = load_all(images_dir())[args.environment]
    tag = args.image or latest_tag(client, args.environment)
    if tag is None:
        raise SystemExit(f"runtime: build the image first: labdock images build {args.environment}")
    image = client.images.get(tag)
    paths = runtime_paths(image.attrs["Config"].get("Labels"))
    if not paths:
        raise SystemExit(f"runtime: {tag} lists no labdock.runtime-paths")
    hub_id = "bench-rt-" + secrets.token_hex(3)
    pool = ThreadPoolExecutor(max_workers=2)

    async def call(fn: Any, *a: Any, **kw: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, lambda: fn(*a, **kw))

    runtime = RuntimeVolumes(client, hub_id=hub_id, call=call, extra_labels=LABELS, mode="on")
    network = client.networks.create(f"labdock-{hub_id}", labels=LABELS)
    home = client.volumes.create(home_volume_name(hub_id, 1), labels=LABELS)
    try:
        say(f"copying {', '.join(paths)} of {tag}")
        t0 = time.perf_counter()
        await runtime.prepare([RuntimeImage(str(image.id), paths)])
        copy_s = time.perf_counter() - t0
        mounts = await runtime.mounts(RuntimeImage(str(image.id), paths))
        if not mounts:
            raise RuntimeError("the copies were not made")
        say(f"copied in {copy_s:.1f} s")
        token = secrets.token_hex(16)
        prefix = "/user/bench/rt/"
        spec = ServerSpec(
            hub_id=hub_id,
            user_id=1,
            server_id=1,
            image=str(image.id),
            command=env.command,
            port=env.port,
            prefix=prefix if env.prefix == "keep" else "/",
            secret=token,
            resources=env.default,
            pids_limit=env.pids_limit,
            shm_size=env.shm_size,
            env={},
            labels=LABELS,
            home=env.home,
        )
        base = create_args(
            spec, network=network.name, image_user="", init=True, extra_labels=LABELS
        )
        ways = {"image": base, "runtime": {**base, "mounts": base["mounts"] + mounts}}
        url = "http://{host}:" + str(env.port) + readiness_path(spec.prefix, env.readiness_path)
        times: dict[str, list[float]] = {k: [] for k in ways}
        for way in ways.values():  # one unmeasured start each
            await asyncio.to_thread(app_start, client, way, url, token)
        for i in range(args.rounds):
            for name, way in ways.items():
                seconds = await asyncio.to_thread(app_start, client, way, url, token)
                times[name].append(seconds)
                say(f"{name}: start {i + 1}/{args.rounds}: {seconds:.3f} s")
    finally:
        await runtime.close()
        for container in client.containers.list(
            all=True, filters={"label": f"labdock.hub={hub_id}"}
        ):
            container.remove(force=True)
        for volume in client.volumes.list(filters={"label": f"labdock.hub={hub_id}"}):
            volume.remove(force=True)
        home.remove(force=True)
        network.remove()
        pool.shutdown()
    median = {k: round(statistics.median(v), 3) for k, v in times.items()}
    return {
        "bench": "runtime_volumes",
        "environment": args.environment,
        "storage_driver": str(client.info().get("Driver") or ""),
        "app_start_median_s": median,
        "runtime_ratio_vs_image": round(median["runtime"] / median["image"], 3),
        "copy_s": round(copy_s, 1),
        "rounds": args.rounds,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="starts of each way (default 10)")
    parser.add_argument("--environment", default="python", help="the environment (python)")
    parser.add_argument("--image", help="this image instead of the environment's newest build")
    args = parser.parse_args(argv)
    summary = asyncio.run(measure(args))
    median = summary["app_start_median_s"]
    print(
        f"{args.environment}: app start, median of {args.rounds} "
        f"(storage driver {summary['storage_driver']})"
    )
    print(f"  from the image          {median['image']:.3f} s")
    print(
        f"  from runtime volumes    {median['runtime']:.3f} s"
        f"   ({summary['runtime_ratio_vs_image']:.2f} of it; copies made in {summary['copy_s']} s)"
    )
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
