"""Admission: may this launch go ahead, given the user's, the teams' and the host's limits?

    limits = Limits(cpus=4, memory=8 * GiB, gpus=0, servers=3)
    admit(Resources(2, 4 * GiB),
          user=Scope("your quota", limits, Usage(cpus=1, memory=6 * GiB, servers=2)),
          teams=[], host=Scope("this host's capacity", host_limits, host_usage))
    # QuotaExceeded: needs 4 GiB; 2 GiB left in your quota (6 of 8 GiB used by 2 servers)

The rules are pure: the caller loads usage and limits inside one database
transaction, calls ``admit`` and writes the new server in that same
transaction, so that racing launches cannot overrun a quota together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hub.domain.errors import QuotaExceeded
from hub.domain.resources import Resources, check_floor, format_memory


@dataclass(frozen=True)
class Limits:
    """Upper bounds; ``None`` means no limit on that resource."""

    cpus: float | None = None
    memory: int | None = None
    gpus: int | None = None
    servers: int | None = None


@dataclass(frozen=True)
class Usage:
    """What is held now by servers that are starting or running."""

    cpus: float = 0.0
    memory: int = 0
    gpus: int = 0
    servers: int = 0

    def plus(self, resources: Resources) -> Usage:
        return Usage(
            cpus=self.cpus + resources.cpus,
            memory=self.memory + resources.memory,
            gpus=self.gpus + resources.gpus,
            servers=self.servers + 1,
        )


@dataclass(frozen=True)
class Scope:
    """One set of limits and its usage, named as a refusal says it: ``your quota``,
    ``team 'risk' quota``, ``this host's capacity``."""

    label: str
    limits: Limits
    usage: Usage


def _servers(n: int) -> str:
    return f"{n} server" + ("" if n == 1 else "s")


def _fmt_cpus(n: float) -> str:
    return f"{n:g}"


def _check(scope: Scope, need: Resources) -> None:
    limits, used = scope.limits, scope.usage
    where = scope.label
    by = _servers(used.servers)
    if limits.servers is not None and used.servers + 1 > limits.servers:
        raise QuotaExceeded(
            f"needs 1 more server; {where} allows {_servers(limits.servers)} at once "
            f"and {used.servers} {'is' if used.servers == 1 else 'are'} running. "
            "Stop a server first."
        )
    if limits.memory is not None and used.memory + need.memory > limits.memory:
        left = max(0, limits.memory - used.memory)
        raise QuotaExceeded(
            f"needs {format_memory(need.memory)}; {format_memory(left)} left in {where} "
            f"({format_memory(used.memory)} of {format_memory(limits.memory)} used by {by})"
        )
    if limits.cpus is not None and used.cpus + need.cpus > limits.cpus + 1e-9:
        cpus_left = max(0.0, limits.cpus - used.cpus)
        raise QuotaExceeded(
            f"needs {_fmt_cpus(need.cpus)} CPU{'' if need.cpus == 1 else 's'}; "
            f"{_fmt_cpus(cpus_left)} left in {where} "
            f"({_fmt_cpus(used.cpus)} of {_fmt_cpus(limits.cpus)} used by {by})"
        )
    if need.gpus and limits.gpus is not None and used.gpus + need.gpus > limits.gpus:
        left = max(0, limits.gpus - used.gpus)
        raise QuotaExceeded(
            f"needs {need.gpus} GPU{'s' if need.gpus != 1 else ''}; {left} left in {where} "
            f"({used.gpus} of {limits.gpus} used by {by})"
        )


def admit(need: Resources, *, user: Scope, teams: Sequence[Scope], host: Scope) -> None:
    """Raise ``QuotaExceeded`` with the numbers if ``need`` does not fit every scope.

    Amounts under the floor that really limits a server (``check_floor``) are
    ``InvalidInput``: they would otherwise count as almost nothing here and run unbounded.
    """
    check_floor(need)
    _check(user, need)
    for team in teams:
        _check(team, need)
    _check(host, need)


def headroom(scopes: Sequence[Scope]) -> Limits:
    """The most one new server could get right now: the tightest gap across scopes."""

    def tightest(name: str) -> float | None:
        gaps = [
            max(0.0, limit - getattr(scope.usage, name))
            for scope in scopes
            if (limit := getattr(scope.limits, name)) is not None
        ]
        return min(gaps) if gaps else None

    memory, gpus, servers = tightest("memory"), tightest("gpus"), tightest("servers")
    return Limits(
        cpus=tightest("cpus"),
        memory=None if memory is None else int(memory),
        gpus=None if gpus is None else int(gpus),
        servers=None if servers is None else int(servers),
    )
