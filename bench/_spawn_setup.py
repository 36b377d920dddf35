"""Setup for ``bench/spawn.py``: cached venvs and image, the hubs it runs, and cleanup.

Everything here is idempotent and cached under ``.cache/bench/`` (git-ignored):

- ``jupyterhub-venv``: JupyterHub 6.1.1 and DockerSpawner 14.0.0;
- ``chp-venv``: configurable-http-proxy 0.4.0 (the Python implementation);
- ``labdock/bench-spawn:<hash>``: the labdock ``python`` image plus ``jupyterhub``
  (for ``jupyterhub-singleuser``), the one image that all three contenders start.

Everything made on the engine carries ``labdock.test=1``, ``labdock.bench=spawn``
and ``labdock.bench.run=<run id>``, and ``Run.cleanup`` removes it by that last label.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bench"
VENV_BIN = Path(sys.executable).parent

JUPYTERHUB_PACKAGES = ("jupyterhub==6.1.1", "dockerspawner==14.0.0")
CHP_PACKAGES = ("configurable-http-proxy==0.4.0",)
SINGLEUSER_PACKAGES = ("jupyterhub==6.1.1",)

BENCH_REPO = "labdock/bench-spawn"
BENCH_LABEL = "labdock.bench"
RUN_LABEL = "labdock.bench.run"

CA_BUNDLES = (
    Path("/etc/ssl/certs/ca-certificates.crt"),
    Path("/etc/pki/tls/certs/ca-bundle.crt"),
    Path("/etc/ssl/cert.pem"),
)

# The bench image: jupyterhub installed with --prefix in a first stage, then merged into
# /opt/labdock, so that the CA bundle pip needs never reaches a layer of the image. The
# environment images leave rfc3987-syntax out (its import costs ~1 s of every start); pip
# would bring it back as a dependency of jupyter_events, so it is left out here too.
BENCH_DOCKERFILE = """\
ARG BASE
FROM ${BASE} AS install
USER 0
COPY ca.cr[t] /tmp/bench/
RUN set -eu; \\
    ca=/tmp/bench/ca.crt; tls=""; \\
    if [ -f "$ca" ]; then tls="PIP_CERT=$ca SSL_CERT_FILE=$ca REQUESTS_CA_BUNDLE=$ca"; fi; \\
    env -i PATH=/opt/labdock/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root $tls \\
        PIP_DISABLE_PIP_VERSION_CHECK=1 \\
        /opt/labdock/bin/pip install --no-cache-dir --prefix /opt/extra {packages}; \\
    rm -rf /opt/extra/lib/python3*/site-packages/rfc3987_syntax* /tmp/bench

FROM ${BASE}
COPY --from=install /opt/extra/ /opt/labdock/
"""


def say(message: str) -> None:
    """Progress goes to stderr: stdout holds only the table and the JSON line."""
    print(f"spawn: {message}", file=sys.stderr, flush=True)


class SetupError(RuntimeError):
    """A contender cannot run; the benchmark exits non-zero with this message."""


# -- venvs ---------------------------------------------------------------------------------------


def ensure_venv(name: str, packages: tuple[str, ...]) -> Path:
    """``.cache/bench/<name>`` with ``packages`` installed; skipped when already done."""
    venv = CACHE / name
    marker = venv / ".bench-installed"
    wanted = "\n".join(packages)
    if marker.is_file() and marker.read_text() == wanted:
        return venv
    say(f"installing {' '.join(packages)} into {venv.relative_to(REPO)}")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *packages],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if done.returncode != 0:
        raise SetupError(f"pip install {' '.join(packages)} failed:\n{done.stdout[-2000:]}")
    marker.write_text(wanted)
    return venv


# -- the bench image -----------------------------------------------------------------------------


def environment_image(client: docker.DockerClient, environment: str) -> str:
    """The tag of labdock's current image of ``environment``."""
    from hub.images.build import latest_tag

    tag = latest_tag(client, environment)
    if tag is not None:
        return tag
    # The folder changed since the last build (work in progress): take the newest build.
    built = sorted(
        client.images.list(name=f"labdock/{environment}"),
        key=lambda image: str(image.attrs.get("Created", "")),
    )
    tags = [t for image in reversed(built) for t in image.tags]
    if not tags:
        raise SetupError(f"the labdock {environment} image is not built; run `make images` first")
    say(f"images/{environment}/ changed since {tags[0]} was built; benchmarking that build")
    return tags[0]


