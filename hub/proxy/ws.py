"""The WebSocket half of the proxy: one client socket relayed to its upstream twin.

    bridge = await WebSocketBridge.connect(
        "ws://172.18.0.5:8888/user/alice/api/kernels/k/channels",
        headers={"Authorization": "token s", "Host": "hub.example"},
        subprotocols=["v1.kernel.websocket.jupyter.org"],
        connect_timeout=5.0, handshake_timeout=30.0, max_message_size=64 << 20,
        on_activity=lambda: tracker.record(42),
    )
    # after the client's handshake (WebSocketHandler.open):
    bridge.start(handler)                   # upstream -> client
    await bridge.to_upstream(message)       # client -> upstream, from on_message
    bridge.client_closed(code, reason)      # from on_close

The upstream connection is made *before* the client's handshake is accepted, so
that a server that is down or refuses the socket gives the client an HTTP error
it can read rather than an accepted socket that closes at once. Text stays text,
binary stays binary, and close codes and reasons travel both ways. Each side
waits for the other's writes, so a slow reader slows its writer instead of
filling the hub's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    WebSocketError,
    WebSocketHandler,
    websocket_connect,
)

from hub.proxy.upstream import (
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

# Activity on a socket is noted at most this often: one chatty kernel must not
# turn every message into a dict store plus a clock read.
ACTIVITY_EVERY = 1.0


class WebSocketBridge:
    """Relays messages between a client ``WebSocketHandler`` and an upstream connection."""

    def __init__(
        self, upstream: WebSocketClientConnection, on_activity: Callable[[], None]
    ) -> None:
        self._upstream = upstream
        self._on_activity = on_activity
        self._next_activity = 0.0
        self._pump: asyncio.Task[None] | None = None
        self._client_gone = False

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        headers: Mapping[str, str],
        subprotocols: list[str],
        connect_timeout: float,
        handshake_timeout: float,
        max_message_size: int,
        on_activity: Callable[[], None],
    ) -> WebSocketBridge:
        """Open the upstream socket, or raise an ``UpstreamError`` that says why not."""
        request = HTTPRequest(
            url,
            headers=dict(headers),
            connect_timeout=connect_timeout,
            request_timeout=handshake_timeout,
            follow_redirects=False,
            decompress_response=False,
        )
        try:
            upstream = await websocket_connect(
                request,
                subprotocols=subprotocols or None,
                max_message_size=max_message_size,
            )
        except HTTPClientError as exc:
            if exc.code == 599:
                raise UpstreamTimeout("the server did not answer the WebSocket handshake") from None
            error = UpstreamProtocolError(f"the server refused the WebSocket ({exc.code})")
            error.status = exc.code if 400 <= exc.code < 600 else 502
            raise error from None
        except (OSError, StreamClosedError) as exc:
            raise UpstreamUnavailable(f"the server is not answering ({exc})") from None
        except (WebSocketError, ValueError) as exc:
            raise UpstreamProtocolError(f"bad WebSocket handshake upstream: {exc}") from None
        return cls(upstream, on_activity)

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the upstream chose, to be echoed to the client."""
        return self._upstream.selected_subprotocol

    def start(self, client: WebSocketHandler) -> None:
        """Begin relaying upstream messages to ``client`` (call from ``open``)."""
        self._pump = asyncio.get_running_loop().create_task(self._relay_down(client))

    def _activity(self) -> None:
        now = time.monotonic()
        if now >= self._next_activity:
            self._next_activity = now + ACTIVITY_EVERY
            self._on_activity()

    async def to_upstream(self, message: str | bytes) -> None:
        """Send one client message upstream, waiting until it is written."""
        self._activity()
        # If the upstream is closing, its close reaches the client from _relay_down.
        with contextlib.suppress(WebSocketClosedError, StreamClosedError):
            await self._upstream.write_message(message, binary=isinstance(message, bytes))

    async def _relay_down(self, client: WebSocketHandler) -> None:
        upstream = self._upstream
        while True:
            message = await upstream.read_message()
            if message is None:
                break
            self._activity()
            try:
                await client.write_message(message, binary=isinstance(message, bytes))
            except (WebSocketClosedError, StreamClosedError):
                break
        if not self._client_gone:
            client.close(upstream.close_code, upstream.close_reason)

    def client_closed(self, code: int | None, reason: str | None) -> None:
        """The client closed (or dropped) its socket: close upstream the same way."""
        self._client_gone = True
        self._upstream.close(code, reason)

    def close(self) -> None:
        """Close the upstream socket (the client's handshake failed)."""
        self._client_gone = True
        self._upstream.close()
