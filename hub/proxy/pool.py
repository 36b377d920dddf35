"""Keep-alive upstream connections for the proxy's fast path, as asyncio protocols.

    pool = ConnectionPool(connect_timeout=5.0, idle_timeout=300.0)
    conn = pool.checkout("http://172.18.0.5:8888")          # an idle one, or None
    conn = conn or await pool.connect("http://172.18.0.5:8888")
    conn.attach(owner)             # owner.upstream_data(bytes) / upstream_lost() from now on
    conn.transport.write(b"GET / HTTP/1.1\\r\\n...")
    pool.checkin("http://172.18.0.5:8888", conn)            # after a clean exchange
    pool.discard("http://172.18.0.5:8888")                  # the route went away
    pool.close()

A target is ``http://host:port`` (a user server) or ``unix:/path`` (the hub's
own handlers, behind the fast path). An idle connection that the server
closes, or that receives bytes nobody asked for, leaves the pool at once, so a
checked-out connection is one that was healthy a moment ago. Connections idle
for more than ``keepalive_idle`` are not reused: servers often close them
about then, and a request must not race that close.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Protocol, cast
from urllib.parse import urlsplit

from hub.proxy.wire import Head

# Large enough that a fast reader never waits on pause/resume churn, small
# enough that a slow reader holds little of a big transfer in the hub's memory.
WRITE_HIGH = 1024 * 1024
WRITE_LOW = 256 * 1024
READ_SIZE = 1024 * 1024
# Servers often drop idle keep-alive connections after 2-5 s (gunicorn, uvicorn).
FRESH_FOR_BODY = 1.0


class _Shared:
    """The one receive buffer of every fast-path socket in this process.

    Plain ``recv`` with asyncio's 256 KiB limit allocates 256 KiB per call,
    which costs more than the rest of a small request's handling; so sockets
    read with ``recv_into`` here. Heads are copied out at once, before any
    other read; body bytes that pass straight through are written from here
    (see ``write_view``).
    """

    view = memoryview(bytearray(READ_SIZE))


_SHARED = _Shared()


def write_view(transport: asyncio.WriteTransport, data: memoryview) -> None:
    """Write a slice of the shared buffer without copying it first.

    A transport that cannot send it all at once may keep a reference to it
    (Python 3.12 and later do), so then the buffer is left to it and a new one
    taken for the next read: rare, since the reader pauses at the same time.
    """
    transport.write(data)
    if transport.get_write_buffer_size():
        _SHARED.view = memoryview(bytearray(READ_SIZE))


class Reader(asyncio.BufferedProtocol):
    """A protocol that receives through the shared buffer.

    Bytes go to ``data_received`` as ``bytes``, or, while ``passes_views``
    says a body is streaming straight through, to ``view_received`` as a
    view of the shared buffer that must be written on (``write_view``) or
    copied before returning.
    """

    def get_buffer(self, sizehint: int) -> memoryview:
        return _SHARED.view

    def buffer_updated(self, nbytes: int) -> None:
        view = _SHARED.view
        if self.passes_views():
            self.view_received(view[:nbytes])
        else:
            self.data_received(bytes(view[:nbytes]))

    def passes_views(self) -> bool:
        return False

    def view_received(self, data: memoryview) -> None:
        self.data_received(bytes(data))

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError


class Owner(Protocol):
    """What a connection reports to while attached to an exchange."""

    def upstream_data(self, data: bytes) -> None: ...

    def upstream_lost(self) -> None: ...

    def upstream_pause(self) -> None: ...

    def upstream_resume(self) -> None: ...

    def streams_down(self) -> bool: ...

    def upstream_view(self, data: memoryview) -> None: ...


class UpstreamConnection(Reader):
    """One connection to a target; attached to at most one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.owner: Owner | None = None
        self.closed = False
        self.idle_since = 0.0
        # The last response head read here, and what the fast path made of it: a
        # server repeats its heads byte for byte often enough to keep them (see
        # ``parse_response`` and ``Relay._response_head``).
        self.last_head: Head | None = None
        self.memo_head: Head | None = None
        self.memo_out = b""
        self.memo_close = False
        self.memo_chunked = False

    # asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's classes, but behave alike.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is not None:
            owner.upstream_data(data)
        else:
            self.close()  # bytes nobody asked for: never reuse this connection

    def passes_views(self) -> bool:
        return self.owner is not None and self.owner.streams_down()

    def view_received(self, data: memoryview) -> None:
        assert self.owner is not None
        self.owner.upstream_view(data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        owner = self.owner
        self.owner = None
        if owner is not None:
            owner.upstream_lost()

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_pause()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_resume()

    # For the exchange ------------------------------------------------------

    def attach(self, owner: Owner) -> None:
        self.owner = owner

    def detach(self) -> None:
        self.owner = None

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def write_view(self, data: memoryview) -> None:
        if self.transport is not None:
            write_view(self.transport, data)

    def close(self) -> None:
        """Close now, dropping anything unsent (the exchange failed or was abandoned)."""
        self.owner = None
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()


class ConnectionPool:
    """Idle connections per target, most recently used first."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        idle_timeout: float = 300.0,
        keepalive_idle: float = 30.0,
        max_idle_per_target: int = 64,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.keepalive_idle = keepalive_idle
        self.max_idle_per_target = max_idle_per_target
        self._idle: dict[str, deque[UpstreamConnection]] = {}
        self._addresses: dict[str, tuple[str, int] | str] = {}

    def checkout(self, target: str, *, with_body: bool = False) -> UpstreamConnection | None:
        """An idle connection to ``target`` that is still good, or ``None``.

        A request with a body cannot be sent again if the server hangs up on
        it, so it only takes a connection that was used a moment ago.
        """
        idle = self._idle.get(target)
        if not idle:
            return None
        now = time.monotonic()
        limit = min(self.keepalive_idle, FRESH_FOR_BODY) if with_body else self.keepalive_idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < limit:
                return conn
            conn.close()
        return None

    def checkin(self, target: str, conn: UpstreamConnection) -> None:
        """Keep a connection whose exchange completed cleanly."""
        conn.detach()
        if conn.closed or conn.transport is None:
            return
        idle = self._idle.get(target)
        if idle is None:
            idle = self._idle[target] = deque()
        if len(idle) >= self.max_idle_per_target:
            conn.close()
            return
        conn.transport.resume_reading()  # to notice the server hanging up while idle
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def connect(self, target: str) -> UpstreamConnection:
        """A new connection to ``target``.

        Raises ``TimeoutError`` after ``connect_timeout``, ``OSError`` when
        nothing listens there, ``ValueError`` for a target that is not one.
        """
        address = self._address(target)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            if isinstance(address, str):
                _, conn = await loop.create_unix_connection(UpstreamConnection, address)
            else:
                _, conn = await loop.create_connection(UpstreamConnection, *address)
        return conn

    def _address(self, target: str) -> tuple[str, int] | str:
        known = self._addresses.get(target)
        if known is not None:
            return known
        if target.startswith("unix:"):
            address: tuple[str, int] | str = target[len("unix:") :]
        else:
            parts = urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"the route's target {target!r} is not an http:// URL")
            address = (parts.hostname, parts.port or 80)
        self._addresses[target] = address
        return address

    def idle_connections(self, target: str) -> int:
        """How many connections to ``target`` wait in the pool (closed ones leave it)."""
        idle = self._idle.get(target)
        if not idle:
            return 0
        live = deque(conn for conn in idle if not conn.closed)
        self._idle[target] = live
        return len(live)

    def discard(self, target: str) -> None:
        """Close the idle connections to a target that went away (its route was removed)."""
        for conn in self._idle.pop(target, ()):
            conn.close()
        self._addresses.pop(target, None)

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
