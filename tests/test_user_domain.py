"""Subdomain mode (``hub.user_domain``): users' servers on hosts of their own.

Pure rules first (host names, codes, ``next``, the host cookie), then a real hub
with a real database serving through the front (what ``labdock serve`` runs) and
through its tornado handlers alone, in front of a small user server in this
process. Requests go to 127.0.0.1 with the ``Host`` a browser would send.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import pytest_asyncio
import tornado.httpclient
import tornado.httpserver
import tornado.testing
import tornado.web
import tornado.websocket
from tornado.web import create_signed_value, decode_signed_value

from hub.app import Hub, build_hub
from hub.config import Settings, load_settings
from hub.domain.errors import ConfigError, InvalidInput
from hub.domain.routes import Route
from hub.proxy.user_hosts import AuthCodes, UserHosts, host_label, label_owner

PASSWORD = "correct horse"
SECRET = b"test-" + b"x" * 40
DOMAIN = "users.localhost"


def make_hosts(**kwargs: Any) -> UserHosts:
    values: dict[str, Any] = {
        "domain": "users.example.org",
        "hub_url": "https://hub.example.org",
        "secret": SECRET,
        "max_age_days": 1.5,
    }
    values.update(kwargs)
    return UserHosts(**values)


# Host names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("alice", "alice"),
        ("bob-2", "bob-2"),
        ("9lives", "9lives"),
        ("a.b", "u--mexge"),
        ("x_y", None),
        ("a--b", None),
        ("bob-", None),
        ("_", None),
        ("u--mexge", None),
    ],
)
def test_every_user_name_has_one_host_label_and_back(name: str, label: str | None) -> None:
    made = host_label(name)
    if label is not None:
        assert made == label
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", made), made
    assert label_owner(made) == name


def test_labels_of_no_user_name_have_no_owner() -> None:
    for label in ("Alice", "u--", "u--!!", "u--mexge0", "-x", "xn--nxasmq6b", "a_b", ""):
        assert label_owner(label) is None, label
    hosts = make_hosts()
    assert hosts.owner_of("alice.users.example.org") == "alice"
    assert hosts.owner_of("ALICE.users.example.org:443") == "alice"
    assert hosts.owner_of("a.alice.users.example.org") is None
    assert hosts.owner_of("alice.users.example.org.evil.com") is None
    assert hosts.owner_of("hub.example.org") is None
    assert hosts.origin_of("alice") == "https://alice.users.example.org"
    explicit = make_hosts(hub_url="https://hub.example.org:443")
    assert explicit.origin_of("alice") == "https://alice.users.example.org"
    assert make_hosts(hub_url="http://localhost:8123").origin_of("a.b") == (
        "http://u--mexge.users.example.org:8123"
    )


# Settings ---------------------------------------------------------------------------


def test_user_domain_is_read_from_the_environment_and_checked(tmp_path: Path) -> None:
    env = {
        "LABDOCK_HUB_USER_DOMAIN": "users.example.org",
        "LABDOCK_HUB_PUBLIC_URL": "https://hub.example.org",
    }
    assert load_settings(env=env).hub.user_domain == "users.example.org"
    assert load_settings(env={}).hub.user_domain == ""
    bad = {
        "https://users.example.org": "no scheme",
        ".users.example.org": "no scheme, port or leading dot",
        "users.example.org:8000": "no scheme",
        "Users.Example.org": "lower-case",
        "localhost": "host name",
    }
    for value, words in bad.items():
        with pytest.raises(ConfigError, match=re.escape(words)):
            load_settings(env={**env, "LABDOCK_HUB_USER_DOMAIN": value})
    with pytest.raises(ConfigError, match=r"needs hub\.public_url"):
        load_settings(env={"LABDOCK_HUB_USER_DOMAIN": "users.example.org"})
    for hub in ("https://users.example.org", "https://hub.users.example.org:8443"):
        under = re.escape("must not be 'users.example.org' or under it")
        with pytest.raises(ConfigError, match=under):
            load_settings(env={**env, "LABDOCK_HUB_PUBLIC_URL": hub})
    with pytest.raises(ConfigError, match="origin without a path"):
        load_settings(env={**env, "LABDOCK_HUB_PUBLIC_URL": "https://example.org/labdock"})


# Codes ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_code_opens_once_on_its_own_host_and_only_for_thirty_seconds() -> None:
    clock = Clock()
    codes = AuthCodes(clock=clock)
    assert codes.ttl <= 60
    code = codes.mint(session="s1", host="alice.x", state="st" * 8, next_url="n")
    with pytest.raises(InvalidInput, match="another address"):
        codes.redeem(code, host="bob.x")
    with pytest.raises(InvalidInput, match="already used"):
        codes.redeem(code, host="alice.x")  # a failed try used it up too
    code = codes.mint(session="s1", host="alice.x", state="st" * 8, next_url="n")
    assert codes.redeem(code, host="alice.x").session == "s1"
    with pytest.raises(InvalidInput, match="already used or has expired"):
        codes.redeem(code, host="alice.x")
    code = codes.mint(session="s1", host="alice.x", state="st" * 8, next_url="n")
    clock.now += codes.ttl
    with pytest.raises(InvalidInput, match="expired"):
        codes.redeem(code, host="alice.x")
    with pytest.raises(InvalidInput):
        codes.redeem("made-up", host="alice.x")


# next ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/user/alice/",
        "//evil.example/user/alice/",
        "/user/alice/",
        "http://alice.users.example.org/user/alice/",  # not the hub's scheme
        "https://alice.users.example.org:444/user/alice/",  # not the hub's port
        "https://alice.users.example.org.evil.example/user/alice/",
        "https://alice.users.example.org@evil.example/user/alice/",
        "https://x@alice.users.example.org/user/alice/",
        "https://alice.users.example.org/user/bob/",
        "https://alice.users.example.org/user/alice/../bob/",
        "https://alice.users.example.org/user/alice%2F..%2Fbob/",
        "https://alice.users.example.org/user/alicex/",
        "https://alice.users.example.org/hub/home",
        "https://alice.users.example.org/user/alice/\\evil",
        "https://alice.users.example.org/user/alice/\r\nSet-Cookie:x=1",
        "https://alice.users.example.org/user/alice/#x",
        "javascript:alert(1)//alice.users.example.org/user/alice/",
        "",
    ],
)
def test_next_is_a_server_address_on_its_owners_host_and_nothing_else(url: str) -> None:
    with pytest.raises(InvalidInput, match="address of a user's server"):
        make_hosts().check_next(url)


def test_next_accepts_the_owners_own_server_addresses() -> None:
    hosts = make_hosts()
    for url in (
        "https://alice.users.example.org/user/alice/",
        "https://alice.users.example.org/user/alice",
        "https://alice.users.example.org/user/alice/lab/tree?x=1&y=%2F",
    ):
        assert hosts.check_next(url) == ("alice", "alice.users.example.org")


# The host cookie -----------------------------------------------------------------------


def test_a_host_cookie_opens_only_the_host_it_was_made_for() -> None:
    hosts = make_hosts()
    alice, bob = "alice.users.example.org", "bob.users.example.org"
    value = hosts.sign(alice, "sess-1")
    name = hosts.cookie
    assert name == "__Host-labdock-user"
    assert hosts.session_in(alice, f"{name}={value}") == "sess-1"
    assert hosts.session_in(alice + ":443", f"a=b; {name}={value}") == "sess-1"
    assert hosts.session_in(bob, f"{name}={value}") is None
    # The hub's own session cookie, signed under its own name, is no host cookie.
    hub_value = create_signed_value(SECRET, "__Host-labdock-session", "sess-1").decode()
    assert hosts.session_in(alice, f"{name}={hub_value}") is None
    assert hosts.session_in(alice, f"{name}=2|1:0|10:1700000000|4:x|8:c2Vzcw==|00") is None
    forged = make_hosts(secret=b"another secret").sign(alice, "sess-1")
    assert hosts.session_in(alice, f"{name}={forged}") is None
    # One planted by another host under the domain does not hide the real one.
    planted = hosts.sign(bob, "sess-2")
    assert hosts.session_in(alice, f"{name}={planted}; {name}={value}") == "sess-1"


def test_on_a_user_host_only_that_hosts_own_origin_may_open_sockets_or_write() -> None:
    hosts = make_hosts()
    alice = "alice.users.example.org"
    assert hosts.origin_allowed("https://alice.users.example.org", alice)
    assert hosts.origin_allowed(None, alice)  # not a browser
    for origin in (
        "https://hub.example.org",
        "https://bob.users.example.org",
        "http://alice.users.example.org",
        "null",
    ):
        assert not hosts.origin_allowed(origin, alice), origin


# A real hub ----------------------------------------------------------------------------


class Upstream(tornado.web.RequestHandler):
    """A user server: says what it received (it requires its secret, as real ones do).

    ``/user/<name>/plant`` also tries to set the hub's and the user host's cookies.
    """

    def get(self) -> None:
        if self.request.headers.get("Authorization") != "token up-secret":
            self.set_status(403)
        if self.request.path.endswith("/plant"):
            for name in ("labdock-user", "labdock-state", "labdock-session", "_xsrf"):
                self.set_cookie(name, "planted-by-the-server", path="/")
            self.set_cookie("app_pref", "dark", path="/")
        self.write(
            {
                "path": self.request.path,
                "cookie": self.request.headers.get("Cookie", ""),
                "authorization": self.request.headers.get("Authorization", ""),
            }
        )

    post = get


class UpstreamSocket(tornado.websocket.WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(message)


def free_port() -> int:
    sock, port = tornado.testing.bind_unused_port()
    sock.close()
    return port


@dataclass
class Client:
    """A browser's cookie jars (one per host name), talking to 127.0.0.1:<port>."""

    port: int
    jars: dict[str, dict[str, str]] = field(default_factory=dict)

    async def fetch(
        self, url: str, *, method: str = "GET", body: str | None = None, **headers: str
    ) -> tornado.httpclient.HTTPResponse:
        parts = urlsplit(url)
        assert parts.port == self.port, url
        jar = self.jars.setdefault(parts.hostname or "", {})
        sent = {"Host": parts.netloc, "Accept": "text/html", **headers}
        if jar and "Cookie" not in headers:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
        target = f"http://127.0.0.1:{self.port}{parts.path}" + (
            f"?{parts.query}" if parts.query else ""
        )
        response = await tornado.httpclient.AsyncHTTPClient().fetch(
            target,
            method=method,
            body=body,
            headers=sent,
            follow_redirects=False,
            raise_error=False,
            allow_nonstandard_methods=True,
        )
        for line in response.headers.get_list("Set-Cookie"):
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(line)
            for name, morsel in cookie.items():
                if morsel["max-age"] == "0" or "1970" in morsel["expires"] or not morsel.value:
                    jar.pop(name, None)
                else:
                    jar[name] = morsel.value
        return response


