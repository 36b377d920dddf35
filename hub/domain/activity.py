"""When each server was last used, kept in memory and written to the DB in batches.

    tracker = ActivityTracker(every=30.0)
    tracker.record(42)                         # on every proxied request: one dict store
    batch = tracker.due(datetime.now(UTC))     # {42: datetime(...)}; then nothing for 30 s
    await flush(tracker, repo)                 # the same, written with repo.record_activity
    task = asyncio.create_task(flush_forever(tracker, repo, tick=5.0))   # what the hub runs

The proxy records on its hot path, so ``record`` does as little as possible: it
stores a float. Everything else (throttling, conversion to ``datetime``) happens
in ``due``, which the flush loop calls every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

log = logging.getLogger(__name__)

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

    def due(self, now: datetime, *, force: bool = False) -> dict[int, datetime]:
        """The servers whose newest activity is not yet written, at most once per ``every``.

        Each server in the result is considered written; call ``put_back`` if
        the write fails. ``force`` ignores ``every`` (the hub is stopping).
        """
        now_ts = now.timestamp()
        batch: dict[int, datetime] = {}
        for server_id, seen in self._seen.items():
            if seen <= self._written.get(server_id, _NEVER):
                continue
            if not force and now_ts - self._flushed_at.get(server_id, _NEVER) < self.every:
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


class ActivityStore(Protocol):
    """Where last-activity times are kept (``servers.last_activity``)."""

    async def record_activity(self, seen: Mapping[int, datetime]) -> None:
        """Write each server's time, never moving one back."""


async def flush(
    tracker: ActivityTracker, store: ActivityStore, *, force: bool = False
) -> dict[int, datetime]:
    """Write what is due in one batch; on failure keep it for the next flush, and raise."""
    batch = tracker.due(datetime.now(UTC), force=force)
    if not batch:
        return batch
    try:
        await store.record_activity(batch)
    except BaseException:
        tracker.put_back(batch)
        raise
    return batch


async def flush_forever(
    tracker: ActivityTracker, store: ActivityStore, *, tick: float = 5.0
) -> None:
    """Flush every ``tick`` seconds until cancelled, then once more, whatever is due.

    Each server is still written at most once per ``tracker.every``; ``tick``
    only bounds how late a due write is.
    """
    try:
        while True:
            await asyncio.sleep(tick)
            try:
                await flush(tracker, store)
            except Exception as exc:  # the DB is down: the times wait in memory
                log.warning("could not write server activity (%s); will retry", exc)
    except asyncio.CancelledError:
        try:
            await flush(tracker, store, force=True)
        except Exception as exc:
            log.warning("could not write server activity on shutdown (%s)", exc)
        raise
