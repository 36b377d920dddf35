"""How a ``ServerSpec`` becomes a Docker container: names, labels, limits, hardening.

    args = create_args(spec, hub_id="h1", network="labdock-h1", image_user="", init=True)
    container = client.containers.create(**args)

Pure functions, no engine calls: every limit and label is decided here, in one
place, and can be read (and tested) without Docker.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from docker.types import DeviceRequest, LogConfig
from docker.types import Mount as DockerMount

from hub.backends.docker_names import container_name, home_volume_name, team_volume_name
from hub.domain.errors import InvalidInput
from hub.domain.resources import ENGINE_MIN_MEMORY, MIN_CPUS, format_memory
from hub.domain.servers import Mount, ServerSpec

HUB_LABEL = "labdock.hub"
USER_LABEL = "labdock.user"
SERVER_LABEL = "labdock.server"
PORT_LABEL = "labdock.port"
SPEC_LABEL = "labdock.spec"
TEAM_LABEL = "labdock.team"
# What a container or volume that is not a server or a home is for (helpers, copies).
ROLE_LABEL = "labdock.role"
DEFAULT_USER = "1000:1000"
ICC_OPTION = "com.docker.network.bridge.enable_icc"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"


def spec_fingerprint(spec: ServerSpec) -> str:
    """A short hash of everything that shapes the container (the timeout excluded)."""
    fields = asdict(spec)
    fields.pop("start_timeout")
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_as(image_user: str) -> str:
    """The user to run as: the image's own ``USER`` unless it is root or unset."""
    user = image_user.strip()
    if not user or user.split(":")[0] in ("0", "root"):
        return DEFAULT_USER
    return user


def environment_name(image: str) -> str:
    """``labdock/python:3f2a`` → ``python``, for "run `labdock images build python`"."""
    name = image.split("@")[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":")[0]


def check_mounts(spec: ServerSpec) -> None:
    """Refuse a mount at a path that is not absolute. Only named volumes are ever mounted
    (no host paths, no sockets): their names are made here, from the teams' ids."""
    for mount in spec.mounts:
        if not mount.target.startswith("/"):
            raise InvalidInput(
                f"team {mount.team_id}'s volume → {mount.target!r}: volumes are mounted "
                "at absolute paths only"
            )


def check_limits(spec: ServerSpec) -> None:
    """Refuse limits the engine would take as "no limit" (or refuse late, as a 502).

    ``NanoCpus`` under 0.01 CPU becomes no CFS quota at all, ``PidsLimit`` 0 or
    less is unlimited, and memory under 6 MiB is refused by the engine. Admission
    refuses these first; this keeps any other path from reaching the engine with them.
    """
    res = spec.resources
    if res.cpus < MIN_CPUS:
        raise InvalidInput(f"cpus: at least {MIN_CPUS:g} CPUs, got {res.cpus:g}")
    if res.memory < ENGINE_MIN_MEMORY:
        raise InvalidInput(
            f"memory: at least {format_memory(ENGINE_MIN_MEMORY)}, got {format_memory(res.memory)}"
        )
    if spec.pids_limit < 1:
        raise InvalidInput(f"pids_limit: at least 1, got {spec.pids_limit}")
    if spec.shm_size < 0:
        raise InvalidInput(f"shm_size: must not be negative, got {spec.shm_size}")


def server_labels(spec: ServerSpec, extra: Mapping[str, str]) -> dict[str, str]:
    """The container's labels; labdock's own keys win over the spec's and the extras."""
    return {
        **spec.labels,
        **extra,
        HUB_LABEL: spec.hub_id,
        USER_LABEL: str(spec.user_id),
        SERVER_LABEL: str(spec.server_id),
        PORT_LABEL: str(spec.port),
        SPEC_LABEL: spec_fingerprint(spec),
    }


def volume_labels(spec: ServerSpec, extra: Mapping[str, str]) -> dict[str, str]:
    """The home volume's labels: it belongs to the user, not to one server."""
    return {**extra, HUB_LABEL: spec.hub_id, USER_LABEL: str(spec.user_id)}


def team_volume_labels(hub_id: str, mount: Mount, extra: Mapping[str, str]) -> dict[str, str]:
    """A team volume's labels: it belongs to the team (its storage quota counts it)."""
    return {**extra, HUB_LABEL: hub_id, TEAM_LABEL: str(mount.team_id)}


def server_environment(spec: ServerSpec) -> dict[str, str]:
    """The spec's environment, ``HOME``, then the ``LABDOCK_*`` variables (which win)."""
    env = {**spec.env}
    env.setdefault("HOME", spec.home)
    env.update(
        LABDOCK_PREFIX=spec.prefix,
        LABDOCK_SERVER_SECRET=spec.secret,
        LABDOCK_PORT=str(spec.port),
        LABDOCK_USER_ID=str(spec.user_id),
        LABDOCK_SERVER_ID=str(spec.server_id),
    )
    return env


def create_args(
    spec: ServerSpec,
    *,
    network: str,
    image_user: str,
    init: bool,
    extra_labels: Mapping[str, str] | None = None,
    log_config: LogConfig | None = None,
    runtime_mounts: Sequence[DockerMount] = (),
) -> dict[str, Any]:
    """Keyword arguments for ``client.containers.create``: limits, hardening, mounts.

    No port is published and no host path is mounted; the container joins only
    ``network``. Memory and memory+swap are the same limit, so the server
    cannot swap. GPUs are requested by device id, and only when the spec names some.
    ``runtime_mounts``: read-only copies of the image's own directories
    (``docker_runtime``), which change nothing the server can see but its speed.
    """
    check_limits(spec)
    home = home_volume_name(spec.hub_id, spec.user_id)
    mounts = [DockerMount(target=spec.home, source=home, type="volume")]
    mounts += [
        DockerMount(
            target=m.target,
            source=team_volume_name(spec.hub_id, m.team_id),
            type="volume",
            read_only=m.read_only,
        )
        for m in spec.mounts
    ]
    mounts += runtime_mounts
    args: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command) or None,
        "name": container_name(spec.hub_id, spec.server_id),
        "labels": server_labels(spec, extra_labels or {}),
        "environment": server_environment(spec),
        "user": run_as(image_user),
        "working_dir": spec.home,
        "network": network,
        "nano_cpus": round(spec.resources.cpus * 1e9),
        "mem_limit": spec.resources.memory,
        "memswap_limit": spec.resources.memory,
        "pids_limit": spec.pids_limit,
        "shm_size": spec.shm_size,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "init": init,
        "log_config": log_config or LogConfig(type="json-file", config={"max-size": "10m"}),
        "mounts": mounts,
    }
    if spec.gpu_device_ids:
        args["device_requests"] = [
            DeviceRequest(
                driver="nvidia", device_ids=list(spec.gpu_device_ids), capabilities=[["gpu"]]
            )
        ]
    return args
