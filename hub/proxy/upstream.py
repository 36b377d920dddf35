"""A lean HTTP/1.1 client for the proxy: pooled keep-alive connections to user servers.

    pool = UpstreamPool(connect_timeout=5.0, idle_timeout=300.0)
    exchange = await pool.start("http://172.18.0.5:8888",
                                b"GET /user/alice/api HTTP/1.1\\r\\nHost: hub\\r\\n\\r\\n", body=0)
    await exchange.end()
    head = await exchange.head()            # status, reason, headers
    while chunk := await exchange.read():   # the body, chunk by chunk, never whole
        ...
    exchange.release()                      # back to the pool when the connection is reusable
    pool.close()

The caller builds the request head (the proxy decides which headers go
upstream); this module owns sockets, framing and time limits:

- Connections to a target are kept after a complete exchange and reused, most
  recent first; one that the server closed while idle leaves the pool at once,
  and a request without a body that meets a connection closed under it is sent
  again once on a fresh one.
- Request bodies are sent with ``Content-Length`` or chunked, as the caller
  declares; response bodies are decoded from ``Content-Length``, chunked or
  read-until-close framing, and handed out in pieces of at most ``chunk_size``.
- ``connect_timeout`` bounds the TCP connect; ``idle_timeout`` bounds any stretch
  without progress in either direction (waiting for the response head
  included), so a stuck server costs a 504, never a hung request.

Why not ``AsyncHTTPClient``: ``simple_httpclient`` opens a new connection per
request, and going through its request/response objects costs more than the
proxy's whole latency budget.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from tornado import httputil
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError, UnsatisfiableReadError
from tornado.tcpclient import TCPClient

RequestBody = int | Literal["chunked"]
"""How the request body is framed: its ``Content-Length`` (0: none), or ``"chunked"``."""

_HEX = re.compile(r"[0-9a-fA-F]{1,15}")
_DIGITS = re.compile(r"[0-9]{1,19}")
_MAX_1XX = 5
# Servers often drop idle keep-alive connections after 2-5 s (gunicorn, uvicorn).
_FRESH_FOR_BODY = 1.0
_MAX_TRAILERS = 64


class UpstreamError(Exception):
    """The user server could not be reached or answered badly; ``status`` says how to report it."""

    status = 502

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UpstreamUnavailable(UpstreamError):
    """Nothing listens at the target (connection refused or unreachable)."""

    status = 503


class UpstreamTimeout(UpstreamError):
    """The connect, or the exchange, made no progress for too long."""

    status = 504


class UpstreamProtocolError(UpstreamError):
    """The server answered with something that is not valid HTTP/1.1, or hung up mid-way."""

    status = 502


@dataclass(frozen=True)
class UpstreamHead:
    """The status line and headers of an upstream response."""

    code: int
    reason: str
    headers: httputil.HTTPHeaders


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    is_ip: bool


class UpstreamPool:
    """Keep-alive connections to user servers, per target URL.

    One pool serves the whole hub; ``close`` it when the hub stops.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        idle_timeout: float = 300.0,
        keepalive_idle: float = 30.0,
        max_idle_per_target: int = 64,
        max_header_size: int = 64 * 1024,
        chunk_size: int = 64 * 1024,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.keepalive_idle = keepalive_idle
        self.max_idle_per_target = max_idle_per_target
        self.max_header_size = max_header_size
        self.chunk_size = chunk_size
        self._idle: dict[str, deque[tuple[IOStream, float]]] = {}
        self._targets: dict[str, _Target] = {}
        self._tcp = TCPClient()

    async def start(self, target: str, head: bytes, *, body: RequestBody) -> UpstreamExchange:
        """Send a request head to ``target`` (``http://host:port``); return the exchange."""
        # A request with a body cannot be sent again if the server hangs up on
        # it, so it only takes a connection that was used a moment ago.
        fresh = self.keepalive_idle if body == 0 else min(self.keepalive_idle, _FRESH_FOR_BODY)
        stream, reused = await self._checkout(target, fresh)
        exchange = UpstreamExchange(self, target, stream, head, body, reused=reused)
        await exchange._send_head()
        return exchange

    def idle_connections(self, target: str) -> int:
        """How many idle connections to ``target`` wait in the pool."""
        return len(self._idle.get(target, ()))

    def discard(self, target: str) -> None:
        """Close the idle connections to a target that went away (its route was removed)."""
        for stream, _ in self._idle.pop(target, ()):
            stream.set_close_callback(None)
            stream.close()
        self._targets.pop(target, None)

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            while idle:
                idle.pop()[0].close()
        self._idle.clear()
        self._tcp.close()

    # Connections ----------------------------------------------------------

    async def _checkout(self, target: str, max_idle: float) -> tuple[IOStream, bool]:
        idle = self._idle.get(target)
        if idle:
            now = time.monotonic()
            while idle:
                stream, since = idle.pop()
                stream.set_close_callback(None)
                # Bytes that arrived while idle (a stray 408, say) would be read
                # as the next response: such a connection is never reused.
                unread = getattr(stream, "_read_buffer_size", 0)
                if not stream.closed() and not unread and now - since < max_idle:
                    return stream, True
                stream.close()
        return await self._connect(target), False

    def _checkin(self, target: str, stream: IOStream) -> None:
        idle = self._idle.setdefault(target, deque())
        if len(idle) >= self.max_idle_per_target or stream.closed():
            stream.close()
            return
        entry = (stream, time.monotonic())
        idle.append(entry)

        # A close callback makes the stream watch for the server hanging up,
        # so that a dead connection leaves the pool before anyone takes it.
        def on_close() -> None:
            with contextlib.suppress(ValueError):
                idle.remove(entry)

        stream.set_close_callback(on_close)

    def _target(self, target: str) -> _Target:
        known = self._targets.get(target)
        if known is not None:
            return known
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname:
            raise UpstreamUnavailable(f"the route's target {target!r} is not an http:// URL")
        host = parts.hostname
        try:
            ipaddress.ip_address(host)
            is_ip = True
        except ValueError:
            is_ip = False
        known = _Target(host, parts.port or 80, is_ip)
        self._targets[target] = known
        return known

    async def _connect(self, target: str) -> IOStream:
        where = self._target(target)
        try:
            if not where.is_ip:
                # A name (a swarm service): resolving needs the resolver's thread pool.
                stream = await self._tcp.connect(
                    where.host, where.port, timeout=self.connect_timeout
                )
            else:
                stream = await self._connect_ip(where)
        except TimeoutError:
            raise UpstreamTimeout(
                f"the server did not accept a connection within {self.connect_timeout:g} s"
            ) from None
        except (OSError, StreamClosedError) as exc:
            raise UpstreamUnavailable(f"the server is not answering ({_reason(exc)})") from None
        stream.set_nodelay(True)
        return stream

    async def _connect_ip(self, where: _Target) -> IOStream:
        # Straight to the socket: an IP needs no resolver round trip.
        family = socket.AF_INET6 if ":" in where.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        stream = IOStream(sock, max_buffer_size=4 * self.chunk_size + self.max_header_size)
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            stream.close()

        loop = IOLoop.current()
        handle = loop.call_later(self.connect_timeout, expire)
        try:
            await stream.connect((where.host, where.port))
        except StreamClosedError as exc:
            if expired:
                raise TimeoutError from None
            raise exc.real_error or exc from None
        finally:
            loop.remove_timeout(handle)
        return stream


