"""Which headers cross the proxy, in each direction, and how a request body is framed.

    forwarded = Forwarded(host="hub.example.org", remote_ip="10.1.2.3", proto="https",
                          prefix="/user/alice", secret="s",
                          hub_cookies=frozenset({"labdock-session", "_xsrf"}))
    upstream_headers(request.headers, forwarded)   # Host, ..., Authorization: token s
    response_headers(upstream.headers, "labdock-session")   # what the client may see
    request_framing(request.headers)               # 0, 1234, "chunked", or None (refuse)

Pure functions over ``tornado.httputil.HTTPHeaders``, so that both the request
handler and a leaner front end can share them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tornado.httputil import HTTPHeaders

from hub.web.proxy_upstream import RequestBody

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
_NOT_FORWARDED = HOP_BY_HOP | _REPLACED
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
    drop = _NOT_FORWARDED_WS if websocket else _NOT_FORWARDED
    connection = connection_tokens(headers)
    out = [("Host", forwarded.host)]
    for name, value in headers.get_all():
        low = name.lower()
        if low not in drop and low not in connection:
            out.append((name, value))
    out.append(("Authorization", f"token {forwarded.secret}"))
    cookies = headers.get_list("Cookie")
    if cookies:
        kept = filter_cookies(cookies, forwarded.hub_cookies)
        if kept:
            out.append(("Cookie", kept))
    out.append(("X-Forwarded-For", forwarded.remote_ip))
    out.append(("X-Forwarded-Proto", forwarded.proto))
    out.append(("X-Forwarded-Host", forwarded.host))
    out.append(("X-Forwarded-Prefix", forwarded.prefix))
    return out


def response_headers(headers: HTTPHeaders, session_cookie: str) -> Iterator[tuple[str, str]]:
    """The response headers the client may see: no hop-by-hop ones, and no
    ``Set-Cookie`` for the hub's session, which would let a server log its
    visitor in as someone else.
    """
    connection = connection_tokens(headers)
    for name, value in headers.get_all():
        low = name.lower()
        if low in HOP_BY_HOP or low in connection:
            continue
        if low == "set-cookie" and value.split("=", 1)[0].strip() == session_cookie:
            continue
        yield name, value


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