def ensure_bench_image(client: docker.DockerClient, environment: str) -> tuple[str, str]:
    """``(tag, image id)`` of the bench image, built FROM the environment's image if missing."""
    base = environment_image(client, environment)
    base_id = str(client.images.get(base).id)
    dockerfile = BENCH_DOCKERFILE.replace("{packages}", " ".join(SINGLEUSER_PACKAGES))
    inputs = hashlib.sha256(f"{base_id}\n{dockerfile}".encode()).hexdigest()[:12]
    tag = f"{BENCH_REPO}:{inputs}"
    try:
        return tag, str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        pass
    say(f"building {tag} FROM {base} (adds {' '.join(SINGLEUSER_PACKAGES)})")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="labdock-bench-") as context:
        Path(context, "Dockerfile").write_text(dockerfile)
        bundle = next((p for p in CA_BUNDLES if p.is_file()), None)
        if bundle is not None:
            shutil.copyfile(bundle, Path(context, "ca.crt"))
        tail: list[str] = []
        for message in client.api.build(
            path=context,
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
            buildargs={"BASE": base},
            labels={BENCH_LABEL: "spawn"},
        ):
            if "error" in message:
                raise SetupError(
                    f"building {tag} failed: {message['error'].strip()}\n" + "\n".join(tail[-20:])
                )
            text = str(message.get("stream") or "").rstrip()
            if text:
                tail.append(text)
    say(f"built {tag} in {time.monotonic() - started:.0f} s")
    return tag, str(client.images.get(tag).id)


# -- small helpers -------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_http(url: str, *, within: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``url`` answers 200, or fail with the log's tail if the process dies."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"{proc.args!r} exited with {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SetupError(f"{url} did not answer within {within:.0f} s:\n{tail(log)}")


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen[bytes] | None, within: float = 20.0) -> None:
    """SIGTERM, then SIGKILL; only the process (group) this module started."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(within)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- the run: labels, networks, volumes, processes, cleanup --------------------------------------


@dataclass
class Run:
    """One benchmark run's resources on the engine and its processes."""

    client: docker.DockerClient
    run_id: str
    workdir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, str]:
        return {"labdock.test": "1", BENCH_LABEL: "spawn", RUN_LABEL: self.run_id}

    def network(self, name: str, *, internal: bool = False) -> tuple[str, str]:
        """A bridge labelled for this run; returns (name, gateway address)."""
        options = {"com.docker.network.bridge.enable_icc": "false"} if internal else {}
        net = self.client.networks.create(
            name, driver="bridge", internal=internal, options=options, labels=self.labels
        )
        net.reload()
        config = (net.attrs.get("IPAM") or {}).get("Config") or [{}]
        gateway = str(config[0].get("Gateway") or "")
        if not gateway:
            raise SetupError(f"network {name} has no gateway address")
        return name, gateway

    def volume(self, name: str) -> str:
        self.client.volumes.create(name, driver="local", labels=self.labels)
        return name

    def spawn(
        self, args: list[str], *, env: dict[str, str], log_name: str
    ) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.workdir / log_name
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[log_name] = proc
        return proc, log

    def stop(self, log_name: str, within: float = 20.0) -> None:
        """Stop the process started with ``log_name``."""
        stop_process(self.processes.pop(log_name, None), within)

    def remove_containers(self, label: str | None = None) -> int:
        """Force-remove this run's containers (optionally only those with ``label``)."""
        filters = [f"{RUN_LABEL}={self.run_id}"] + ([label] if label else [])
        found = self.client.containers.list(all=True, filters={"label": filters})
        for container in found:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)
        return len(found)

    def cleanup(self) -> None:
        """Stop the processes, then remove every container, volume and network of the run."""
        for name in reversed(list(self.processes)):
            self.stop(name)
        remove_labelled(self.client, f"{RUN_LABEL}={self.run_id}")


