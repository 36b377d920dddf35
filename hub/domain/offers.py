"""What a launch form may offer right now: the most admission would grant, per environment.

    user = Scope("your quota", Limits(cpus=4, memory=8 * GiB, servers=3), Usage())
    host = Scope("this host's capacity", host_limits, host_usage)
    offer = offer_for(env, user=user, teams=[], host=host, free_gpus=0)
    offer.cpus, offer.memory          # 4.0, 8 GiB: never more than the env's maximum either
    offer.choices["memory"]           # [128 MiB, 256 MiB, ..., 8 GiB]

The numbers come from the same ``headroom`` and ``admit`` rules as admission,
so a form built from them never offers what a launch would refuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hub.domain.catalog import Environment
from hub.domain.errors import QuotaExceeded
from hub.domain.quotas import Scope, admit, headroom
from hub.domain.resources import MIN_CPUS as MIN_CPUS
from hub.domain.resources import MIN_MEMORY as MIN_MEMORY
from hub.domain.resources import GiB, Resources, format_cpus, format_memory

CPU_STEPS = (0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
MEMORY_STEPS = tuple(
    int(x * GiB)
    for x in (0.125, 0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512)
)


@dataclass(frozen=True)
class Offer:
    """The most one new server of ``environment`` may get now, and the choices up to it."""

    environment: str
    cpus: float
    memory: int
    gpus: int
    launchable: bool
    reason: str | None = None
    # Which scope bounds each resource, when it is tighter than the environment's maximum.
    limited_by: dict[str, str] = field(default_factory=dict)
    choices: dict[str, Sequence[float]] = field(default_factory=dict)
    default: dict[str, float] = field(default_factory=dict)


def _steps(steps: Sequence[float], low: float, high: float, *extra: float) -> list[float]:
    values = {s for s in steps if low <= s <= high}
    values.update(e for e in extra if low <= e <= high)
    return sorted(values)


def _tightest(scopes: Sequence[Scope], name: str) -> tuple[float | None, str | None]:
    best: tuple[float | None, str | None] = (None, None)
    for scope in scopes:
        limit = getattr(scope.limits, name)
        if limit is None:
            continue
        gap = max(0.0, limit - getattr(scope.usage, name))
        if best[0] is None or gap < best[0]:
            best = (gap, scope.label)
    return best


def offer_for(
    env: Environment, *, user: Scope, teams: Sequence[Scope], host: Scope, free_gpus: int
) -> Offer:
    """The offer for ``env`` given every scope admission checks."""
    scopes = [user, *teams, host]
    room = headroom(scopes)
    limited_by: dict[str, str] = {}

    cpus = env.maximum.cpus
    if room.cpus is not None and room.cpus < cpus:
        cpus = room.cpus
        limited_by["cpus"] = _tightest(scopes, "cpus")[1] or ""
    memory = env.maximum.memory
    if room.memory is not None and room.memory < memory:
        memory = room.memory
        limited_by["memory"] = _tightest(scopes, "memory")[1] or ""
    gpus = env.maximum.gpus if env.gpu else 0
    if room.gpus is not None and room.gpus < gpus:
        gpus = room.gpus
        limited_by["gpus"] = _tightest(scopes, "gpus")[1] or ""
    if free_gpus < gpus:
        gpus = free_gpus
        limited_by["gpus"] = "the GPUs free on this hub"

    reason: str | None = None
    smallest = Resources(cpus=MIN_CPUS, memory=MIN_MEMORY)
    if env.maximum.cpus < MIN_CPUS:
        reason = f"{env.name} allows at most {format_cpus(env.maximum.cpus)}; ask an admin"
    else:
        try:
            admit(smallest, user=user, teams=teams, host=host)
        except QuotaExceeded as exc:
            reason = exc.message
    if reason is None and memory < MIN_MEMORY:
        reason = (
            f"needs at least {format_memory(MIN_MEMORY)} of memory; "
            f"{limited_by.get('memory', 'quota')} is full"
        )
    if reason is None and cpus < MIN_CPUS:
        full = limited_by.get("cpus", "quota")
        reason = f"needs at least {format_cpus(MIN_CPUS)}; {full} is full"
    launchable = reason is None
    if not launchable:
        return Offer(env.name, 0.0, 0, 0, False, reason or "no CPU left", limited_by)

    cpu_choices = _steps(CPU_STEPS, MIN_CPUS, cpus, env.default.cpus, cpus)
    memory_choices = [
        int(m) for m in _steps(MEMORY_STEPS, MIN_MEMORY, memory, env.default.memory, memory)
    ]
    gpu_choices = list(range(0, gpus + 1))
    default = {
        "cpus": max(MIN_CPUS, min(env.default.cpus, cpus)),
        "memory": min(env.default.memory, memory),
        "gpus": min(env.default.gpus, gpus),
    }
    return Offer(
        environment=env.name,
        cpus=cpus,
        memory=int(memory),
        gpus=gpus,
        launchable=True,
        limited_by=limited_by,
        choices={"cpus": cpu_choices, "memory": memory_choices, "gpus": gpu_choices},
        default=default,
    )


def scope_use(scope: Scope) -> dict[str, dict[str, float | int | None]]:
    """``{"cpus": {"used": 1.5, "limit": 4}, ...}`` for display."""
    limits, usage = scope.limits, scope.usage
    return {
        name: {"used": getattr(usage, name), "limit": getattr(limits, name)}
        for name in ("cpus", "memory", "gpus", "servers")
    }


def free_gpu_count(inventory: Sequence[str], in_use: dict[str, int], *, shareable: bool) -> int:
    """How many GPUs ``allocate`` could hand one new server now."""
    if shareable:
        return len(inventory)
    return sum(1 for gpu in inventory if in_use.get(gpu, 0) == 0)
