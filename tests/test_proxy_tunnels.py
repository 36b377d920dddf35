"""The tunnel registry, the Origin rule and the new settings on their own, with fakes.

The same rules over real sockets, on both proxy paths, are in
``tests/test_proxy_security.py``.
"""

from __future__ import annotations

import asyncio

import pytest

from hub.config import load_settings
from hub.domain.access import origin_allowed
from hub.domain.accounts import TokenGrant, User
from hub.domain.errors import ConfigError
from hub.domain.routes import Route, RouteTable
from hub.proxy.headers import Forwarded, forwarded_block, upstream_block
from hub.proxy.tunnels import Tunnels
from hub.proxy.wire import parse_request

BOB = User(id=2, name="bob")
ROOT = User(id=9, name="root", is_admin=True)


class FakeAccounts:
    """Answers from dicts the test changes, as the DB would after a revocation."""

    def __init__(self) -> None:
        self.tokens: dict[str, TokenGrant] = {}
        self.sessions: dict[str, User] = {}
        self.asked = 0

    async def token_grant(self, token: str) -> TokenGrant | None:
        self.asked += 1
        return self.tokens.get(token)

    async def session_user(self, session_id: str) -> User | None:
        self.asked += 1
        return self.sessions.get(session_id)


def bobs_route(target: str = "http://10.0.0.2:8888") -> Route:
    return Route(user="bob", server="", user_id=2, server_id=5, target=target, secret="s")


class Closed:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def registry(admin_access: bool = False) -> tuple[Tunnels, FakeAccounts, RouteTable]:
    accounts, routes = FakeAccounts(), RouteTable(admin_access=admin_access)
    routes.add(bobs_route())
    tunnels = Tunnels(accounts, routes, interval=0.05)  # type: ignore[arg-type]
    return tunnels, accounts, routes


async def test_a_sweep_closes_only_the_tunnels_whose_grant_is_gone() -> None:
    tunnels, accounts, routes = registry()
    accounts.sessions.update({"s1": BOB, "s2": BOB})
    accounts.tokens["ldk_t"] = TokenGrant(BOB, frozenset({"access:servers"}))
    route = routes.get(5)
    assert route is not None
    first, second, by_token = Closed(), Closed(), Closed()
    tunnels.open(("session", "s1"), user_id=2, route=route, close=first)
    tunnels.open(("session", "s2"), user_id=2, route=route, close=second)
    tunnels.open(("token", "ldk_t"), user_id=2, route=route, close=by_token)
    await tunnels.sweep()
    assert (first.count, second.count, by_token.count) == (0, 0, 0)
    del accounts.sessions["s1"]  # logged out
    accounts.tokens["ldk_t"] = TokenGrant(BOB, frozenset({"read:servers"}))  # narrowed
    await tunnels.sweep()
    assert (first.count, second.count, by_token.count) == (1, 0, 1)
    assert len(tunnels) == 1
    await tunnels.close()
    assert second.count == 1 and len(tunnels) == 0


async def test_the_sweep_runs_only_while_something_is_open() -> None:
    tunnels, accounts, routes = registry()
    accounts.sessions["s1"] = BOB
    route = routes.get(5)
    assert route is not None
    tunnel = tunnels.open(("session", "s1"), user_id=2, route=route, close=Closed())
    await asyncio.sleep(0.2)
    assert accounts.asked >= 2
    tunnels.done(tunnel)
    await asyncio.sleep(0.1)
    asked = accounts.asked
    await asyncio.sleep(0.2)
    assert accounts.asked == asked  # nothing open: nothing asked
    closed = Closed()
    tunnels.open(("session", "s1"), user_id=2, route=route, close=closed)
    del accounts.sessions["s1"]
    await asyncio.sleep(0.2)
    assert closed.count == 1  # started again with the next tunnel
    await tunnels.close()


async def test_a_removed_or_moved_route_closes_its_tunnels_at_once_a_re_added_one_does_not() -> (
    None
):
    tunnels, accounts, routes = registry()
    accounts.sessions["s1"] = BOB
    route = routes.get(5)
    assert route is not None
    kept, moved = Closed(), Closed()
    tunnels.open(("session", "s1"), user_id=2, route=route, close=kept)
    routes.add(bobs_route())  # re-added as it was, a new object: the same server
    await tunnels.sweep()
    assert kept.count == 0
    tunnels.open(("session", "s1"), user_id=2, route=routes.get(5) or route, close=moved)
    routes.add(bobs_route("http://10.0.0.3:8888"))  # another container now
    assert kept.count == 1 and moved.count == 1
    await tunnels.close()