def remove_labelled(client: docker.DockerClient, label: str) -> None:
    """Containers, then volumes, then networks carrying ``label``."""
    filters: dict[str, Any] = {"label": label}
    for container in client.containers.list(all=True, filters=filters):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True, v=True)
    for volume in client.volumes.list(filters=filters):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            volume.remove(force=True)
    for network in client.networks.list(filters=filters):
        for attempt in range(10):  # endpoints of just-removed containers may linger
            try:
                network.remove()
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError as exc:
                if attempt == 9:
                    say(f"could not remove network {network.name}: {exc}")
                time.sleep(0.5)


def remove_stale(client: docker.DockerClient) -> None:
    """What an earlier, killed run of this benchmark left behind."""
    stale = client.containers.list(all=True, filters={"label": f"{BENCH_LABEL}=spawn"})
    stale_nets = client.networks.list(filters={"label": f"{BENCH_LABEL}=spawn"})
    if stale or stale_nets:
        say(f"removing {len(stale)} containers and {len(stale_nets)} networks of an earlier run")
    remove_labelled(client, f"{BENCH_LABEL}=spawn")


# -- labdock -------------------------------------------------------------------------------------


@dataclass
class LabdockHub:
    url: str
    token: str
    user: str
    environment: str
    hub_id: str
    log: Path
    pid: int


