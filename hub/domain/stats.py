"""Live resource use of running servers, as the home page and the admin console show it.

    usage = await reader.read(record.container_id)      # LiveUsage(cpu_cores=0.4, ...)
    live_stats(record, usage, now)["memory_warning"]    # True at 90 % of the limit or more

The reader is a port (``StatsReader``); ``hub.backends.docker_stats`` implements it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from hub.domain.records import ServerRecord

# Past this share of its memory limit a server is close to being OOM-killed.
MEMORY_WARNING = 0.9


@dataclass(frozen=True)
class LiveUsage:
    """What one container uses right now: CPU in cores, memory (working set) in bytes."""

    cpu_cores: float
    memory_bytes: int
    # The limit the kernel enforces, when it could be read; else the server's own.
    memory_limit: int | None = None


class StatsReader(Protocol):
    """Reads a running container's CPU and memory use."""

    async def read(self, container_id: str) -> LiveUsage:
        """Current use; ``Conflict`` if the container is not running."""


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None


def _seconds(since: datetime | None, now: datetime) -> float | None:
    if since is None:
        return None
    return max(0.0, (now - since).total_seconds())


def live_stats(record: ServerRecord, usage: LiveUsage, now: datetime) -> dict[str, Any]:
    """The stats model of the API: use against limits, uptime and idle time."""
    limit = record.resources.memory
    if usage.memory_limit and 0 < usage.memory_limit < limit:
        limit = usage.memory_limit
    fraction = usage.memory_bytes / limit if limit else 0.0
    return {
        "cpu_cores": round(usage.cpu_cores, 3),
        "cpus_limit": record.resources.cpus,
        "memory_bytes": usage.memory_bytes,
        "memory_limit": limit,
        "memory_fraction": round(fraction, 4),
        "memory_warning": fraction >= MEMORY_WARNING,
        "started": _iso(record.started),
        "uptime_s": _seconds(record.started, now) or 0.0,
        "last_activity": _iso(record.last_activity),
        "idle_s": _seconds(record.last_activity, now),
    }