async def test_revoke_user_and_subject_close_at_once_and_tell_the_grant_cache() -> None:
    accounts, routes = FakeAccounts(), RouteTable()
    routes.add(bobs_route())
    told: list[int] = []
    tunnels = Tunnels(accounts, routes, on_revoke=told.append)  # type: ignore[arg-type]
    route = routes.get(5)
    assert route is not None
    a, b, c = Closed(), Closed(), Closed()
    tunnels.open(("session", "s1"), user_id=2, route=route, close=a)
    tunnels.open(("token", "ldk_x"), user_id=2, route=route, close=b)
    tunnels.open(("session", "s9"), user_id=7, route=route, close=c)
    assert tunnels.revoke_session("s1") == 1 and (a.count, b.count) == (1, 0)
    assert tunnels.revoke_token("ldk_other") == 0
    assert tunnels.revoke_user(2) == 1 and b.count == 1 and c.count == 0
    assert told == [2]
    await tunnels.close()


async def test_an_admins_tunnel_ends_when_admin_access_is_what_let_it_in() -> None:
    tunnels, accounts, routes = registry(admin_access=False)
    accounts.sessions["root"] = ROOT
    route = routes.get(5)
    assert route is not None
    closed = Closed()
    tunnels.open(("session", "root"), user_id=9, route=route, close=closed)
    await tunnels.sweep()
    assert closed.count == 1
    routes.admin_access = True
    allowed = Closed()
    tunnels.open(("session", "root"), user_id=9, route=route, close=allowed)
    await tunnels.sweep()
    assert allowed.count == 0
    accounts.sessions["root"] = User(id=9, name="root", is_admin=False)  # demoted
    await tunnels.sweep()
    assert allowed.count == 1
    await tunnels.close()


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),
        ("http://hub.test:8000", True),
        ("HTTP://Hub.Test:8000", True),
        ("https://hub.test:8000", False),  # same host and port, another scheme
        ("http://hub.test:8001", False),
        ("http://hub.test", False),
        ("http://evil.test:8000", False),
        ("null", False),
    ],
)
def test_an_origin_must_match_scheme_host_and_port(origin: str | None, allowed: bool) -> None:
    assert origin_allowed(origin, host="hub.test:8000", scheme="http", public_origin="") is allowed


def test_behind_tls_the_public_origin_decides_and_default_ports_are_the_same() -> None:
    public = "https://hub.example.org"
    check = {"host": "hub.example.org", "scheme": "https", "public_origin": public}
    assert origin_allowed("https://hub.example.org", **check)  # type: ignore[arg-type]
    assert origin_allowed("https://hub.example.org:443", **check)  # type: ignore[arg-type]
    assert not origin_allowed("http://hub.example.org", **check)  # type: ignore[arg-type]
    assert origin_allowed("http://hub:80", host="hub", scheme="http", public_origin="")


def test_the_hubs_xsrf_header_is_dropped_on_the_fast_path_too() -> None:
    head = parse_request(
        b"POST /user/bob/x HTTP/1.1\r\nHost: hub\r\nX-XSRFToken: hub-secret\r\n"
        b"x-xsrftoken: again\r\nX-CSRFToken: apps-own\r\nCookie: _xsrf=hub; a=1"
    )
    kept = upstream_block(
        head.block,
        connection=None,
        cookie=head.header("cookie"),
        hub_cookies=frozenset({"labdock-session", "_xsrf"}),
    )
    forwarded = Forwarded("hub", "1.2.3.4", "http", "/user/bob", "s", frozenset())
    sent = (kept + forwarded_block(forwarded)).lower()
    assert b"xsrf" not in sent
    assert b"x-csrftoken: apps-own" in sent and b"cookie: a=1" in sent


def test_the_new_hub_settings_are_read_and_checked() -> None:
    settings = load_settings(
        env={
            "LABDOCK_HUB_ADMIN_ACCESS": "true",
            "LABDOCK_HUB_REQUEST_HEAD_TIMEOUT": "10",
            "LABDOCK_HUB_MAX_CONNECTIONS_PER_CLIENT": "0",
        }
    )
    hub = settings.hub
    assert (hub.admin_access, hub.request_head_timeout, hub.max_connections_per_client) == (
        True,
        10.0,
        0,
    )
    assert not load_settings().hub.admin_access
    with pytest.raises(ConfigError, match=r"hub\.request_head_timeout"):
        load_settings(env={"LABDOCK_HUB_REQUEST_HEAD_TIMEOUT": "0"})
    with pytest.raises(ConfigError, match=r"hub\.max_connections_per_client"):
        load_settings(env={"LABDOCK_HUB_MAX_CONNECTIONS_PER_CLIENT": "-1"})
