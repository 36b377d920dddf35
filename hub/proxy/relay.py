"""The upstream half of a front connection: responses relayed back, then the next request.

    class _Client(Relay, Reader): ...          # hub.proxy.fast: the client half
    conn.attach(client)                        # client.upstream_data(...) from now on

``hub.proxy.fast`` reads requests and sends them on; this module takes
what comes back from a user server (or from the hub's own handlers) to the
client: the response head, rewritten by ``hub.proxy.headers`` rules for a user
server and passed as it is from the hub, the body in whatever pieces arrive
(bodies of known length as views of the shared receive buffer), a 101 that
turns both sockets into one pipe, and the failures: a server that goes
quiet (504), answers badly (502) or hangs up mid-body (the client's
connection is cut, the only honest signal left). When a response is whole,
the upstream connection goes back to the pool and the next pipelined request
is read.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from hub.domain.access import Site
from hub.domain.accounts import User
from hub.domain.activity import ActivityTracker
from hub.domain.routes import Route, RouteTable
from hub.proxy.auth import Grant, ProxyAuth
from hub.proxy.headers import response_block, response_header_lines
from hub.proxy.pool import ConnectionPool, UpstreamConnection, write_view
from hub.proxy.tunnels import Tunnel, Tunnels
from hub.proxy.wire import (
    KEEP_HEAD,
    NO_BODY,
    BodyScanner,
    Head,
    WireError,
    parse_response,
)

Refuse = Callable[[int, str, bool, User | None], bytes]
"""``refuse(status, message, wants_html, user)``: a whole response the front sends, then closes."""

HEAD_END = b"\r\n\r\n"
# The states of a client connection.
HEAD, EXCHANGE, TUNNEL, CLOSED = range(4)
# ``Connection`` values that name no header to drop beyond the hop-by-hop ones.
_PLAIN_CONNECTION = frozenset({"keep-alive", "close"})


@dataclass(frozen=True)
class FrontConfig:
    """What every connection of the front shares."""

    routes: RouteTable
    activity: ActivityTracker
    auth: ProxyAuth
    hub: str  # where the hub's handlers listen: "unix:/path" (or "http://127.0.0.1:port")
    refuse: Refuse
    public_origin: str  # "https://hub.example.org", or "" when hub.public_url is unset
    public_scheme: str
    hub_cookies: frozenset[str]
    max_header_size: int = 64 * 1024
    # How long a client may keep a connection open without sending a request (as
    # tornado's idle_connection_timeout).
    client_idle_timeout: float = 3600.0
    # How long a whole request head may take, from a new connection or from the
    # head's first byte (``hub.request_head_timeout``): a client that trickles a
    # byte at a time (slowloris) is answered 408 and let go.
    head_timeout: float = 30.0
    # Connections open at once from one client address; 0: no cap
    # (``hub.max_connections_per_client``). The one beyond gets 429 and is closed.
    max_connections_per_client: int = 256
    # WebSockets and streamed bodies, closed when their grant is revoked.
    tunnels: Tunnels | None = None
    # What ``hub.domain.access.decide`` knows of the hub: made from the fields above.
    site: Site = field(init=False)

    def __post_init__(self) -> None:
        site = Site(self.public_origin, self.public_scheme, self.auth.hosts)
        object.__setattr__(self, "site", site)


class Pass:
    """A request the fast path forwards: where to, and what it says upstream."""

    __slots__ = ("grant", "head", "route", "upgrade", "user", "wants_html")

    def __init__(
        self, route: Route, head: bytes, upgrade: bool, grant: Grant, wants_html: bool
    ) -> None:
        self.route = route
        self.head = head
        self.upgrade = upgrade
        self.grant = grant
        self.user: User = grant.user
        self.wants_html = wants_html


class Relay:
    """The upstream half of ``hub.proxy.fast._Client``: everything an upstream socket reports.

    A mixin: the attributes below are the client connection's, set by its
    ``__init__``, and the methods it names last are the client half's.
    """

    config: FrontConfig
    pool: ConnectionPool
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    state: int
    buf: bytearray
    request: Head | None
    req_body: BodyScanner
    close_after: bool
    fast: Pass | None
    target: str
    head: bytes
    up: UpstreamConnection | None
    reused: bool
    body_sent: bool
    rbuf: bytes
    resp_body: BodyScanner | None
    resp_started: bool
    up_keep: bool
    timer: asyncio.TimerHandle | None
    last: float
    head_since: float
    tunnel: Tunnel | None
    _session: re.Pattern[bytes]

    # Upstream socket -----------------------------------------------------------

    def upstream_pause(self) -> None:
        self._pause_client()

    def upstream_resume(self) -> None:
        if self.state == TUNNEL or not self.req_body.done:
            self._resume_client()

    def streams_down(self) -> bool:
        body = self.resp_body
        return self.state == EXCHANGE and body is not None and body.streams_fixed

    def upstream_view(self, data: memoryview) -> None:
        """A piece of a response body of known length: straight to the client."""
        body = self.resp_body
        assert body is not None
        self.last = self.loop.time()
        end = body.feed(data, 0)  # type: ignore[arg-type]  # a fixed body only counts
        if self.transport is not None:
            write_view(self.transport, data if end == len(data) else data[:end])
        if end < len(data):
            self.up_keep = False  # bytes beyond the response: never reuse the connection
        if body.done:
            self._finish()

    def passes_views(self) -> bool:
        return (
            self.state == EXCHANGE
            and self.up is not None
            and not self.buf
            and self.req_body.streams_fixed
        )

    def view_received(self, data: memoryview) -> None:
        """A piece of a request body of known length: straight upstream."""
        up = self.up
        assert up is not None
        end = self.req_body.feed(data, 0)  # type: ignore[arg-type]
        up.write_view(data if end == len(data) else data[:end])
        self.body_sent = True
        self.last = self.loop.time()
        if end < len(data):
            self.buf += data[end:]  # the next, pipelined request
            if len(self.buf) > self.config.max_header_size:
                self._pause_client()

    def upstream_data(self, data: bytes) -> None:
        if self.state == TUNNEL:
            self._write(data)
            self._tunnel_activity()
            return
        self.last = self.loop.time()
        body = self.resp_body
        if body is None:
            data = self._response_head(data)
            body = self.resp_body
            if body is None or self.state != EXCHANGE:
                return
        if data:
            try:
                end = body.feed(data, 0)
            except WireError:
                self._cut()
                return
            self._write(data if end == len(data) else data[:end])
            if end < len(data):
                self.up_keep = False  # bytes beyond the response: never reuse the connection
        if body.done:
            self._finish()

    def _response_head(self, data: bytes) -> bytes:
        """Read the response head; return the body bytes that came with it."""
        rbuf = self.rbuf + data if self.rbuf else data
        up = self.up
        while True:
            end = rbuf.find(HEAD_END)
            if end < 0:
                self.rbuf = rbuf
                if len(rbuf) > self.config.max_header_size:
                    self._bad_upstream("the server sent an over-long head")
                return b""
            try:
                head = parse_response(rbuf[:end], up.last_head if up is not None else None)
            except (WireError, UnicodeDecodeError):
                self._bad_upstream("the server sent a bad response head")
                return b""
            if up is not None:
                up.last_head = head if end <= KEEP_HEAD else None
            raw_head, rbuf = rbuf[: end + 4], rbuf[end + 4 :]
            code = int(head.first[1])
            if code == 101:
                self._switch(head, raw_head, rbuf)
                return b""
            if code >= 200:
                break
            if self.fast is None and code == 100:
                self._write(raw_head)  # the hub's own 100-continue
        self.rbuf = b""
        body = _response_body(head, self.request)
        if body is None:
            self._bad_upstream("the server framed its response ambiguously")
            return b""
        self.resp_body = body
        self.up_keep = (
            head.first[0] == "HTTP/1.1"
            # A substring test: a token merely containing "close" errs towards closing.
            and "close" not in head.fields.get("connection", "").lower()
            and (self.fast is not None or self.request is None or self.request.version[-1] == "1")
        )
        if body.until_closed:
            self.up_keep = False
            self.close_after = True
        self.resp_started = True
        fast = self.fast
        if fast is None:
            out = raw_head
        elif (
            up is not None
            and up.memo_head is head
            and up.memo_close == self.close_after
            and up.memo_chunked == body.is_chunked
        ):
            out = up.memo_out  # the same head as the last response on this connection
        else:
            connection = head.fields.get("connection")
            if connection is not None and connection.lower() in _PLAIN_CONNECTION:
                connection = None  # names no other header: nothing more to drop
            parts = [
                f"HTTP/1.1 {head.first[1]} {head.first[2]}\r\n".encode("latin1"),
                response_block(head.block, connection=connection, session=self._session),
            ]
            if body.is_chunked:
                parts.append(b"Transfer-Encoding: chunked\r\n")
            if self.close_after:
                parts.append(b"Connection: close\r\n")
            parts.append(b"\r\n")
            out = b"".join(parts)
            if up is not None and head is up.last_head:
                up.memo_head, up.memo_out = head, out
                up.memo_close, up.memo_chunked = self.close_after, body.is_chunked
        # The head goes out with the first piece of the body: one write, not two.
        try:
            end = body.feed(rbuf, 0) if rbuf else 0
        except WireError:
            self._write(out)
            self._cut()
            return b""
        self._write(out + rbuf[:end] if end else out)
        if end < len(rbuf):
            self.up_keep = False
        if not body.done and fast is not None:
            self._watch_stream()  # the body streams on: ended if the grant goes
        return b""

    def _switch(self, head: Head, raw_head: bytes, rest: bytes) -> None:
        """A 101: from now on both sockets are one pipe."""
        request = self.request
        fast = self.fast
        upgrading = request is not None and request.fields.get("upgrade") is not None
        if (fast is not None and not fast.upgrade) or not upgrading:
            self._bad_upstream("the server switched protocols unasked")
            return
        self.state = TUNNEL
        self._stop_timer()
        self.resp_started = True
        if fast is not None:
            self._watch_stream()
        if fast is None:
            self._write(raw_head)
        else:
            keep = frozenset({"upgrade", "connection"})
            lines = response_header_lines(head.headers, self.config.hub_cookies, keep=keep)
            lines.insert(0, f"HTTP/1.1 101 {head.first[2]}")
            lines.append("\r\n")
            self._write("\r\n".join(lines).encode("latin1"))
        if rest:
            self._write(rest)
        if self.buf and self.up is not None:
            self.up.write(bytes(self.buf))
            self.buf.clear()
        self._resume_client()

    def upstream_lost(self) -> None:
        if self.state == TUNNEL:
            self.up = None
            if self.transport is not None:
                self.transport.close()
            return
        if self.state != EXCHANGE:
            return
        self.up = None
        body = self.resp_body
        if body is None:
            if self.reused and not self.body_sent and not self.rbuf:
                # A pooled connection the server closed as we sent: safe to send again.
                self._start_fresh()
                return
            self._bad_upstream("the server closed the connection")
            return
        if body.closed():
            self._finish()
        else:
            self._cut()

    def _tunnel_activity(self) -> None:
        # Noted at most once a second: a chatty socket must not cost a store per frame.
        now = self.loop.time()
        if now - self.last >= 1.0:
            self.last = now
            if self.fast is not None:
                self.config.activity.record(self.fast.route.server_id)

    def _start_fresh(self) -> None:
        self._pause_client()
        task = self.loop.create_task(self.pool.connect(self.target))
        task.add_done_callback(self._connected)

    def _bad_upstream(self, message: str) -> None:
        if self.resp_started:
            self._cut()
            return
        fast = self.fast
        who = f"{fast.route.user}'s server" if fast else "The hub"
        self._refuse(502, f"{who} answered badly: {message}.")

    def _watch_stream(self) -> None:
        """Keep this connection in the tunnel registry while it tunnels or streams."""
        fast, tunnels = self.fast, self.config.tunnels
        if fast is None or tunnels is None or self.tunnel is not None:
            return
        self.tunnel = tunnels.open(
            fast.grant.subject, user_id=fast.user.id, route=fast.route, close=self._revoked
        )

    def _unwatch(self) -> None:
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None and self.config.tunnels is not None:
            self.config.tunnels.done(tunnel)

    def _revoked(self) -> None:
        """The grant this tunnel or stream was let through for is gone: cut it now."""
        self.tunnel = None
        if self.state != CLOSED:
            self._cut()

    def _cut(self) -> None:
        """The response is already under way: cutting the connection is all that is left."""
        self.state = CLOSED
        self._unwatch()
        self._stop_timer()
        up = self.up
        self.up = None
        if up is not None:
            up.close()
        self.abort()

    def _watch(self) -> None:
        self.timer = None
        if self.state == HEAD:
            # Between requests: a client that sends nothing for this long is let go,
            # and one whose head takes too long (however steadily it trickles) too.
            now = self.loop.time()
            wait = self.config.client_idle_timeout - (now - self.last)
            since = self.head_since
            if since:
                left = since + self.config.head_timeout - now
                if left <= 0:
                    self._head_timed_out()
                    return
                wait = min(wait, left)
            if wait > 0:
                self.timer = self.loop.call_later(wait, self._watch)
            else:
                self.abort()
            return
        if self.state != EXCHANGE:
            return
        idle = self.pool.idle_timeout
        elapsed = self.loop.time() - self.last
        if elapsed < idle:
            self.timer = self.loop.call_later(idle - elapsed, self._watch)
            return
        if self.resp_started:
            self._cut()
            return
        fast = self.fast
        who = f"{fast.route.user}'s server" if fast else "The hub"
        self._refuse(504, f"{who} took too long to answer: it made no progress for {idle:g} s.")

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _finish(self) -> None:
        """The response is complete: pool the upstream connection, then the next request."""
        up = self.up
        self.up = None
        request_done = self.req_body.done
        if up is not None:
            if self.up_keep and request_done:
                self.pool.checkin(self.target, up)
            else:
                up.close()
        if self.tunnel is not None:
            self._unwatch()
        if self.close_after or not request_done:
            self.state = CLOSED
            self._stop_timer()
            if self.transport is not None:
                self.transport.close()
            return
        self.state = HEAD
        self.last = self.loop.time()
        self.request = None
        self.fast = None
        self.req_body = NO_BODY
        self.resp_body = None
        self._resume_client()
        if self.buf:
            self._next_request()
        # The watchdog stays armed for the next request on this connection; it
        # disarms itself when it finds the connection idle.

    # The client half's, in hub.proxy.fast -------------------------------------------

    def abort(self) -> None:
        raise NotImplementedError

    def _pause_client(self) -> None:
        raise NotImplementedError

    def _resume_client(self) -> None:
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _refuse(self, status: int, message: str) -> None:
        raise NotImplementedError

    def _next_request(self) -> None:
        raise NotImplementedError

    def _connected(self, task: asyncio.Task[UpstreamConnection]) -> None:
        raise NotImplementedError

    def _head_timed_out(self) -> None:
        raise NotImplementedError


def _response_body(head: Head, request: Head | None) -> BodyScanner | None:
    code = int(head.first[1])
    if (request is not None and request.method == "HEAD") or code in (204, 304):
        return NO_BODY
    encoding = head.fields.get("transfer-encoding")
    length = head.fields.get("content-length")
    if encoding is not None:
        if length is not None or encoding.strip().lower() != "chunked":
            return None
        return BodyScanner.chunked()
    if length is not None:
        if length.isascii() and length.isdigit() and len(length) <= 19:
            return BodyScanner.fixed(int(length))  # the usual case, kept cheap
        values = {v.strip() for v in length.split(",")}
        value = values.pop()
        if values or not value.isascii() or not value.isdigit() or len(value) > 19:
            return None
        return BodyScanner.fixed(int(value))
    return BodyScanner.until_close()
