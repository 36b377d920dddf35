"""Which headers cross the proxy, in each direction, and how a request body is framed.

    forwarded = Forwarded(host="hub.example.org", remote_ip="10.1.2.3", proto="https",
                          prefix="/user/alice", secret="s",
                          hub_cookies=frozenset({"labdock-session", "_xsrf"}))
    upstream_headers(request.headers, forwarded)   # Host, ..., Authorization: token s
    response_headers(upstream.headers, {"labdock-session"})   # what the client may see
    request_framing(request.headers)               # 0, 1234, "chunked", or None (refuse)

Pure functions over ``tornado.httputil.HTTPHeaders``, so that both the request
handler and a leaner front end can share them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from tornado.httputil import HTTPHeaders

from hub.proxy.upstream import RequestBody
from hub.proxy.wire import line_pattern

# Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, never the next.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Also not forwarded as the client sent them: the proxy sets its own.
_REPLACED = frozenset(
    {
        "host",
        "authorization",
        "cookie",
        "content-length",
        "expect",  # the hub itself answers 100-continue
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-real-ip",
    }
)
# The hub's own credentials, which a server shared with a visitor must never see:
# the XSRF token that the hub's scripts echo from its ``_xsrf`` cookie (the cookie
# itself is taken out of ``Cookie``). ``X-CSRFToken`` stays: Airflow's UI sends its own.
_HUB_ONLY = frozenset({"x-xsrftoken"})
_NOT_FORWARDED = HOP_BY_HOP | _REPLACED | _HUB_ONLY
# A WebSocket is two sockets, each with its own handshake.
_NOT_FORWARDED_WS = _NOT_FORWARDED | {
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "sec-websocket-accept",
}


@dataclass(frozen=True)
class Forwarded:
    """What the proxy tells the server about the request, in place of the client's claims."""

    host: str
    remote_ip: str
    proto: str
    prefix: str
    secret: str
    hub_cookies: frozenset[str]


def connection_tokens(headers: HTTPHeaders) -> frozenset[str]:
    """The lower-cased options of ``Connection``; headers named there are hop-by-hop too."""
    value = headers.get("Connection")
    if not value:
        return frozenset()
    return frozenset(token.strip().lower() for token in value.split(","))


def filter_cookies(values: list[str], drop: frozenset[str]) -> str:
    """The ``Cookie`` header without the cookies named in ``drop``."""
    kept = []
    for value in values:
        for part in value.split(";"):
            part = part.strip()
            if part and part.split("=", 1)[0].strip() not in drop:
                kept.append(part)
    return "; ".join(kept)


def upstream_headers(
    headers: HTTPHeaders, forwarded: Forwarded, *, websocket: bool = False
) -> list[tuple[str, str]]:
    """The request headers to send upstream.

    The server's secret is the only credential that goes: the client's
    ``Authorization`` is replaced, and the hub's cookies are taken out of
    ``Cookie``. ``Content-Length`` and ``Transfer-Encoding`` are the caller's
    to add, from ``request_framing``.
    """
    return upstream_header_items(list(headers.get_all()), forwarded, websocket=websocket)


def _tokens(items: list[tuple[str, str]], name: str) -> frozenset[str]:
    found = [value for key, value in items if key.lower() == name]
    return frozenset(t.strip().lower() for v in found for t in v.split(",") if t.strip())


def upstream_header_items(
    items: list[tuple[str, str]], forwarded: Forwarded, *, websocket: bool = False
) -> list[tuple[str, str]]:
    """``upstream_headers`` over headers as a list of (name, value), in the order sent."""
    lines = upstream_header_lines(items, forwarded, websocket=websocket)
    return [(name, value) for name, _, value in (line.partition(": ") for line in lines)]


def upstream_header_lines(
    items: list[tuple[str, str]],
    forwarded: Forwarded,
    *,
    websocket: bool = False,
    connection: str | None = "",
) -> list[str]:
    """The same headers as ``name: value`` lines, ready to be joined into a head.

    ``connection`` is the request's ``Connection`` value when the caller
    already has it (``None``: absent); by default it is looked up in ``items``.
    """
    drop = _NOT_FORWARDED_WS if websocket else _NOT_FORWARDED
    if connection == "":
        tokens = _tokens(items, "connection")
    elif connection is None:
        tokens = frozenset()
    else:
        tokens = frozenset(t.strip().lower() for t in connection.split(","))
    if tokens:
        drop = drop | tokens
    out = [f"Host: {forwarded.host}"]
    cookies = []
    for name, value in items:
        low = name.lower()
        if low == "cookie":
            cookies.append(value)
        elif low not in drop:
            out.append(f"{name}: {value}")
    out.append(f"Authorization: token {forwarded.secret}")
    if cookies:
        kept = filter_cookies(cookies, forwarded.hub_cookies)
        if kept:
            out.append(f"Cookie: {kept}")
    out.append(f"X-Forwarded-For: {forwarded.remote_ip}")
    out.append(f"X-Forwarded-Proto: {forwarded.proto}")
    out.append(f"X-Forwarded-Host: {forwarded.host}")
    out.append(f"X-Forwarded-Prefix: {forwarded.prefix}")
    return out


