"""Environments a user may launch, and how a launch request becomes resources.

    env = catalog_entry  # an Environment, loaded by the hub from the database
    resources = choose_resources(env, {"cpus": 2, "memory": "4G"})

Launching never falls back to "any image": an environment that is unknown,
disabled, retired or not offered to the user is refused by name (the class of
CVE-2023-48311 in DockerSpawner).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from hub.domain.errors import InvalidInput
from hub.domain.resources import Resources, format_memory, parse_memory

_SERVER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
LAUNCH_KEYS = frozenset({"environment", "cpus", "memory", "gpus"})


@dataclass(frozen=True)
class Environment:
    """One launchable environment, pinned to an image by its content digest."""

    id: int
    name: str
    description: str
    version: str
    image: str
    port: int
    command: tuple[str, ...]
    keep_prefix: bool
    readiness_path: str
    default: Resources
    maximum: Resources
    gpu: bool = False
    gpu_shareable: bool = False
    pids_limit: int = 1024
    shm_size: int = 1024**3
    home: str = "/home/analyst"
    team_id: int | None = None
    enabled: bool = True
    retired: bool = False

    @property
    def launchable(self) -> bool:
        return self.enabled and not self.retired


def check_server_name(name: str) -> str:
    """``""`` is the default server; others are short lowercase words."""
    if name == "":
        return name
    if not isinstance(name, str) or not _SERVER_NAME.match(name):
        raise InvalidInput(
            "server name: 1 to 32 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def _number(body: Mapping[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(f"{key}: expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidInput(f"{key}: expected a number, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise InvalidInput(f"{key}: expected a finite number")
    return number


def choose_resources(env: Environment, body: Mapping[str, Any]) -> Resources:
    """Fill omitted fields from the environment's defaults and check its maximum."""
    unknown = set(body) - LAUNCH_KEYS
    if unknown:
        raise InvalidInput(
            f"unknown launch field(s): {', '.join(sorted(unknown))}; "
            f"expected {', '.join(sorted(LAUNCH_KEYS))}"
        )
    cpus = _number(body, "cpus", env.default.cpus)
    raw_memory = body.get("memory")
    if raw_memory is None:
        memory = env.default.memory
    elif isinstance(raw_memory, int | str) and not isinstance(raw_memory, bool):
        memory = parse_memory(raw_memory)
    else:
        raise InvalidInput(f"memory: expected a size such as 4G, got {raw_memory!r}")
    gpus_number = _number(body, "gpus", env.default.gpus)
    if gpus_number != int(gpus_number) or gpus_number < 0:
        raise InvalidInput(f"gpus: expected a whole number, got {body.get('gpus')!r}")
    gpus = int(gpus_number)
    if cpus <= 0 or cpus > env.maximum.cpus:
        raise InvalidInput(
            f"cpus: {env.name} takes more than 0 and at most {env.maximum.cpus:g} CPUs, "
            f"got {cpus:g}"
        )
    if memory < 64 * 1024**2 or memory > env.maximum.memory:
        raise InvalidInput(
            f"memory: {env.name} takes 64 MiB to {format_memory(env.maximum.memory)}, "
            f"got {format_memory(memory)}"
        )
    if gpus and not env.gpu:
        raise InvalidInput(f"gpus: {env.name} cannot use GPUs; choose a GPU environment")
    if gpus > env.maximum.gpus:
        raise InvalidInput(f"gpus: {env.name} takes at most {env.maximum.gpus} GPUs, got {gpus}")
    return Resources(cpus=cpus, memory=memory, gpus=gpus)


class Catalog(Protocol):
    """Where environments are stored (the database, seeded from ``images/``)."""

    async def get(self, name: str) -> Environment | None: ...

    async def by_id(self, environment_id: int) -> Environment | None: ...

    async def visible_to(self, team_ids: frozenset[int]) -> list[Environment]: ...
