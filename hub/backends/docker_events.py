"""The Docker engine's event stream, as an async iterator of ``EngineEvent``.

    events = container_events(client, hub_id="h1")
    async for event in events:          # EngineEvent(action="die", server_id=42, exit_code=137)
        ...
    await events.aclose()               # closes the HTTP stream; the reader thread ends

The SDK's ``client.events()`` blocks on a long-lived HTTP response, so it is
read by one dedicated daemon thread per subscription, not by the bounded
executor: a subscription lives as long as the hub, and would otherwise hold
one of the executor's workers forever. Items reach the event loop through
``loop.call_soon_threadsafe``. Closing the generator closes the response's
socket, which ends the thread's blocking read promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import docker

from hub.domain.errors import BackendUnavailable
from hub.domain.servers import EngineEvent

log = logging.getLogger(__name__)

ACTIONS = ("start", "die", "oom")
SERVER_LABEL = "labdock.server"


class _Stream(Protocol):
    def __iter__(self) -> Iterator[Mapping[str, Any]]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class _End:
    """The reader thread stopped; ``error`` says why, unless it was asked to."""

    error: BaseException | None


def parse_event(raw: Mapping[str, Any]) -> EngineEvent | None:
    """An ``EngineEvent`` from one decoded engine event, or ``None`` if not ours."""
    action = str(raw.get("Action") or raw.get("status") or "")
    actor = raw.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    server = attributes.get(SERVER_LABEL, "")
    if action not in ACTIONS or not str(server).isdigit():
        return None
    exit_code = str(attributes.get("exitCode", ""))
    return EngineEvent(
        action=action,
        server_id=int(server),
        container_id=str(actor.get("ID") or raw.get("id") or ""),
        exit_code=int(exit_code) if action == "die" and exit_code.isdigit() else None,
    )


async def container_events(
    client: docker.DockerClient, *, hub_id: str
) -> AsyncGenerator[EngineEvent, None]:
    """Yield ``start``, ``die`` and ``oom`` events of this hub's containers.

    Raises ``BackendUnavailable`` if the stream breaks (engine restarted or
    unreachable): events may have been missed, so the caller should reconcile
    with ``Backend.list()`` and subscribe again.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[EngineEvent | _End] = asyncio.Queue()
    lock = threading.Lock()
    state: dict[str, Any] = {"stream": None, "closed": False}
    filters = {"type": ["container"], "label": [f"labdock.hub={hub_id}"], "event": list(ACTIONS)}

    def hand_over(item: EngineEvent | _End) -> None:
        # A closed loop means nobody listens any more; the thread just ends.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def read() -> None:
        error: BaseException | None = None
        try:
            stream: _Stream = client.events(decode=True, filters=filters)
            with lock:
                state["stream"] = stream
                closed = state["closed"]
            if closed:
                stream.close()
                return
            for raw in stream:
                event = parse_event(raw)
                if event is not None:
                    hand_over(event)
        except Exception as exc:  # reported to the consumer, not lost in the thread
            error = exc
        with lock:
            asked_to_stop = state["closed"]
        hand_over(_End(None if asked_to_stop else error or EOFError("stream ended")))

    thread = threading.Thread(target=read, name=f"labdock-events-{hub_id}", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise BackendUnavailable(
                        "lost the Docker engine's event stream "
                        f"({item.error.__class__.__name__}: {item.error}); "
                        "reconcile with list() and subscribe again"
                    ) from item.error
                return
            yield item
    finally:
        with lock:
            state["closed"] = True
            stream = state["stream"]
        if stream is not None:
            try:
                stream.close()
            except Exception:  # best effort: the socket may already be gone
                log.debug("closing the event stream failed", exc_info=True)
