"""Launch progress per server, replayed to anyone who subscribes late.

board = ProgressBoard()
board.publish(42, ProgressEvent(10, "image ready"))
async for event in board.follow(42):   # replays, then waits for more
    ...                                # ends after a ready or failed event
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from hub.domain.servers import ProgressEvent


@dataclass
class _Stream:
    events: list[ProgressEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class ProgressBoard:
    """In-memory progress of the latest launch of each server."""

    def __init__(self) -> None:
        self._streams: dict[int, _Stream] = {}

    def begin(self, server_id: int) -> None:
        """Start a new launch's record; followers of the old one are woken to finish."""
        old = self._streams.get(server_id)
        self._streams[server_id] = _Stream()
        if old is not None:
            old.changed.set()

    def publish(self, server_id: int, event: ProgressEvent) -> None:
        """Append an event and wake every follower."""
        stream = self._streams.setdefault(server_id, _Stream())
        stream.events.append(event)
        stream.changed.set()
        stream.changed = asyncio.Event()

    def latest(self, server_id: int) -> ProgressEvent | None:
        stream = self._streams.get(server_id)
        return stream.events[-1] if stream and stream.events else None

    async def follow(self, server_id: int) -> AsyncIterator[ProgressEvent]:
        """Every event of the current launch, from the first, until it is ready or failed."""
        stream = self._streams.setdefault(server_id, _Stream())
        seen = 0
        while True:
            while seen < len(stream.events):
                event = stream.events[seen]
                seen += 1
                yield event
                if event.ready or event.failed:
                    return
            waiter = stream.changed
            await waiter.wait()
            if self._streams.get(server_id) is not stream:
                return  # a newer launch replaced this one
