"""Who may reach a user server: one table, asked of ``hub.domain.access.decide`` directly,
then end to end through every path of the proxy (the front and the tornado relay, in
path mode and on user hosts), which must give the very same answers.

An answer is ``(status, then)``: 200 for allowed, or the refusal's status, with
``then`` saying where a browser is sent instead ("login", "password") or "".
The end-to-end hubs are those of ``test_proxy_security`` (path mode: bob's server
runs, alice's is stopped) and ``test_user_domain`` (subdomain mode: alice's and
bob's servers run, each on its owner's host).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import tornado.httpclient
from tornado.websocket import websocket_connect

from hub.domain.access import ALLOW, NO_SERVER, NOTHING_HERE, Refuse, Site, Visit, decide
from hub.domain.accounts import DEFAULT_TOKEN_SCOPES, User, role_scopes
from hub.domain.routes import Route, RouteTable
from hub.proxy.user_hosts import UserHosts
from tests.test_proxy_security import (  # noqa: F401 - fixtures, used by name
    SecurityHub,
    Way,
    cookie,
    echoes,
    shared,
    upstream,
)
from tests.test_user_domain import (  # noqa: F401 - fixtures, used by name
    DOMAIN,
    Client,
    DomainHub,
    domain_hub,
)
from tests.test_web import Browser

Answer = tuple[int, str]
ALLOWED: Answer = (200, "")


@dataclass(frozen=True)
class Row:
    """One request: who asks (and how), what, and the answer every path must give.

    ``who``: a user's browser session (``bob``), their token (``bob:token``), a
    token with only ``read:servers`` (``bob:scopeless``), a revoked token
    (``bob:revoked``), a session ended in the DB (``bob:ended``), a session that
    must change its password (``newbie``), or ``nobody``. ``origin``: ``None``,
    ``"same"`` (the hub's own), ``"cross"`` (another site) or ``"https"`` (the
    hub's host and port with the other scheme).
    """

    name: str
    who: str
    expect: Answer
    path: str = "/user/bob/echo"
    method: str = "GET"
    origin: str | None = None
    upgrade: bool = False
    html: bool = False
    admin_access: bool = False
    shared_with_alice: bool = False

    @property
    def user(self) -> str:
        return self.who.split(":", 1)[0]

    @property
    def kind(self) -> str:
        return self.who.partition(":")[2] or "session"

    @property
    def by_token(self) -> bool:
        return self.kind in ("token", "scopeless", "revoked")


PATH_ROWS = [
    Row("owner's session", "bob", ALLOWED),
    Row("owner's token", "bob:token", ALLOWED),
    Row("owner's page", "bob", ALLOWED, html=True),
    Row("admin without admin access", "root", (404, "")),
    Row("admin's token without admin access", "root:token", (404, "")),
    Row("admin with admin access", "root", ALLOWED, admin_access=True),
    Row("admin's token with admin access", "root:token", ALLOWED, admin_access=True),
    Row("another user", "carol", (404, "")),
    Row("another user's stopped server", "carol", (404, ""), path="/user/alice/echo"),
    Row("a server of nobody", "carol", (404, ""), path="/user/nobody/echo"),
    Row("the owner's own stopped server", "alice", (503, ""), path="/user/alice/echo"),
    Row("a user it is shared with", "alice", ALLOWED, shared_with_alice=True),
    Row("a user it is no longer shared with", "alice", (404, "")),
    Row("nobody asking for a page", "nobody", (401, "login"), html=True),
    Row("nobody calling the API", "nobody", (401, "")),
    Row("a revoked token", "bob:revoked", (401, "")),
    Row("an ended session, a page", "bob:ended", (401, "login"), html=True),
    Row("an ended session, the API", "bob:ended", (401, "")),
    Row("a token without access:servers", "bob:scopeless", (403, "")),
    Row("a session that must change its password, a page", "newbie", (403, "password"), html=True),
    Row("a session that must change its password, the API", "newbie", (403, "")),
    Row("a same-site WebSocket", "bob", ALLOWED, path="/user/bob/ws", origin="same", upgrade=True),
    Row(
        "a cross-site WebSocket",
        "bob",
        (403, ""),
        path="/user/bob/ws",
        origin="cross",
        upgrade=True,
    ),
    Row(
        "a cross-site WebSocket with a token",
        "bob:token",
        (403, ""),
        path="/user/bob/ws",
        origin="cross",
        upgrade=True,
    ),
    Row("a same-site cookie write", "bob", ALLOWED, method="POST", origin="same"),
    Row("a cross-site cookie write", "bob", (403, ""), method="POST", origin="cross"),
    Row("an https Origin on the http hub", "bob", (403, ""), method="POST", origin="https"),
    Row("a cross-site write with a token", "bob:token", ALLOWED, method="POST", origin="cross"),
    Row(
        "another user's WebSocket",
        "carol",
        (404, ""),
        path="/user/bob/ws",
        origin="same",
        upgrade=True,
    ),
]

# Subdomain mode: requests on ``host``'s host (alice's or bob's), both servers running.
HOST_ROWS = [
    (Row("owner on her own host", "alice", ALLOWED, path="/user/alice/echo"), "alice"),
    (
        Row("another user's path on one's own host", "alice", (404, ""), path="/user/bob/echo"),
        "alice",
    ),
    (
        Row("one's own path on another user's host", "alice", (404, ""), path="/user/alice/echo"),
        "bob",
    ),
    (
        Row(
            "nobody on a user's host", "nobody", (401, "login"), path="/user/alice/echo", html=True
        ),
        "alice",
    ),
    (
        Row(
            "a cross-site WebSocket on a user's host",
            "alice",
            (403, ""),
            path="/user/alice/ws",
            origin="cross",
            upgrade=True,
        ),
        "alice",
    ),
    (
        Row(
            "the hub's Origin on a user's host",
            "alice",
            (403, ""),
            path="/user/alice/echo",
            method="POST",
            origin="same",
        ),
        "alice",
    ),
    (
        Row(
            "the host's own Origin",
            "alice",
            ALLOWED,
            path="/user/alice/echo",
            method="POST",
            origin="host",
        ),
        "alice",
    ),
]


# (a) The function itself ------------------------------------------------------------------

IDS = {"alice": 1, "bob": 2, "carol": 3, "root": 4, "newbie": 5}
HUB = "hub.test:8000"


def user_of(row: Row) -> User | None:
    if row.who == "nobody" or row.kind in ("revoked", "ended"):
        return None
    return User(
        id=IDS[row.user],
        name=row.user,
        is_admin=row.user == "root",
        must_change_password=row.user == "newbie",
    )


def scopes_of(row: Row, user: User | None) -> frozenset[str]:
    if user is None:
        return frozenset()
    if row.kind == "scopeless":
        return frozenset({"read:servers"})
    if row.kind == "token":
        return DEFAULT_TOKEN_SCOPES
    return role_scopes(user)


def origin_of(row: Row, hub: str, host_origin: str = "") -> str | None:
    return {
        None: None,
        "same": f"http://{hub}",
        "cross": "http://evil.example",
        "https": f"https://{hub}",
        "host": host_origin,
    }[row.origin]


def answer(decision: object) -> Answer:
    if decision is ALLOW:
        return ALLOWED
    assert isinstance(decision, Refuse)
    then = "login" if decision.login else "password" if decision.password else ""
    return decision.status, then


def pure(row: Row, *, host: str = HUB, site: Site | None = None, origin: str = "") -> object:
    """What ``decide`` answers for ``row`` on a table where bob's server runs (and, for
    user hosts, alice's)."""
    table = RouteTable(admin_access=row.admin_access)
    sharing = frozenset({IDS["alice"]}) if row.shared_with_alice else frozenset()
    table.add(Route("bob", "", IDS["bob"], 2, "http://b:8888", "s", shared_with=sharing))
    if site is not None:
        table.add(Route("alice", "", IDS["alice"], 1, "http://a:8888", "s"))
    user = user_of(row)
    visit = Visit(
        method=row.method,
        path=row.path,
        host=host,
        origin=origin_of(row, HUB, origin),
        upgrade=row.upgrade,
        by_token=row.by_token,
        wants_html=row.html and not row.by_token,
        scheme="http",
    )
    return decide(
        visit,
        user,
        scopes_of(row, user),
        table.match(row.path),
        admin_access=table.admin_access,
        site=site if site is not None else Site(public_origin="", public_scheme=""),
    )


@pytest.mark.parametrize("row", PATH_ROWS, ids=[r.name for r in PATH_ROWS])
def test_the_decision_answers_each_row(row: Row) -> None:
    assert answer(pure(row)) == row.expect


def test_every_server_one_may_not_open_gets_the_same_refusal() -> None:
    refusals = {
        pure(row) for row in PATH_ROWS if row.expect == (404, "") and row.path.endswith("echo")
    }
    assert refusals == {Refuse(404, NO_SERVER)}


def user_hosts() -> UserHosts:
    return UserHosts(domain=DOMAIN, hub_url=f"http://{HUB}", secret=b"x" * 32, max_age_days=1)


@pytest.mark.parametrize(("row", "host"), HOST_ROWS, ids=[r.name for r, _ in HOST_ROWS])
def test_the_decision_answers_each_user_host_row(row: Row, host: str) -> None:
    hosts = user_hosts()
    site = Site(public_origin="", public_scheme="http", hosts=hosts)
    netloc = hosts.netloc_of(host)
    decision = pure(row, host=netloc, site=site, origin=hosts.origin_of(host))
    assert answer(decision) == row.expect
    if row.expect == (404, ""):
        assert decision == Refuse(404, NOTHING_HERE)


def test_nothing_is_allocated_on_the_way_to_allow() -> None:
    """The same answer object each time: the fast front asks this for every new head."""
    row = PATH_ROWS[0]
    assert pure(row) is pure(row) is ALLOW
    assert pure(PATH_ROWS[3]) is pure(PATH_ROWS[3])  # refusals made once, too


# (b) End to end, through the front and through the tornado relay ---------------------------


# The one-time password of the module hub's "newbie", whose session must change it.
NEWBIE_PASSWORD: list[str] = []


@pytest_asyncio.fixture(loop_scope="module", params=["front", "tornado"])
async def path_way(request: pytest.FixtureRequest, shared: SecurityHub) -> AsyncIterator[Way]:  # noqa: F811
    built = shared.built
    built.routes.admin_access = False
    built.routes.add(shared.route())
    accounts = built.deps.accounts
    if "newbie" not in shared.ids:
        newbie, one_time = await accounts.create_user("newbie")
        shared.ids["newbie"] = newbie.id
        NEWBIE_PASSWORD.append(one_time or "")
    yield Way(shared, request.param)
    built.routes.admin_access = False
    built.routes.add(shared.route())


async def credentials(way: Way, row: Row) -> dict[str, str]:
    """The headers that carry ``row.who`` to ``way``'s hub."""
    accounts = way.hub.built.deps.accounts
    if row.who == "nobody":
        return {}
    if row.user == "newbie":
        made = Browser(way.running)
        assert (await made.login("newbie", NEWBIE_PASSWORD[0])).code == 302
        return cookie(made)
    if row.kind == "token":
        if row.user == "root":
            return {"Authorization": f"token {way.hub.admin_token}"}
        return {"Authorization": f"token {await way.token(row.user)}"}
    if row.kind in ("scopeless", "revoked"):
        token = await accounts.create_token(
            await accounts.get(row.user), scopes=frozenset({"read:servers"})
        )
        if row.kind == "revoked":
            await way.sql("DELETE FROM api_tokens WHERE user_id = :id", id=way.hub.ids[row.user])
        return {"Authorization": f"token {token}"}
    browser = await way.browser(row.user)
    if row.kind == "ended":
        await way.sql("DELETE FROM sessions WHERE user_id = :id", id=way.hub.ids[row.user])
    return cookie(browser)


def seen(response: tornado.httpclient.HTTPResponse) -> Answer:
    """The answer as a client sees it, in the terms of the table."""
    if response.code == 302:
        location = response.headers["Location"]
        if location.startswith("/hub/login?") or "/hub/user-auth?" in location:
            return 401, "login"
        if location == "/hub/password":
            return 403, "password"
    return (200 if response.code in (101, 200) else response.code), ""


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("row", PATH_ROWS, ids=[r.name for r in PATH_ROWS])
async def test_every_path_of_the_proxy_gives_the_decisions_answer(path_way: Way, row: Row) -> None:
    way = path_way
    built = way.hub.built
    built.routes.admin_access = row.admin_access
    if row.shared_with_alice:
        built.routes.add(replace(way.hub.route(), shared_with=frozenset({way.hub.ids["alice"]})))
    headers = await credentials(way, row)
    headers["Accept"] = "text/html" if row.html else "application/json"
    origin = origin_of(row, way.url.removeprefix("http://"))
    if origin is not None:
        headers["Origin"] = origin
    expected = pure(row)
    assert answer(expected) == row.expect
    if row.upgrade:
        got = await websocket(way.url + row.path, headers)
        assert got == row.expect, row.name
        return
    response = await way.fetch(
        row.path,
        method=row.method,
        headers=headers,
        body=b"x" if row.method == "POST" else None,
    )
    assert seen(response) == row.expect, (row.name, response.code, response.body[:300])
    if row.expect == ALLOWED:
        assert json.loads(response.body)["name"] == "bob"
    elif isinstance(expected, Refuse) and not row.html:
        # The words too: the message of the decision, as JSON.
        assert json.loads(response.body) == {"status": expected.status, "message": expected.reason}


async def websocket(url: str, headers: dict[str, str]) -> Answer:
    request = tornado.httpclient.HTTPRequest(url.replace("http", "ws", 1), headers=headers)
    try:
        conn = await websocket_connect(request)
    except tornado.httpclient.HTTPClientError as exc:
        return exc.code, ""
    await echoes(conn)
    conn.close()
    return ALLOWED


async def test_every_path_on_user_hosts_gives_the_decisions_answer(
    domain_hub: DomainHub,  # noqa: F811
) -> None:
    hosts = domain_hub.hosts
    alice = await domain_hub.login("alice")
    await domain_hub.sign_in_on(alice, "alice")
    hub = f"localhost:{domain_hub.port}"
    for row, host in HOST_ROWS:
        client = alice if row.user == "alice" else Client(domain_hub.port)
        url = domain_hub.host(host) + row.path
        headers: dict[str, Any] = {"Accept": "text/html" if row.html else "application/json"}
        origin = origin_of(row, hub, hosts.origin_of(host))
        if origin is not None:
            headers["Origin"] = origin
        site = Site(public_origin="", public_scheme="http", hosts=hosts)
        expected = pure(row, host=hosts.netloc_of(host), site=site, origin=hosts.origin_of(host))
        assert answer(expected) == row.expect, row.name
        if row.upgrade:
            got = await host_websocket(client, url, headers)
        else:
            response = await client.fetch(
                url, method=row.method, body="x" if row.method == "POST" else None, **headers
            )
            got = seen(response)
        assert got == row.expect, (domain_hub.mode, row.name)


async def host_websocket(client: Client, url: str, headers: dict[str, str]) -> Answer:
    parts = urlsplit(url)
    jar = client.jars.get(parts.hostname or "", {})
    sent = {"Host": parts.netloc, **headers}
    if jar:
        sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
    request = tornado.httpclient.HTTPRequest(
        f"ws://127.0.0.1:{client.port}{parts.path}", headers=sent
    )
    try:
        conn = await websocket_connect(request)
    except tornado.httpclient.HTTPClientError as exc:
        return exc.code, ""
    conn.close()
    return ALLOWED