@dataclass
class DomainHub:
    hub: Hub
    port: int
    mode: str

    @property
    def hub_url(self) -> str:
        return f"http://localhost:{self.port}"

    def host(self, name: str) -> str:
        return f"http://{host_label(name)}.{DOMAIN}:{self.port}"

    @property
    def hosts(self) -> UserHosts:
        assert self.hub.front is not None
        hosts = self.hub.front.config.auth.hosts
        assert hosts is not None
        return hosts

    async def login(self, name: str) -> Client:
        client = Client(self.port)
        await client.fetch(self.hub_url + "/hub/login")
        xsrf = client.jars["localhost"]["_xsrf"]
        response = await client.fetch(
            self.hub_url + "/hub/login",
            method="POST",
            body=urlencode({"username": name, "password": PASSWORD, "_xsrf": xsrf}),
        )
        assert response.code == 302, response.body
        return client

    async def sign_in_on(self, client: Client, owner: str, path: str = "") -> str:
        """The whole flow: user host → hub → code → host cookie; returns where it lands."""
        url = self.host(owner) + (path or f"/user/{owner}/echo")
        first = await client.fetch(url)
        assert first.code == 302, (first.code, first.body)
        to_hub = first.headers["Location"]
        assert to_hub.startswith(self.hub_url + "/hub/user-auth?"), to_hub
        minted = await client.fetch(to_hub)
        assert minted.code == 302, (minted.code, minted.body)
        callback = minted.headers["Location"]
        assert callback.startswith(self.host(owner) + "/_labdock/auth?code="), callback
        landed = await client.fetch(callback)
        assert landed.code == 302, (landed.code, landed.body)
        return str(landed.headers["Location"])