def _reason(exc: BaseException) -> str:
    if isinstance(exc, StreamClosedError) and exc.real_error is not None:
        exc = exc.real_error
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


_NONE, _FIXED, _CHUNKED, _UNTIL_CLOSE = range(4)


class UpstreamExchange:
    """One request and its response over one pooled connection."""

    def __init__(
        self,
        pool: UpstreamPool,
        target: str,
        stream: IOStream,
        head: bytes,
        body: RequestBody,
        *,
        reused: bool,
    ) -> None:
        self._pool = pool
        self._target = target
        self._stream = stream
        self._head = head
        self._chunked_request = body == "chunked"
        self._reused = reused
        self._body_sent = False
        self._request_done = body == 0
        self._method_head = head.startswith(b"HEAD ")
        self._mode = _NONE
        self._left = 0
        self._response_done = False
        self._keep_alive = False
        self._closed = False
        self._timed_out = False
        loop = IOLoop.current()
        self._loop = loop
        self._last = loop.time()
        self._timer: object | None = loop.call_later(pool.idle_timeout, self._watch)

    # Time limits ----------------------------------------------------------

    def touch(self) -> None:
        """Note progress made elsewhere (the client read or sent something)."""
        self._last = self._loop.time()

    def _watch(self) -> None:
        idle = self._pool.idle_timeout
        elapsed = self._loop.time() - self._last
        if elapsed < idle:
            self._timer = self._loop.call_later(idle - elapsed, self._watch)
            return
        self._timer = None
        self._timed_out = True
        self._stream.close()

    def _stop_watch(self) -> None:
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
            self._timer = None

    def _failure(self, exc: BaseException, doing: str) -> UpstreamError:
        self.abort()
        if self._timed_out:
            return UpstreamTimeout(
                f"the server made no progress for {self._pool.idle_timeout:g} s ({doing})"
            )
        if isinstance(exc, UnsatisfiableReadError):
            return UpstreamProtocolError(f"the server sent an over-long line ({doing})")
        if isinstance(exc, UpstreamError):
            return exc
        return UpstreamProtocolError(f"the server closed the connection ({doing})")

    # Request --------------------------------------------------------------

    async def _send_head(self) -> None:
        try:
            await self._stream.write(self._head)
        except StreamClosedError as exc:
            if self._may_retry(exc):
                await self._retry()
                return
            raise self._failure(exc, "sending the request") from None

    async def send(self, chunk: bytes) -> None:
        """Send a piece of the request body."""
        if not chunk:
            return
        self._body_sent = True
        data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked_request else chunk
        try:
            await self._stream.write(data)
        except StreamClosedError as exc:
            raise self._failure(exc, "sending the request body") from None
        self._last = self._loop.time()

    async def end(self) -> None:
        """Finish the request body (a no-op for a request without one)."""
        if self._request_done:
            return
        self._request_done = True
        if self._chunked_request:
            try:
                await self._stream.write(b"0\r\n\r\n")
            except StreamClosedError as exc:
                raise self._failure(exc, "sending the request body") from None

    # Response -------------------------------------------------------------

    async def head(self) -> UpstreamHead:
        """Wait for the response's status line and headers (1xx responses are skipped)."""
        for _ in range(_MAX_1XX + 1):
            try:
                data = await self._stream.read_until(
                    b"\r\n\r\n", max_bytes=self._pool.max_header_size
                )
            except (StreamClosedError, UnsatisfiableReadError) as exc:
                if self._may_retry(exc):
                    await self._retry()
                    continue
                raise self._failure(exc, "waiting for the response") from None
            self._reused = False  # a response came: from now on, failures are real
            self._last = self._loop.time()
            head = self._parse_head(data)
            if head.code >= 200:
                return head
            if head.code == 101:
                raise self._failure(UpstreamProtocolError("unexpected 101"), "upgrade refused")
        raise self._failure(UpstreamProtocolError("too many 1xx responses"), "reading the head")

    def _may_retry(self, exc: BaseException) -> bool:
        # A pooled connection the server closed just as we sent: safe to send
        # again only when nothing of a body went out and nothing came back.
        return (
            self._reused
            and not self._body_sent
            and not self._chunked_request
            and not self._timed_out
            and isinstance(exc, StreamClosedError)
        )

    async def _retry(self) -> None:
        self._reused = False
        self._stream.close()
        self._stream = await self._pool._connect(self._target)
        await self._send_head()

    def _parse_head(self, data: bytes) -> UpstreamHead:
        text = data.decode("latin1")
        first, _, rest = text.partition("\r\n")
        try:
            start = httputil.parse_response_start_line(first)
            headers = httputil.HTTPHeaders.parse(rest)
        except httputil.HTTPInputError as exc:
            error = UpstreamProtocolError(f"bad response head: {exc}")
            raise self._failure(error, "parsing") from None
        code = start.code
        if code < 200:
            return UpstreamHead(code, start.reason, headers)
        length = headers.get("Content-Length")
        encoding = headers.get("Transfer-Encoding")
        if self._method_head or code in (204, 304):
            self._mode = _NONE
        elif encoding is not None:
            if length is not None or encoding.strip().lower() != "chunked":
                raise self._failure(UpstreamProtocolError("ambiguous response framing"), "parsing")
            self._mode = _CHUNKED
        elif length is not None:
            values = {v.strip() for v in length.split(",")}
            value = values.pop()
            if values or not _DIGITS.fullmatch(value):
                raise self._failure(UpstreamProtocolError("bad Content-Length"), "parsing")
            self._mode = _FIXED
            self._left = int(value)
        else:
            self._mode = _UNTIL_CLOSE
        connection = headers.get("Connection", "").lower()
        self._keep_alive = (
            start.version == "HTTP/1.1" and "close" not in connection and self._mode != _UNTIL_CLOSE
        )
        self._response_done = self._mode == _NONE or (self._mode == _FIXED and self._left == 0)
        return UpstreamHead(code, start.reason, headers)

    def done(self) -> bool:
        """Whether the whole response body has been read."""
        return self._response_done

    async def read(self) -> bytes:
        """The next piece of the response body; ``b""`` once it is all read."""
        if self._response_done:
            return b""
        try:
            if self._mode == _FIXED:
                data = await self._stream.read_bytes(
                    min(self._left, self._pool.chunk_size), partial=True
                )
                self._left -= len(data)
                self._response_done = self._left == 0
            elif self._mode == _CHUNKED:
                data = await self._read_chunked()
            else:
                try:
                    data = await self._stream.read_bytes(self._pool.chunk_size, partial=True)
                except StreamClosedError:
                    if self._timed_out:
                        raise
                    self._response_done = True
                    data = b""
        except (StreamClosedError, UnsatisfiableReadError, UpstreamError) as exc:
            raise self._failure(exc, "reading the response body") from None
        self._last = self._loop.time()
        return data

    async def _read_chunked(self) -> bytes:
        stream = self._stream
        if self._left == 0:
            line = await stream.read_until(b"\r\n", max_bytes=1024)
            size = line[:-2].split(b";", 1)[0].strip().decode("latin1")
            if not _HEX.fullmatch(size):
                raise UpstreamProtocolError("bad chunk size")
            self._left = int(size, 16)
            if self._left == 0:
                await self._skip_trailers()
                self._response_done = True
                return b""
        data = await stream.read_bytes(min(self._left, self._pool.chunk_size), partial=True)
        self._left -= len(data)
        if self._left == 0 and await stream.read_bytes(2) != b"\r\n":
            raise UpstreamProtocolError("bad chunk end")
        return data

    async def _skip_trailers(self) -> None:
        for _ in range(_MAX_TRAILERS):
            if await self._stream.read_until(b"\r\n", max_bytes=8192) == b"\r\n":
                return
        raise UpstreamProtocolError("too many trailers")

    # The end --------------------------------------------------------------

    def release(self) -> None:
        """Return the connection to the pool if the exchange completed cleanly, else close it."""
        if self._closed:
            return
        self._closed = True
        self._stop_watch()
        if self._keep_alive and self._response_done and self._request_done:
            self._pool._checkin(self._target, self._stream)
        else:
            self._stream.close()

    def abort(self) -> None:
        """Close the connection now (the client went away, or the exchange failed)."""
        if self._closed:
            return
        self._closed = True
        self._stop_watch()
        self._stream.close()
