"""The fast path's pieces on their own: wire parsing, body framing, header rules, the grant cache.

The fast path as a whole runs every test of ``tests/test_proxy.py`` (its
"front" mode) against real containers; these pin down the edges.
"""

from __future__ import annotations

import asyncio

import pytest
from tornado.httputil import HTTPHeaders
from tornado.web import create_signed_value

from hub.domain.accounts import USER_SCOPES, TokenGrant, User
from hub.domain.activity import ActivityTracker
from hub.domain.routes import RouteTable
from hub.proxy.auth import ProxyAuth
from hub.proxy.fast import FrontProxy
from hub.proxy.headers import (
    Forwarded,
    forwarded_block,
    hub_cookie_pattern,
    response_block,
    response_headers,
    upstream_block,
    upstream_headers,
)
from hub.proxy.pool import ConnectionPool
from hub.proxy.relay import FrontConfig
from hub.proxy.wire import BodyScanner, WireError, parse_request, parse_response

# Wire ---------------------------------------------------------------------------------


def test_a_request_head_is_read_with_its_watched_headers() -> None:
    head = parse_request(
        b"POST /user/alice/x?y=1 HTTP/1.1\r\nHost: hub\r\nCookie: a=1\r\ncookie: b=2\r\n"
        b"X-Other:  spaced  \r\nContent-Length: 5"
    )
    assert head.first == ("POST", "/user/alice/x?y=1", "HTTP/1.1")
    assert head.header("host") == "hub"
    assert head.header("cookie") == "a=1; b=2"
    assert head.header("content-length") == "5"
    assert ("X-Other", "spaced") in head.headers


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: hub\r\n folded",  # obsolete line folding
        b"GET / HTTP/1.1\r\nHost : hub",  # space before the colon
        b"GET / HTTP/1.1\r\nHost: a\nX: b",  # a bare LF inside the head
        b"GET / HTTP/1.1\r\nX: a\rb",  # a bare CR
        b"GET / HTTP/1.1\r\nX: a\x00b",  # NUL in a value
        b"GET / HTTP/2.0\r\nHost: hub",
        b"GET  / HTTP/1.1\r\nHost: hub",
        b"G(T / HTTP/1.1\r\nHost: hub",
    ],
)
def test_heads_that_could_be_read_two_ways_are_refused(raw: bytes) -> None:
    with pytest.raises(WireError):
        parse_request(raw)


def test_a_response_head_is_read_and_a_bad_status_line_refused() -> None:
    head = parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0")
    assert head.first == ("HTTP/1.1", "404", "Not Found")
    with pytest.raises(WireError):
        parse_response(b"HTTP/1.1 20 OK\r\n")


CHUNKED = b"5\r\nhello\r\n10;ext=1\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n"


@pytest.mark.parametrize("cut", range(1, len(CHUNKED)))
def test_a_chunked_body_ends_at_the_same_byte_however_it_is_split(cut: int) -> None:
    stream = CHUNKED + b"GET /next HTTP/1.1\r\n"
    body = BodyScanner.chunked()
    first = body.feed(stream[:cut], 0)
    assert first == min(cut, len(CHUNKED))
    if not body.done:
        rest = stream[cut:]
        end = body.feed(rest, 0)
        assert cut + end == len(CHUNKED)
    assert body.done


@pytest.mark.parametrize(
    "bad", [b"x\r\n", b"5\nhello\r\n", b"5\r\nhelloXX", b"-5\r\n", b"1234567890abcdef0\r\n"]
)
def test_bad_chunk_framing_is_refused(bad: bytes) -> None:
    with pytest.raises(WireError):
        BodyScanner.chunked().feed(bad, 0)


def test_fixed_and_until_close_bodies() -> None:
    body = BodyScanner.fixed(3)
    assert body.feed(b"abcdef", 1) == 4 and body.done
    body = BodyScanner.until_close()
    assert body.feed(b"abc", 0) == 3 and not body.done
    assert body.closed() and body.done
    cut_short = BodyScanner.fixed(10)
    cut_short.feed(b"abc", 0)
    assert not cut_short.closed()