@pytest_asyncio.fixture(params=["front", "tornado"])
async def domain_hub(
    request: pytest.FixtureRequest, settings: Settings
) -> AsyncIterator[DomainHub]:
    """A hub in subdomain mode with alice's default server routed to a local upstream."""
    upstream_app = tornado.web.Application(
        [(r"/user/[^/]+/ws", UpstreamSocket), (r"/.*", Upstream)]
    )
    up_sock, up_port = tornado.testing.bind_unused_port()
    upstream = tornado.httpserver.HTTPServer(upstream_app)
    upstream.add_sockets([up_sock])
    sock: socket.socket | None = None
    if request.param == "tornado":
        sock, port = tornado.testing.bind_unused_port()
    else:
        port = free_port()
    changed = replace(
        settings,
        hub=replace(settings.hub, public_url=f"http://localhost:{port}", user_domain=DOMAIN),
    )
    server: tornado.httpserver.HTTPServer | None = None
    async with build_hub(changed) as built:
        if sock is not None:
            server = tornado.httpserver.HTTPServer(built.app)
            server.add_sockets([sock])
        else:
            await built.listen(port, "127.0.0.1")
        accounts = built.deps.accounts
        alice, _ = await accounts.create_user("alice", PASSWORD)
        bob, _ = await accounts.create_user("bob", PASSWORD)
        await accounts.create_user("root", PASSWORD, is_admin=True)
        for server_id, user in enumerate((alice, bob), start=1):
            built.routes.add(
                Route(
                    user=user.name,
                    server="",
                    user_id=user.id,
                    server_id=server_id,
                    target=f"http://127.0.0.1:{up_port}",
                    secret="up-secret",
                )
            )
        try:
            yield DomainHub(built, port, request.param)
        finally:
            if server is not None:
                server.stop()
                await server.close_all_connections()
            upstream.stop()
            await upstream.close_all_connections()