def response_headers(
    headers: HTTPHeaders, hub_cookies: Collection[str]
) -> Iterator[tuple[str, str]]:
    """The response headers the client may see: no hop-by-hop ones, and no
    ``Set-Cookie`` for any of the hub's own cookies (its session, XSRF token, a
    user host's cookie), which would let a server log its visitor in as someone
    else or plant a token.
    """
    return response_header_items(list(headers.get_all()), hub_cookies)


def response_header_items(
    items: list[tuple[str, str]],
    hub_cookies: Collection[str],
    *,
    keep: frozenset[str] = frozenset(),
) -> Iterator[tuple[str, str]]:
    """``response_headers`` over a list of (name, value); ``keep`` names hop-by-hop
    headers to pass anyway (``upgrade`` and ``connection`` on a 101).
    """
    for line in response_header_lines(items, hub_cookies, keep=keep):
        name, _, value = line.partition(": ")
        yield name, value


def response_header_lines(
    items: list[tuple[str, str]],
    hub_cookies: Collection[str],
    *,
    keep: frozenset[str] = frozenset(),
    connection: str | None = "",
) -> list[str]:
    """The same headers as ``name: value`` lines; ``connection`` as in ``upstream_header_lines``."""
    if connection == "":
        tokens = _tokens(items, "connection")
    elif connection is None:
        tokens = frozenset()
    else:
        tokens = frozenset(t.strip().lower() for t in connection.split(","))
    drop = (HOP_BY_HOP | tokens) - keep if tokens or keep else HOP_BY_HOP
    out = []
    for name, value in items:
        low = name.lower()
        if low in drop:
            continue
        if low == "set-cookie" and value.split("=", 1)[0].strip() in hub_cookies:
            continue
        out.append(f"{name}: {value}")
    return out


def request_framing(headers: HTTPHeaders) -> RequestBody | None:
    """How the client frames its body, or ``None`` if the framing is ambiguous.

    Ambiguous framing (two lengths, a length and chunked, an encoding other
    than chunked) is how requests are smuggled past a proxy; such a request is
    refused, never passed on.
    """
    encoding = headers.get("Transfer-Encoding")
    length = headers.get("Content-Length")
    if encoding is not None:
        if length is not None or encoding.strip().lower() != "chunked":
            return None
        return "chunked"
    if length is None:
        return 0
    values = {v.strip() for v in length.split(",")}
    value = values.pop()
    if values or not value.isascii() or not value.isdigit():
        return None
    return int(value)


# The same rules over raw header lines, for the fast path (``hub.proxy.fast``):
# one substitution drops every header that must not pass, whatever its case.
_REQUEST_DROP = line_pattern(_NOT_FORWARDED)
_RESPONSE_DROP = line_pattern(HOP_BY_HOP)


def _connection_named(connection: str | None) -> frozenset[str]:
    """Headers that ``Connection`` names beyond the usual hop-by-hop ones."""
    if not connection:
        return frozenset()
    tokens = frozenset(t.strip().lower() for t in connection.split(",") if t.strip())
    return tokens - HOP_BY_HOP - {"close"}


def upstream_block(
    block: bytes, *, connection: str | None, cookie: str | None, hub_cookies: frozenset[str]
) -> bytes:
    """The client's header lines (``block``, each ending in CRLF) that go upstream.

    The same selection as ``upstream_headers``, less the headers the proxy
    adds itself (``Host``, ``Authorization``, ``X-Forwarded-*``: see
    ``forwarded_block``): hop-by-hop headers and those ``Connection`` names
    are dropped, and ``Cookie`` comes back without the hub's cookies.
    """
    kept = _REQUEST_DROP.sub(b"", block)
    named = _connection_named(connection)
    if named:
        kept = line_pattern(named).sub(b"", kept)
    if cookie:
        passed = filter_cookies([cookie], hub_cookies)
        if passed:
            kept += b"Cookie: " + passed.encode("latin1") + b"\r\n"
    return kept


def forwarded_block(forwarded: Forwarded) -> bytes:
    """The credential and ``X-Forwarded-*`` lines the proxy sends upstream."""
    return (
        f"Authorization: token {forwarded.secret}\r\n"
        f"X-Forwarded-For: {forwarded.remote_ip}\r\n"
        f"X-Forwarded-Proto: {forwarded.proto}\r\n"
        f"X-Forwarded-Host: {forwarded.host}\r\n"
        f"X-Forwarded-Prefix: {forwarded.prefix}\r\n"
    ).encode("latin1")


def hub_cookie_pattern(hub_cookies: Collection[str]) -> re.Pattern[bytes]:
    """``Set-Cookie`` lines that would set one of the hub's own cookies."""
    names = b"|".join(re.escape(n.encode("latin1")) for n in sorted(hub_cookies))
    return re.compile(rb"^set-cookie:[ \t]*(?:" + names + rb")[ \t]*=[^\r\n]*\r\n", re.I | re.M)


def response_block(block: bytes, *, connection: str | None, session: re.Pattern[bytes]) -> bytes:
    """The server's header lines the client may see, as ``response_headers`` decides."""
    kept = _RESPONSE_DROP.sub(b"", block)
    named = _connection_named(connection)
    if named:
        kept = line_pattern(named).sub(b"", kept)
    return session.sub(b"", kept)
