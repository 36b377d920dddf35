"""The hub's front door: a lean HTTP/1.1 server that proxies user-server traffic itself.

    front = FrontProxy(FrontConfig(routes=routes, activity=activity, auth=auth,
                                   hub="unix:/run/labdock/hub.sock", refuse=render, ...),
                       pool=ConnectionPool())
    await front.listen("127.0.0.1", 8000)      # the public port
    ...
    await front.close()

Every connection on the public port lands here. For each request:

- A request to ``/user/<name>/<server>/...`` that the hub would let through
  as it is (``hub.domain.access.decide``, the hub handler's own rule, asked
  by ``hub.proxy.gate.Gate`` with a grant looked up at most once per
  ``ProxyAuth.ttl`` and meanwhile kept in memory) goes straight to the
  user's server over a pooled keep-alive connection, with the head the gate
  makes, and the response body comes back byte for byte:
  bodies pass through in whatever pieces the sockets give, never whole, with
  back-pressure both ways. A WebSocket upgrade that the server accepts
  becomes a two-way byte pipe, so frames and close codes pass untouched.
- Everything else (the hub's pages and API, refusals, redirects to the login
  page, an unknown credential, a server that refuses connections)
  goes, unchanged but for ``X-Real-Ip``, to the hub's tornado handlers on a
  private unix socket, which answer exactly as they would on their own.

The response side of each connection (heads rewritten, bodies relayed, 101s
turned into pipes, time limits) is ``hub.proxy.relay.Relay``.

Keep-alive clients repeat themselves, so each connection remembers its last
head: header lines identical to the last request's, byte for byte, are not
parsed again, and the gate passes a head identical in full again without its
checks while nothing that would change the answer has changed (see
``hub.proxy.gate``). Each upstream connection does the same with response heads.

Requests whose framing is ambiguous (two lengths, a length and chunked, an
encoding other than chunked), heads over ``max_header_size`` and anything
that is not clean HTTP/1.x are refused here, before any byte moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import cast

from hub.proxy.auth import Grant
from hub.proxy.gate import Gate
from hub.proxy.headers import hub_cookie_pattern
from hub.proxy.pool import (
    WRITE_HIGH,
    WRITE_LOW,
    ConnectionPool,
    Reader,
    UpstreamConnection,
)
from hub.proxy.relay import (
    CLOSED,
    EXCHANGE,
    HEAD,
    HEAD_END,
    TUNNEL,
    FrontConfig,
    Pass,
    Relay,
)
from hub.proxy.wire import (
    KEEP_HEAD,
    NO_BODY,
    BodyScanner,
    Head,
    WireError,
    line_pattern,
    parse_request,
    request_body,
)

log = logging.getLogger(__name__)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The client's claims about itself, which the hub's handlers must not believe.
_HUB_DROP = line_pattern(
    {"x-real-ip", "x-forwarded-for", "x-scheme", "x-forwarded-proto", "connection", "keep-alive"}
)
_CONTINUE = b"HTTP/1.1 100 (Continue)\r\n\r\n"
_TOO_MANY_TEXT = b"429 Too Many Requests: too many connections are open from your address.\n"
_TOO_MANY = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=UTF-8\r\n"
    b"Retry-After: 5\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
    % (len(_TOO_MANY_TEXT), _TOO_MANY_TEXT)
)
_NO_TOKENS: frozenset[str] = frozenset()


class FrontProxy:
    """The listening side: accepts connections and hands each to a ``_Client``."""

    def __init__(self, config: FrontConfig, pool: ConnectionPool) -> None:
        self.config = config
        self.pool = pool
        self._servers: list[asyncio.Server] = []
        self._clients: set[_Client] = set()
        # Open connections per client address, for ``max_connections_per_client``.
        self.per_address: dict[str, int] = {}
        # Requests relayed here without the hub's handlers (read by /hub/metrics).
        self.relayed = 0
        self.session_cookie = hub_cookie_pattern(config.hub_cookies)

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on ``host:port`` (0: any free port); return the port."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Client(self), host, port, backlog=1024, reuse_port=reuse_port or None
        )
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def serve_socket(self, sock: socket.socket) -> None:
        """Accept connections on an already bound, listening socket."""
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_server(lambda: _Client(self), sock=sock))

    async def close(self) -> None:
        """Stop listening; close every connection, pooled upstream connection and the
        tunnel registry's sweep."""
        for server in self._servers:
            server.close()
        for client in list(self._clients):
            client.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
        self.pool.close()
        if self.config.tunnels is not None:
            await self.config.tunnels.close()


