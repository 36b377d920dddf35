"""The audit log: every admin action and every refusal, with who, what and why.

await audit.record(actor_id=1, action="quota.set", target="team:risk",
                   detail={"memory": 8 * GiB})

    digest = RefusalDigest(window_s=60)
    held = digest.admit(("10.0.0.9", "token"))   # 0: write it; None: held back, counted
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class AuditEntry:
    """One recorded event."""

    at: datetime
    actor: str | None
    action: str
    target: str
    outcome: str
    detail: Mapping[str, object] = field(default_factory=dict)
    id: int = 0


class AuditLog(Protocol):
    """Where audit entries go (the database)."""

    async def record(
        self,
        *,
        actor_id: int | None,
        action: str,
        target: str = "",
        outcome: str = "ok",
        detail: Mapping[str, object] | None = None,
    ) -> None: ...

    async def recent(self, limit: int = 100) -> list[AuditEntry]: ...

    async def page(
        self,
        *,
        action: str | None = None,
        actor: str | None = None,
        outcome: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[AuditEntry]:
        """Entries newest first, older than id ``before``, matching the filters given."""

    async def actions(self) -> list[str]:
        """The distinct actions recorded so far, for a filter menu."""


class RefusalDigest:
    """Refusals written at most once a window per key, with a count of those held back.

    A client hammering the hub with bad tokens or forged forms must not be able
    to fill the audit log: from one address, each kind of refusal is written
    once per ``window_s``; the ones in between are counted, and the count is
    written with the next entry of that key (``held_back``). Memory is bounded
    by ``max_keys``: the oldest keys are forgotten first.
    """

    def __init__(
        self,
        *,
        window_s: float = 60.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window_s
        self._max_keys = max_keys
        self._clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def admit(self, key: tuple[str, str]) -> int | None:
        """``None`` to hold this refusal back; else write it, noting the returned count."""
        now = self._clock()
        found = self._seen.get(key)
        if found is not None and now - found[0] < self._window:
            self._seen[key] = (found[0], found[1] + 1)
            return None
        self._seen.pop(key, None)
        self._seen[key] = (now, 0)
        while len(self._seen) > self._max_keys:
            del self._seen[next(iter(self._seen))]
        return found[1] if found is not None else 0