async def _prepare_labdock_db(db_url: str, image_id: str, env_name: str, environment: str) -> str:
    """Migrate, register the bench environment, create the user and a token; returns it."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from hub.cli_db import add_user, create_token
    from hub.config import load_settings
    from hub.db.engine import make_engine
    from hub.db.environments import SqlCatalog
    from hub.db.migrate import upgrade
    from hub.domain.catalog import Environment
    from hub.images.manifest import images_dir, load_all

    await asyncio.to_thread(upgrade, db_url)
    manifest = load_all(images_dir())[environment]
    engine = make_engine(db_url)
    try:
        catalog = SqlCatalog(async_sessionmaker(engine, expire_on_commit=False))
        await catalog.add(
            Environment(
                id=0,
                name=env_name,
                description="spawn benchmark: " + manifest.description,
                version=manifest.version,
                image=image_id,
                port=manifest.port,
                command=manifest.command,
                keep_prefix=manifest.prefix == "keep",
                readiness_path=manifest.readiness_path,
                default=manifest.default,
                maximum=manifest.maximum,
                gpu=manifest.gpu,
                gpu_shareable=manifest.gpu_shareable,
                pids_limit=manifest.pids_limit,
                shm_size=manifest.shm_size,
                home=manifest.home,
            )
        )
    finally:
        await engine.dispose()
    settings = load_settings(env={"LABDOCK_DB_URL": db_url})
    await add_user(settings, "bench", None, is_admin=False, team=None)
    return await create_token(settings, "bench", None, None)


def runtime_expected(client: docker.DockerClient, image_id: str) -> bool:
    """Whether ``labdock serve`` (runtime_volumes = "auto") will use runtime volumes here."""
    from hub.backends.docker_runtime import UNSHARED_DRIVERS, runtime_paths

    labels = client.images.get(image_id).attrs.get("Config", {}).get("Labels")
    driver = str(client.info().get("Driver") or "")
    return driver in UNSHARED_DRIVERS and bool(runtime_paths(labels))


def start_labdock(run: Run, image_id: str, environment: str) -> LabdockHub:
    """``labdock serve`` on a free port with its own SQLite, quotas that allow 20 servers."""
    data = run.workdir / "labdock"
    data.mkdir()
    db_url = f"sqlite:///{(data / 'labdock.sqlite').as_posix()}"
    env_name = "bench-spawn"
    token = asyncio.run(_prepare_labdock_db(db_url, image_id, env_name, environment))
    port = free_port()
    hub_id = f"bench-{run.run_id[:6]}"
    labels = ",".join(f"{k}={v}" for k, v in run.labels.items())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LABDOCK_")},
        "LABDOCK_HUB_IP": "127.0.0.1",
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
        "LABDOCK_BACKEND_LABELS": labels,
        # Stopping is not measured; a short grace only makes the run shorter.
        "LABDOCK_BACKEND_STOP_GRACE": "2",
    }
    proc, log = run.spawn([str(VENV_BIN / "labdock"), "serve"], env=env, log_name="labdock.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/hub/health", within=60, proc=proc, log=log)
    return LabdockHub(
        url=url,
        token=token,
        user="bench",
        environment=env_name,
        hub_id=hub_id,
        log=log,
        pid=proc.pid,
    )


def stop_labdock(run: Run, hub: LabdockHub) -> None:
    run.stop("labdock.log")
    remove_labelled(run.client, f"labdock.hub={hub.hub_id}")


# -- JupyterHub ----------------------------------------------------------------------------------


@dataclass
class JupyterHubProcess:
    url: str
    token: str
    user: str
    log: Path
    pid: int


JUPYTERHUB_CONFIG = """\
# Written by bench/_spawn_setup.py for one run of bench/spawn.py.
c = get_config()  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {public_port}
c.JupyterHub.hub_ip = "{gateway}"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{workdir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{workdir}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{workdir}/jupyterhub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {{"bench"}}
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 0
c.JupyterHub.concurrent_spawn_limit = 100
c.JupyterHub.active_server_limit = 0
c.JupyterHub.cleanup_servers = True
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [
    {{
        "name": "bench",
        "scopes": ["admin:users", "admin:servers", "servers", "access:servers", "read:users"],
        "services": ["bench"],
    }}
]
c.JupyterHub.proxy_class = "configurable-http-proxy"
# Without --proxy-timeout the Python CHP cuts any request after tornado's default 20 s,
# including the progress streams of slow (burst) spawns.
c.ConfigurableHTTPProxy.command = ["{chp}", "--proxy-timeout", "600000"]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.auth_token = "{proxy_token}"
c.ConfigurableHTTPProxy.should_start = True
c.JupyterHub.spawner_class = "docker"
c.DockerSpawner.image = "{image}"
c.DockerSpawner.pull_policy = "never"
c.DockerSpawner.remove = True
c.DockerSpawner.network_name = "{network}"
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.cmd = ["jupyterhub-singleuser"]
c.DockerSpawner.prefix = "ldbench-jh"
c.DockerSpawner.volumes = {{"{volume}": "/home/analyst"}}
c.DockerSpawner.mem_limit = {memory}
c.DockerSpawner.cpu_limit = {cpus}
c.DockerSpawner.extra_create_kwargs = {{"labels": {labels}}}
# What labdock gives each container too, so only the launcher differs.
c.DockerSpawner.extra_host_config = {{
    "init": True,
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges:true"],
    "pids_limit": {pids_limit},
    "shm_size": {shm_size},
    "memswap_limit": {memory},
}}
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
"""


def start_jupyterhub(
    run: Run, *, image: str, memory: int, cpus: float, pids_limit: int, shm_size: int
) -> JupyterHubProcess:
    """JupyterHub + DockerSpawner + the Python CHP, the hub on a bridge's gateway."""
    import secrets

    hub_venv = ensure_venv("jupyterhub-venv", JUPYTERHUB_PACKAGES)
    chp_venv = ensure_venv("chp-venv", CHP_PACKAGES)
    workdir = run.workdir / "jupyterhub"
    workdir.mkdir()
    network, gateway = run.network(f"ldbench-jh-{run.run_id[:6]}")
    volume = run.volume(f"ldbench-jh-{run.run_id[:6]}-home")
    token = secrets.token_hex(32)
    public_port = free_port()
    config = JUPYTERHUB_CONFIG.format(
        public_port=public_port,
        gateway=gateway,
        hub_port=free_port(gateway),
        workdir=workdir,
        token=token,
        chp=chp_venv / "bin" / "configurable-http-proxy",
        proxy_api_port=free_port(),
        proxy_token=secrets.token_hex(32),
        image=image,
        network=network,
        volume=volume,
        memory=memory,
        cpus=cpus,
        labels=repr(run.labels),
        pids_limit=pids_limit,
        shm_size=shm_size,
    )
    (workdir / "jupyterhub_config.py").write_text(config)
    env = {
        **os.environ,
        "PATH": f"{hub_venv / 'bin'}:{chp_venv / 'bin'}:{os.environ.get('PATH', '')}",
    }
    proc, log = run.spawn(
        [str(hub_venv / "bin" / "jupyterhub"), "-f", str(workdir / "jupyterhub_config.py")],
        env=env,
        log_name="jupyterhub.log",
    )
    url = f"http://127.0.0.1:{public_port}"
    wait_http(f"{url}/hub/health", within=90, proc=proc, log=log)
    return JupyterHubProcess(url=url, token=token, user="bench", log=log, pid=proc.pid)


def stop_jupyterhub(run: Run) -> None:
    """SIGTERM: JupyterHub stops its servers and its proxy; then remove what is left."""
    run.stop("jupyterhub.log", within=60)
    run.remove_containers()


# -- where the CPU goes during a burst -----------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _process_cpu() -> dict[int, tuple[str, int, float, bool]]:
    """pid -> (command name, process group, CPU seconds, in a container) for every process."""
    found: dict[int, tuple[str, int, float, bool]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{entry.name}/cgroup") as fh:
                cgroup = fh.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
        found[int(entry.name)] = (comm, int(fields[2]), cpu, "/docker/" in cgroup)
    return found


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all CPUs, /proc/stat)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


def busy_fraction(seconds: float) -> float:
    """How busy the machine's CPUs are over the next ``seconds`` (0 to 1)."""
    before = _machine_busy()
    time.sleep(seconds)
    return (_machine_busy() - before) / seconds / (os.cpu_count() or 1)


class CpuSampler:
    """CPU seconds spent between ``start()`` and ``stop()``, by who spent them.

    Buckets: the contender's own processes (the process groups in ``groups``), the
    containers, dockerd + containerd (+ shims), fuse-overlayfs, this benchmark, and
    ``other``: everything else on the machine, i.e. noise from other work.
    """

    def __init__(self, groups: dict[int, str]) -> None:
        self._groups = groups
        self._before: dict[int, tuple[str, int, float, bool]] = {}
        self._busy = 0.0

    def _bucket(self, comm: str, pgid: int, in_container: bool) -> str:
        if pgid in self._groups:
            return self._groups[pgid]
        if in_container:
            return "containers"
        if comm.startswith(("dockerd", "containerd")):
            return "engine"
        if comm.startswith("fuse-overlayfs"):
            return "fuse-overlayfs"
        if pgid == os.getpgrp():
            return "benchmark client"
        return "other"

    def start(self) -> None:
        self._before = _process_cpu()
        self._busy = _machine_busy()

    def stop(self) -> dict[str, float]:
        after = _process_cpu()
        spent: dict[str, float] = {}
        for pid, (comm, pgid, cpu, in_container) in after.items():
            previous = self._before.get(pid)
            delta = cpu - (previous[2] if previous and previous[0] == comm else 0.0)
            bucket = self._bucket(comm, pgid, in_container)
            spent[bucket] = spent.get(bucket, 0.0) + max(delta, 0.0)
        total = _machine_busy() - self._busy
        known = sum(v for k, v in spent.items() if k != "other")
        # Processes that ended inside the window are only in the machine's total.
        spent["other"] = max(total - known, 0.0)
        spent["machine"] = total
        return {k: round(v, 1) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