async def test_the_hub_host_sends_user_paths_to_their_owners_host(domain_hub: DomainHub) -> None:
    client = Client(domain_hub.port)
    got = await client.fetch(domain_hub.hub_url + "/user/alice/lab/tree?x=1")
    assert got.code == 302
    assert got.headers["Location"] == domain_hub.host("alice") + "/user/alice/lab/tree?x=1"
    got = await client.fetch(domain_hub.hub_url + "/user/a.b/", method="POST", body="")
    assert got.code == 307
    assert got.headers["Location"] == f"http://u--mexge.{DOMAIN}:{domain_hub.port}/user/a.b/"
    # Even a signed-in owner is never proxied on the hub's host.
    alice = await domain_hub.login("alice")
    got = await alice.fetch(domain_hub.hub_url + "/user/alice/echo")
    assert got.code == 302 and got.headers["Location"].startswith(domain_hub.host("alice"))
    got = await client.fetch(domain_hub.hub_url + "/user/alice%2Fx/")
    assert got.code == 400


async def test_a_user_host_serves_only_its_owners_paths_and_no_page_of_the_hub(
    domain_hub: DomainHub,
) -> None:
    alice = await domain_hub.login("alice")
    landed = await domain_hub.sign_in_on(alice, "alice")
    assert landed == domain_hub.host("alice") + "/user/alice/echo"
    host = domain_hub.host("alice")
    paths = ("/", "/hub/login", "/hub/home", "/hub/api/users", "/hub/api/", "/hub/metrics")
    for path in (*paths, "/user/bob/", "/user/bob/echo", "/user/alicex/"):
        got = await alice.fetch(host + path)
        assert got.code == 404, (path, got.code, got.body[:200])
        assert not got.headers.get_list("Set-Cookie"), path
    got = await alice.fetch(domain_hub.host("bob") + "/user/alice/echo")
    assert got.code == 404  # alice's path on bob's host


async def test_a_server_cannot_set_the_user_hosts_cookies_nor_the_hubs(
    domain_hub: DomainHub,
) -> None:
    """Else a page of hers could sign a visitor of her host into her own session."""
    alice = await domain_hub.login("alice")
    await domain_hub.sign_in_on(alice, "alice")
    got = await alice.fetch(domain_hub.host("alice") + "/user/alice/plant", Accept="*/*")
    assert got.code == 200, got.body
    cookies = got.headers.get_list("Set-Cookie")
    assert [c.split("=", 1)[0] for c in cookies] == ["app_pref"], cookies


