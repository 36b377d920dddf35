"""When each server was last used, kept in memory and written to the DB in batches.

    tracker = ActivityTracker(every=30.0)
    tracker.record(42)                         # on every proxied request: one dict store
    batch = tracker.due(datetime.now(UTC))     # {42: datetime(...)}; then nothing for 30 s
    try:
        await repo.write_last_activity(batch)
    except Exception:
        tracker.put_back(batch)                # so the next flush tries again

The proxy records on its hot path, so ``record`` does as little as possible: it
stores a float. Everything else (throttling, conversion to ``datetime``) happens
in ``due``, which the flush loop calls every few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

_NEVER = float("-inf")


class ActivityTracker:
    """The last activity time per server id, and which of them are due to be written.

    ``every`` is the least number of seconds between two writes for one server;
    ``clock`` returns the wall time in seconds (``time.time``), and is a
    parameter only so that tests need not sleep.
    """

    def __init__(self, every: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        if every < 0:
            raise ValueError("every must be zero or more seconds")
        self.every = every
        self._clock = clock
        self._seen: dict[int, float] = {}
        # What was last handed out for writing, and when, per server.
        self._written: dict[int, float] = {}
        self._flushed_at: dict[int, float] = {}

    def record(self, server_id: int) -> None:
        """Note that ``server_id`` was used now."""
        self._seen[server_id] = self._clock()

    def last_seen(self, server_id: int) -> datetime | None:
        """The last recorded activity of a server, written or not."""
        seen = self._seen.get(server_id)
        return None if seen is None else datetime.fromtimestamp(seen, UTC)

    def due(self, now: datetime) -> dict[int, datetime]:
        """The servers whose newest activity is not yet written, at most once per ``every``.

        Each server in the result is considered written; call ``put_back`` if
        the write fails.
        """
        now_ts = now.timestamp()
        batch: dict[int, datetime] = {}
        for server_id, seen in self._seen.items():
            if seen <= self._written.get(server_id, _NEVER):
                continue
            if now_ts - self._flushed_at.get(server_id, _NEVER) < self.every:
                continue
            batch[server_id] = datetime.fromtimestamp(seen, UTC)
            self._written[server_id] = seen
            self._flushed_at[server_id] = now_ts
        return batch

    def put_back(self, batch: Mapping[int, datetime]) -> None:
        """Forget that ``batch`` was written, so that the next ``due`` returns it again."""
        for server_id in batch:
            self._written.pop(server_id, None)
            self._flushed_at.pop(server_id, None)

    def forget(self, server_id: int) -> None:
        """Drop a removed server, so that memory does not grow with servers long gone."""
        self._seen.pop(server_id, None)
        self._written.pop(server_id, None)
        self._flushed_at.pop(server_id, None)

    def __len__(self) -> int:
        return len(self._seen)