# Header rules: the fast path's byte-level rules agree with the handler's ------------------

REQUEST = (
    b"GET /user/alice/ HTTP/1.1\r\n"
    b"Host: hub.example\r\n"
    b"Authorization: token visitor-token\r\n"
    b"Cookie: labdock-session=abc; theme=dark; _xsrf=t\r\n"
    b"Connection: keep-alive, X-Secret-Hop\r\n"
    b"X-Secret-Hop: 1\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"TE: trailers\r\n"
    b"X-Forwarded-For: 6.6.6.6\r\n"
    b"x-real-ip: 6.6.6.6\r\n"
    b"Forwarded: for=6.6.6.6\r\n"
    b"Expect: 100-continue\r\n"
    b"Accept: text/html\r\n"
    b"X-App: kept"
)
FORWARDED = Forwarded(
    host="hub.example",
    remote_ip="10.0.0.1",
    proto="https",
    prefix="/user/alice",
    secret="server-secret",
    hub_cookies=frozenset({"labdock-session", "_xsrf"}),
)


def _pairs(block: bytes) -> list[tuple[str, str]]:
    lines = block.decode("latin1").split("\r\n")
    return [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines if line)]


def test_the_fast_paths_request_headers_are_the_handlers_request_headers() -> None:
    head = parse_request(REQUEST)
    fast = b"Host: hub.example\r\n" + upstream_block(
        head.block,
        connection=head.header("connection"),
        cookie=head.header("cookie"),
        hub_cookies=FORWARDED.hub_cookies,
    )
    fast += forwarded_block(FORWARDED)
    headers = HTTPHeaders.parse(REQUEST.split(b"\r\n", 1)[1].decode() + "\r\n")
    assert sorted(_pairs(fast)) == sorted(upstream_headers(headers, FORWARDED))
    assert ("Cookie", "theme=dark") in _pairs(fast)
    assert ("Authorization", "token server-secret") in _pairs(fast)


RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Connection: keep-alive, X-Hop\r\n"
    b"X-Hop: gone\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Set-Cookie: labdock-session=stolen; Path=/\r\n"
    b"SET-COOKIE: app=1\r\n"
    b"Upgrade: h2c\r\n"
    b"X-App: kept"
)


def test_the_fast_paths_response_headers_are_the_handlers_response_headers() -> None:
    head = parse_response(RESPONSE)
    fast = response_block(
        head.block,
        connection=head.header("connection"),
        session=hub_cookie_pattern({"labdock-session"}),
    )
    headers = HTTPHeaders.parse(RESPONSE.split(b"\r\n", 1)[1].decode() + "\r\n")
    handler = response_headers(headers, {"labdock-session"})  # names normalized by tornado
    assert sorted((n.lower(), v) for n, v in _pairs(fast)) == sorted(
        (n.lower(), v) for n, v in handler
    )
    assert _pairs(fast) == [
        ("Content-Type", "text/plain"),
        ("SET-COOKIE", "app=1"),
        ("X-App", "kept"),
    ]


# The grant cache ----------------------------------------------------------------------


class FakeAccounts:
    """Counts look-ups; answers from dicts the test changes."""

    def __init__(self) -> None:
        self.tokens: dict[str, TokenGrant] = {}
        self.sessions: dict[str, User] = {}
        self.calls = 0

    async def token_grant(self, token: str) -> TokenGrant | None:
        self.calls += 1
        return self.tokens.get(token)

    async def session_user(self, session_id: str) -> User | None:
        self.calls += 1
        return self.sessions.get(session_id)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


SECRET = b"s" * 40
ALICE = User(id=7, name="alice")