async def test_owner_signs_in_through_the_hub_and_reaches_her_server_without_hub_cookies(
    domain_hub: DomainHub,
) -> None:
    alice = await domain_hub.login("alice")
    host = domain_hub.host("alice")
    # Without the host's own cookie: a browser is sent to the hub, an API client gets 401.
    got = await alice.fetch(host + "/user/alice/echo", Accept="application/json")
    assert got.code == 401
    await domain_hub.sign_in_on(alice, "alice")
    jar = alice.jars[f"alice.{DOMAIN}"]
    assert set(jar) >= {"labdock-user"}
    assert "labdock-session" not in jar and "_xsrf" not in jar
    front = domain_hub.hub.front
    assert front is not None
    relayed = front.relayed
    got = await alice.fetch(host + "/user/alice/echo", Accept="application/json")
    assert got.code == 200, got.body
    if domain_hub.mode == "front":
        assert front.relayed == relayed + 1  # the fast path itself let her in
    seen = json.loads(got.body)
    assert seen["authorization"] == "token up-secret"
    assert "labdock" not in seen["cookie"], seen  # neither cookie reaches her server
    # API clients use the user host with a token, as they used the hub's host.
    accounts = domain_hub.hub.deps.accounts
    token = await accounts.create_token(await accounts.get("alice"))
    got = await Client(domain_hub.port).fetch(
        host + "/user/alice/echo", Authorization=f"token {token}", Accept="*/*"
    )
    assert got.code == 200 and json.loads(got.body)["authorization"] == "token up-secret"
    # The hub's session cookie is worth nothing on a user host.
    hub_cookie = alice.jars["localhost"]["labdock-session"]
    got = await Client(domain_hub.port).fetch(
        host + "/user/alice/echo", Cookie=f"labdock-session={hub_cookie}", Accept="*/*"
    )
    assert got.code == 401


async def test_the_callback_refuses_reused_expired_foreign_and_planted_codes(
    domain_hub: DomainHub,
) -> None:
    alice = await domain_hub.login("alice")
    host = domain_hub.host("alice")
    first = await alice.fetch(host + "/user/alice/echo")
    minted = await alice.fetch(first.headers["Location"])
    callback = minted.headers["Location"]
    assert (await alice.fetch(callback)).code == 302
    again = await alice.fetch(callback)
    assert again.code == 400 and b"already used or has expired" in again.body

    # Expired: codes live 30 s; this hub's are made to live 0.2 s.
    codes = domain_hub.hosts.codes
    codes.ttl = 0.2
    try:
        alice.jars[f"alice.{DOMAIN}"].pop("labdock-user")
        first = await alice.fetch(host + "/user/alice/echo")
        callback = (await alice.fetch(first.headers["Location"])).headers["Location"]
        await asyncio.sleep(0.3)
        late = await alice.fetch(callback)
        assert late.code == 400 and b"expired" in late.body
    finally:
        codes.ttl = 30.0

    # A code for alice's host, taken to bob's host.
    alice.jars[f"alice.{DOMAIN}"].pop("labdock-user", None)
    first = await alice.fetch(host + "/user/alice/echo")
    callback = (await alice.fetch(first.headers["Location"])).headers["Location"]
    code = parse_qs(urlsplit(callback).query)["code"][0]
    elsewhere = await alice.fetch(domain_hub.host("bob") + "/_labdock/auth?code=" + code)
    assert elsewhere.code == 400

    # Login CSRF: bob's code planted in a browser that did not start bob's sign-in.
    bob = await domain_hub.login("bob")
    first = await bob.fetch(domain_hub.host("bob") + "/user/bob/")
    planted = (await bob.fetch(first.headers["Location"])).headers["Location"]
    victim = Client(domain_hub.port)
    got = await victim.fetch(planted)
    assert got.code == 400 and b"started elsewhere" in got.body
    assert not victim.jars.get(f"bob.{DOMAIN}", {}).get("labdock-user")


async def test_the_hub_mints_no_code_for_a_foreign_next_a_token_or_someone_elses_host(
    domain_hub: DomainHub,
) -> None:
    bob = await domain_hub.login("bob")
    state = "s" * 24
    for next_url in (
        "http://evil.example/user/bob/",
        f"{domain_hub.hub_url}/hub/home",
        domain_hub.host("bob") + "/user/alice/",
        "//evil.example/",
    ):
        query = urlencode({"next": next_url, "state": state})
        got = await bob.fetch(f"{domain_hub.hub_url}/hub/user-auth?{query}")
        assert got.code == 400, (next_url, got.code)
        assert "Location" not in got.headers
    # bob on alice's host: not his, not shared.
    query = urlencode({"next": domain_hub.host("alice") + "/user/alice/", "state": state})
    got = await bob.fetch(f"{domain_hub.hub_url}/hub/user-auth?{query}")
    assert got.code == 403
    # Admins too, while admin access is off (the default).
    root = await domain_hub.login("root")
    got = await root.fetch(f"{domain_hub.hub_url}/hub/user-auth?{query}")
    assert got.code == 403
    # A token opens no user host, even beside someone's session cookie.
    accounts = domain_hub.hub.deps.accounts
    token = await accounts.create_token(await accounts.get("alice"))
    query = urlencode({"next": domain_hub.host("alice") + "/user/alice/", "state": state})
    for client in (Client(domain_hub.port), bob):
        got = await client.fetch(
            f"{domain_hub.hub_url}/hub/user-auth?{query}", Authorization=f"token {token}"
        )
        assert got.code == 401, got.code
        assert "Location" not in got.headers
    # Nobody signed in: the login page first, coming back here after.
    got = await Client(domain_hub.port).fetch(f"{domain_hub.hub_url}/hub/user-auth?{query}")
    assert got.code == 302 and got.headers["Location"].startswith("/hub/login?next=")