class _Client(Relay, Reader):
    """One client connection: requests in turn, each to a user server or to the hub."""

    def __init__(self, front: FrontProxy) -> None:
        self.front = front
        self.config = front.config
        self.pool = front.pool
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buf = bytearray()
        self.state = HEAD
        self.loop = asyncio.get_running_loop()
        self.counted = False
        self.head_since = 0.0
        self.tunnel = None
        self._session = front.session_cookie
        self.gate = Gate(front.config)
        # The last request head on this connection, for the next one to compare with.
        self._previous: Head | None = None
        self._reset()

    def _reset(self) -> None:
        self.req_body = NO_BODY
        self.close_after = False
        self.target = ""
        self.up: UpstreamConnection | None = None
        self.fast: Pass | None = None
        self.head = b""
        self.request: Head | None = None
        self.reused = False
        self.body_sent = False
        self.rbuf = b""
        self.resp_body: BodyScanner | None = None
        self.resp_started = False
        self.up_keep = False
        self.timer: asyncio.TimerHandle | None = None
        self.last = 0.0
        self.client_paused = False

    # Client socket ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's classes, but behave alike.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        front = self.front
        front._clients.add(self)
        limit = self.config.max_connections_per_client
        if limit:
            count = front.per_address.get(self.peer, 0) + 1
            front.per_address[self.peer] = count
            self.counted = True
            if count > limit:
                self._fail(_TOO_MANY)
                return
        # The first head is due within head_timeout of the connection, as nginx does.
        self.last = self.head_since = self.loop.time()
        config = self.config
        self.timer = self.loop.call_later(
            min(config.client_idle_timeout, config.head_timeout), self._watch
        )

    def connection_lost(self, exc: Exception | None) -> None:
        tunnel = self.state == TUNNEL
        self.state = CLOSED
        front = self.front
        front._clients.discard(self)
        if self.counted:
            self.counted = False
            left = front.per_address[self.peer] - 1
            if left:
                front.per_address[self.peer] = left
            else:
                del front.per_address[self.peer]
        self._unwatch()
        self._stop_timer()
        up = self.up
        self.up = None
        if up is None:
            return
        if tunnel and up.transport is not None:
            up.detach()
            up.transport.close()  # after what is still queued, such as a close frame
        else:
            up.close()  # the client left mid-exchange: never pool a half-read connection

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == TUNNEL:
            up = self.up
            if up is not None:
                up.write(data)
                self._tunnel_activity()
            return
        if state == EXCHANGE and not self.req_body.done and self.up is not None and not self.buf:
            self._send_body(data)
            return
        if state == HEAD:
            self.last = self.loop.time()
            if not self.buf:
                # The usual case: one whole head, nothing after it, nothing before.
                end = data.find(HEAD_END)
                if (
                    0 < end == len(data) - 4
                    and end <= self.config.max_header_size
                    and not data.startswith(b"\r\n")
                ):
                    self._take_request(data[:end])
                    return
            self.buf += data
            self._next_request()
            return
        self.buf += data
        if state == EXCHANGE:
            if self.up is not None and not self.req_body.done:
                data = bytes(self.buf)
                self.buf.clear()
                self._send_body(data)
            elif len(self.buf) > self.config.max_header_size:
                self._pause_client()  # pipelined requests wait their turn

    def eof_received(self) -> bool:
        if self.state == TUNNEL and self.up is not None and self.up.transport is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.up.transport.write_eof()
            return True
        return False

    def pause_writing(self) -> None:
        up = self.up
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        up = self.up
        if up is not None and up.transport is not None:
            up.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _pause_client(self) -> None:
        if not self.client_paused and self.transport is not None:
            self.client_paused = True
            self.transport.pause_reading()

    def _resume_client(self) -> None:
        if self.client_paused and self.transport is not None:
            self.client_paused = False
            self.transport.resume_reading()

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _fail(self, response: bytes) -> None:
        """Answer with ``response`` and close once it is sent."""
        self.state = CLOSED
        self._unwatch()
        self._stop_timer()
        up = self.up
        self.up = None
        if up is not None:
            up.close()
        if self.transport is not None:
            self.transport.write(response)
            self.transport.close()

    def _bad_request(self, status: int, reason: str) -> None:
        text = f"{status} {reason}"
        self._fail(
            f"HTTP/1.1 {text}\r\nContent-Type: text/plain; charset=UTF-8\r\n"
            f"Content-Length: {len(text) + 1}\r\nConnection: close\r\n\r\n{text}\n".encode()
        )

    # Requests ----------------------------------------------------------------

    def _next_request(self) -> None:
        buf = self.buf
        while buf.startswith(b"\r\n"):
            del buf[:2]  # stray CRLFs between requests are allowed (RFC 9112 2.2)
        end = buf.find(HEAD_END)
        if end < 0:
            if len(buf) > self.config.max_header_size:
                self._bad_request(431, "Request Header Fields Too Large")
            elif buf and not self.head_since:
                self._head_started()
            return
        if end > self.config.max_header_size:
            self._bad_request(431, "Request Header Fields Too Large")
            return
        raw = bytes(buf[:end])
        del buf[: end + 4]
        self._take_request(raw)

    def _head_started(self) -> None:
        """A head began to arrive: it must be whole within ``head_timeout``."""
        now = self.head_since = self.loop.time()
        deadline = now + self.config.head_timeout
        timer = self.timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(deadline, self._watch)

    def _head_timed_out(self) -> None:
        if self.buf:
            self._bad_request(408, "Request Timeout")
            return
        # Nothing of a head yet: close quietly, as for an idle keep-alive connection.
        self.state = CLOSED
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()

    def _take_request(self, raw: bytes) -> None:
        """Read the request head ``raw`` (without its blank line) and send the request on."""
        self.head_since = 0.0
        try:
            request = parse_request(raw, self._previous)
        except (WireError, UnicodeDecodeError):
            self._bad_request(400, "Bad Request")
            return
        # Kept for the next request to compare with, unless it is unusually large.
        self._previous = request if len(raw) <= KEEP_HEAD else None
        body = request_body(request)
        if body is None:
            self._bad_request(400, "Bad Request")
            return
        self.state = EXCHANGE
        self.request = request
        self.req_body = body
        connection = request.tokens("connection") if "connection" in request.fields else _NO_TOKENS
        if request.version == "HTTP/1.1":
            self.close_after = "close" in connection
        else:
            self.close_after = "keep-alive" not in connection
        decided = self._decide(request)
        if decided is not None:
            self._begin(decided)

    def _decide(self, request: Head) -> Pass | None:
        """The fast-path pass of a request, or ``None`` (then the hub answers it).

        A grant that is not cached is looked up in the background, and the
        decision made again when it is known.
        """
        if request.version != "HTTP/1.1" or request.method not in _METHODS:
            self._to_hub()
            return None
        if not request.target.startswith("/user/"):
            self._to_hub()
            return None
        gate = self.gate
        repeated = gate.repeat(request)
        if repeated is not None:
            return repeated
        credential = gate.credential(request)
        if credential is None:
            self._to_hub()
            return None
        auth = self.config.auth
        grant = auth.cached(credential)
        if grant is None:
            self._pause_client()
            task = self.loop.create_task(auth.resolve(credential))
            task.add_done_callback(self._resolved)
            return None
        return self._authorize(request, grant)

    def _resolved(self, task: asyncio.Task[Grant | None]) -> None:
        if self.state != EXCHANGE or self.request is None:
            return
        try:
            grant = task.result()
        except Exception:
            log.exception("looking up a proxy credential failed")
            grant = None
        if grant is None:
            self._to_hub()
            return
        decided = self._authorize(self.request, grant)
        if decided is not None:
            self._begin(decided)

    def _authorize(self, request: Head, grant: Grant) -> Pass | None:
        """The gate's pass (kept for a repeat unless the head is too large), or to the hub."""
        keep = request is self._previous
        decided = self.gate.authorize(request, grant, body=self.req_body, peer=self.peer, keep=keep)
        if decided is None:
            self._to_hub()
        return decided

    def _to_hub(self) -> None:
        """Send the current request to the hub's own handlers, as the client sent it."""
        request = self.request
        assert request is not None
        parts = [
            " ".join(request.first).encode("latin1"),
            b"\r\n",
            _HUB_DROP.sub(b"", request.block),
        ]
        # Connections are per hop: ours to the hub stays open whatever the client's does.
        if "upgrade" in request.tokens("connection"):
            parts.append(b"Connection: Upgrade\r\n")
        parts.append(f"X-Real-Ip: {self.peer}\r\n\r\n".encode("latin1"))
        self.fast = None
        self._start(self.config.hub, b"".join(parts))

    def _begin(self, decided: Pass) -> None:
        self.fast = decided
        self.front.relayed += 1
        self._start(decided.route.target, decided.head)

    def _start(self, target: str, head: bytes) -> None:
        self.target = target
        self.head = head
        conn = self.pool.checkout(target, with_body=not self.req_body.done)
        if conn is not None:
            self._attach(conn, reused=True)
            return
        self._pause_client()
        task = self.loop.create_task(self.pool.connect(target))
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[UpstreamConnection]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if self.state != EXCHANGE:
            if exc is None:
                task.result().close()
            return
        if exc is None:
            self._attach(task.result(), reused=False)
            return
        fast = self.fast
        if isinstance(exc, TimeoutError):
            who = f"{fast.route.user}'s server" if fast else "The hub"
            self._refuse(
                504,
                f"{who} took too long to answer: the server did not accept a connection "
                f"within {self.pool.connect_timeout:g} s.",
            )
        elif fast is not None:
            # Down or gone: the hub's handler knows the server's state and says so.
            self._to_hub()
        else:
            log.error("the hub's handlers are unreachable at %s: %s", self.target, exc)
            self._bad_request(502, "Bad Gateway")

    def _refuse(self, status: int, message: str) -> None:
        fast = self.fast
        wants_html = fast.wants_html if fast else False
        self._fail(self.config.refuse(status, message, wants_html, fast.user if fast else None))

    def _attach(self, conn: UpstreamConnection, *, reused: bool) -> None:
        self.up = conn
        self.reused = reused
        self.body_sent = False
        self.rbuf = b""
        self.resp_body = None
        self.resp_started = False
        conn.attach(self)
        conn.write(self.head)
        now = self.last = self.loop.time()
        deadline = now + self.pool.idle_timeout
        timer = self.timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()  # armed for an idle client, which may wait much longer
            self.timer = self.loop.call_at(deadline, self._watch)
        if self.req_body.done:
            if len(self.buf) <= self.config.max_header_size:
                self._resume_client()
            return
        request = self.request
        expect = request.fields.get("expect") if request is not None else None
        if self.fast is not None and (expect or "").lower() == "100-continue":
            self._write(_CONTINUE)
        if self.buf:
            data = bytes(self.buf)
            self.buf.clear()
            self._send_body(data)
        if self.state == EXCHANGE and not self.req_body.done:
            self._watch_stream()  # an upload that streams on: ended if the grant goes
            self._resume_client()

    def _send_body(self, data: bytes) -> None:
        """Forward the part of ``data`` that belongs to the request body; keep the rest."""
        up = self.up
        assert up is not None
        try:
            end = self.req_body.feed(data, 0)
        except WireError:
            self._bad_request(400, "Bad Request")
            return
        if end:
            up.write(data if end == len(data) else data[:end])
            self.body_sent = True
            self.last = self.loop.time()
        if end < len(data):
            self.buf += data[end:]
        if self.req_body.done and len(self.buf) > self.config.max_header_size:
            self._pause_client()