def make_auth(accounts: FakeAccounts, clock: Clock) -> ProxyAuth:
    return ProxyAuth(
        accounts,  # type: ignore[arg-type]
        cookie_secret=SECRET,
        session_cookie="labdock-session",
        max_age_days=1,
        ttl=2.0,
        clock=clock,
    )


async def test_a_revoked_token_passes_for_at_most_the_ttl() -> None:
    accounts, clock = FakeAccounts(), Clock()
    auth = make_auth(accounts, clock)
    accounts.tokens["ldk_t"] = TokenGrant(ALICE, frozenset({"access:servers"}))
    credential = auth.credential("token ldk_t", None)
    assert credential == ("token", "ldk_t")
    assert auth.cached(credential) is None
    grant = await auth.resolve(credential)
    assert grant is not None and grant.user == ALICE
    del accounts.tokens["ldk_t"]  # revoked
    clock.now += 1.9
    assert auth.cached(credential) is not None  # within the bound: still believed
    clock.now += 0.2
    assert auth.cached(credential) is None
    assert await auth.resolve(credential) is None
    assert auth.cached(credential) is None  # refusals are never cached


async def test_a_session_cookie_must_be_signed_and_live() -> None:
    accounts, clock = FakeAccounts(), Clock()
    auth = make_auth(accounts, clock)
    accounts.sessions["sid"] = ALICE
    signed = create_signed_value(SECRET, "labdock-session", "sid").decode()
    credential = auth.credential(None, f"theme=dark; labdock-session={signed}")
    assert credential == ("session", signed)
    grant = await auth.resolve(credential)
    assert grant is not None and grant.scopes == USER_SCOPES
    forged = create_signed_value(b"x" * 40, "labdock-session", "sid").decode()
    assert await auth.resolve(("session", forged)) is None
    assert accounts.calls == 1  # a bad signature never reaches the DB


def test_a_token_wins_over_a_cookie_and_nothing_is_no_credential() -> None:
    auth = make_auth(FakeAccounts(), Clock())
    assert auth.credential("Bearer ldk_x", "labdock-session=abc") == ("token", "ldk_x")
    assert auth.credential("Basic abc", None) is None
    assert auth.credential(None, "theme=dark") is None


async def test_clear_forgets_every_grant() -> None:
    accounts, clock = FakeAccounts(), Clock()
    auth = make_auth(accounts, clock)
    accounts.tokens["ldk_t"] = TokenGrant(ALICE, frozenset())
    await auth.resolve(("token", "ldk_t"))
    assert len(auth) == 1
    auth.clear()
    assert auth.cached(("token", "ldk_t")) is None



# The front on its own -------------------------------------------------------------------


async def test_a_client_that_sends_nothing_is_let_go_after_the_idle_timeout() -> None:
    config = FrontConfig(
        routes=RouteTable(),
        activity=ActivityTracker(),
        auth=make_auth(FakeAccounts(), Clock()),
        hub="unix:/nonexistent/hub.sock",
        refuse=lambda status, message, html, user: b"",
        public_origin="",
        public_scheme="",
        hub_cookies=frozenset({"labdock-session", "_xsrf"}),
        client_idle_timeout=0.3,
    )
    front = FrontProxy(config, ConnectionPool())
    port = await front.listen("127.0.0.1", 0)
    try:
        silent = await asyncio.open_connection("127.0.0.1", port)
        partial = await asyncio.open_connection("127.0.0.1", port)
        partial[1].write(b"GET /user/alice/ HTTP/1.1\r\nHost: hub\r\n")
        for reader, _ in (silent, partial):
            assert await asyncio.wait_for(reader.read(), 2) == b""
        # A hub that cannot be reached gives 502, never a hang.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /hub/home HTTP/1.1\r\nHost: hub\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 2)
        assert answer.startswith(b"HTTP/1.1 502 ")
        for _, w in (silent, partial, (reader, writer)):
            w.close()
    finally:
        await front.close()