async def test_logging_out_of_the_hub_closes_the_user_host(domain_hub: DomainHub) -> None:
    alice = await domain_hub.login("alice")
    await domain_hub.sign_in_on(alice, "alice")
    url = domain_hub.host("alice") + "/user/alice/echo"
    assert (await alice.fetch(url, Accept="*/*")).code == 200
    xsrf = alice.jars["localhost"]["_xsrf"]
    out = await alice.fetch(
        domain_hub.hub_url + "/hub/logout", method="POST", body=urlencode({"_xsrf": xsrf})
    )
    assert out.code == 302
    # The front keeps a grant for at most its cache time (2 s).
    for _ in range(40):
        got = await alice.fetch(url, Accept="*/*")
        if got.code == 401:
            break
        await asyncio.sleep(0.1)
    assert got.code == 401


async def test_sockets_on_a_user_host_need_that_hosts_own_origin(domain_hub: DomainHub) -> None:
    alice = await domain_hub.login("alice")
    await domain_hub.sign_in_on(alice, "alice")
    cookie = "; ".join(f"{k}={v}" for k, v in alice.jars[f"alice.{DOMAIN}"].items())
    host = f"alice.{DOMAIN}:{domain_hub.port}"

    async def connect(origin: str) -> tornado.websocket.WebSocketClientConnection:
        request = tornado.httpclient.HTTPRequest(
            f"ws://127.0.0.1:{domain_hub.port}/user/alice/ws",
            headers={"Host": host, "Cookie": cookie, "Origin": origin},
        )
        return await tornado.websocket.websocket_connect(request)

    socket_ = await connect(f"http://{host}")
    await socket_.write_message("hi")
    assert await socket_.read_message() == "hi"
    socket_.close()
    for origin in (domain_hub.hub_url, domain_hub.host("bob"), "http://evil.example"):
        with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
            await connect(origin)
        assert refused.value.code == 403, origin
    # Cookie writes too.
    got = await alice.fetch(
        domain_hub.host("alice") + "/user/alice/echo",
        method="POST",
        body="x",
        Origin=domain_hub.hub_url,
    )
    assert got.code == 403


async def test_a_cookie_for_another_users_host_or_a_forged_one_lets_nobody_in(
    domain_hub: DomainHub,
) -> None:
    bob = await domain_hub.login("bob")
    await domain_hub.sign_in_on(bob, "bob")  # bob's own host (no server there)
    bob_value = bob.jars[f"bob.{DOMAIN}"]["labdock-user"]
    url = domain_hub.host("alice") + "/user/alice/echo"
    stranger = Client(domain_hub.port)
    for value in (bob_value, bob_value[:-2] + "00", "garbage"):
        got = await stranger.fetch(url, Cookie=f"labdock-user={value}", Accept="*/*")
        assert got.code == 401, value


async def test_whoever_may_use_two_servers_reaches_each_only_on_its_owners_host(
    domain_hub: DomainHub,
) -> None:
    """An admin's cookie for alice's host (as admin access gives) opens no path of
    bob's there: a page on alice's host never gets to script bob's server."""
    domain_hub.hub.routes.admin_access = True  # as hub.admin_access = true would
    root = await domain_hub.login("root")
    raw = root.jars["localhost"]["labdock-session"].strip('"')
    session = decode_signed_value(SECRET, "labdock-session", raw)
    assert session is not None
    alice_host = f"alice.{DOMAIN}"
    cookie = f"labdock-user={domain_hub.hosts.sign(alice_host, session.decode())}"
    got = await root.fetch(
        domain_hub.host("alice") + "/user/alice/echo", Cookie=cookie, Accept="*/*"
    )
    assert got.code == 200, got.body
    for path in ("/user/bob/echo", "/user/bob/ws"):
        got = await root.fetch(domain_hub.host("alice") + path, Cookie=cookie, Accept="*/*")
        assert got.code == 404, (path, got.code, got.body[:200])
