"""The proxy over real HTTP, in front of user servers running in real containers.

Two programmable upstreams (``tests/upstream_app.py`` in the ``labdock/python``
image) stand for alice's and bob's servers; each requires its own secret and
says who it is, so a test can tell exactly whose server a request reached.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import docker
import pytest
import pytest_asyncio
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
import tornado.testing
import tornado.web
from tornado.websocket import WebSocketClientConnection, websocket_connect

from hub.app import build_hub, make_routes
from hub.config import BackendSettings, DbSettings, HubSettings, Settings
from hub.domain.accounts import Accounts
from hub.domain.activity import ActivityTracker
from hub.domain.routes import Route, RouteTable
from hub.proxy.fast import FrontProxy
from hub.proxy.pool import ConnectionPool
from hub.proxy.upstream import UpstreamPool
from hub.web.proxy import front_proxy, proxy_routes
from tests.busybox_image import ensure_test_image
from tests.conftest import RunningHub
from tests.test_web import Browser

APP = Path(__file__).with_name("upstream_app.py")
PASSWORD = "correct horse"
LABEL = {"labdock.test": "1"}
PORT = 8888
# How long the fast path may keep believing a credential (the hub's default is 2 s).
AUTH_TTL = 0.5

pytestmark = pytest.mark.asyncio(loop_scope="module")


# Upstream containers ---------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    """One user server: where it listens and the secret it requires."""

    name: str
    target: str
    secret: str

    def fetch(self, path: str) -> Any:
        """Ask the server directly (not through the hub), as JSON."""
        request = urllib.request.Request(
            self.target + path, headers={"Authorization": f"token {self.secret}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def seen(self) -> list[str]:
        """Request lines this server received, minus our own look at the log."""
        return [line for line in self.fetch("/log")["seen"] if not line.endswith("/log")]


def python_image(client: docker.DockerClient) -> str:
    """The newest ``labdock/python`` image, built by ``labdock images build python``."""
    images = client.images.list(name="labdock/python")
    if not images:
        raise RuntimeError(
            "no labdock/python image: run `labdock images build python` (make test does)"
        )
    newest = max(images, key=lambda image: image.attrs["Created"])
    return str(newest.tags[0])


def wait_listening(host: str, port: int, container: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            container.reload()
            if container.status == "exited":
                break
            time.sleep(0.05)
    logs = container.logs().decode(errors="replace")
    raise RuntimeError(f"upstream {container.name} never listened on {port}:\n{logs}")


def start_upstream(client: docker.DockerClient, image: str, name: str) -> tuple[Any, Upstream]:
    secret = secrets.token_hex(16)
    container = client.containers.run(
        image,
        ["/opt/labdock/bin/python", "/app/upstream_app.py"],
        name=f"labdock-test-proxy-{name}-{secrets.token_hex(4)}",
        detach=True,
        labels=LABEL,
        environment={"LABDOCK_PORT": str(PORT), "LABDOCK_SECRET": secret, "LABDOCK_NAME": name},
        volumes={str(APP): {"bind": "/app/upstream_app.py", "mode": "ro"}},
        mem_limit="512m",
    )
    container.reload()
    ip = container.attrs["NetworkSettings"]["IPAddress"]
    wait_listening(ip, PORT, container)
    return container, Upstream(name, f"http://{ip}:{PORT}", secret)


@pytest.fixture(scope="module")
def upstreams(docker_client: docker.DockerClient) -> Iterator[dict[str, Upstream]]:
    """alice's and bob's servers, for the whole module; removed even if a test fails."""
    image = python_image(docker_client)
    containers = []
    try:
        found = {}
        for name in ("alice", "bob"):
            container, upstream = start_upstream(docker_client, image, name)
            containers.append(container)
            found[name] = upstream
        yield found
    finally:
        for container in containers:
            container.remove(force=True)


# The hub ---------------------------------------------------------------------
#
# One hub for the module (argon2 makes every user and login cost ~0.2 s); each
# test starts from the same routes: alice's and bob's default servers.


class Pools:
    """The tornado handler's pool and the fast path's, seen as one by the tests."""

    def __init__(self, tornado_pool: UpstreamPool, fast: ConnectionPool | None) -> None:
        self._pools: list[Any] = [tornado_pool] + ([fast] if fast is not None else [])

    @property
    def idle_timeout(self) -> float:
        return float(self._pools[0].idle_timeout)

    @idle_timeout.setter
    def idle_timeout(self, value: float) -> None:
        for pool in self._pools:
            pool.idle_timeout = value

    def idle_connections(self, target: str) -> int:
        return sum(pool.idle_connections(target) for pool in self._pools)

    def discard(self, target: str) -> None:
        for pool in self._pools:
            pool.discard(target)


@dataclass
class ProxyHub:
    """A hub with the proxy's routes, on a free port, and its collaborators.

    ``mode`` is "tornado" (the handlers alone, as the unit under test) or
    "front" (what ``labdock serve`` runs: the fast path in front of them).
    """

    running: RunningHub
    routes: RouteTable
    activity: ActivityTracker
    pool: Pools
    upstreams: dict[str, Upstream]
    front: FrontProxy | None = None
    ids: dict[str, int] = field(default_factory=dict)
    browsers: dict[str, Browser] = field(default_factory=dict)
    states: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def accounts(self) -> Accounts:
        return self.running.hub.deps.accounts

    async def browser(self, name: str) -> Browser:
        """A browser logged in as ``name`` (logged in once per module)."""
        if name not in self.browsers:
            browser = Browser(self.running)
            response = await browser.login(name, PASSWORD)
            assert response.code == 302, response.body
            self.browsers[name] = browser
        return self.browsers[name]

    async def fetch(
        self, path: str, browser: Browser | None = None, **kwargs: Any
    ) -> tornado.httpclient.HTTPResponse:
        headers = dict(kwargs.pop("headers", {}))
        if browser is not None:
            headers.setdefault("Cookie", browser._headers()["Cookie"])
        return await self.running.fetch(path, headers=headers, **kwargs)

    def route(self, upstream: Upstream, **kwargs: Any) -> Route:
        """Add a route to ``upstream``, owned by the user of the same name by default."""
        values: dict[str, Any] = {
            "user": upstream.name,
            "server": "",
            "user_id": self.ids.get(upstream.name, 0),
            "server_id": 0,
            "target": upstream.target,
            "secret": upstream.secret,
        }
        values.update(kwargs)
        route = Route(**values)
        self.routes.add(route)
        return route

    def reset(self) -> None:
        for route in list(self.routes):
            self.routes.remove(route.server_id)
        for upstream in self.upstreams.values():
            self.pool.discard(upstream.target)  # each test counts its own connections
        self.route(self.upstreams["alice"], server_id=1)
        self.route(self.upstreams["bob"], server_id=2)
        self.states.clear()
        for server_id in range(20):
            self.activity.forget(server_id)
        self.pool.idle_timeout = 1.5


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["tornado", "front"])
async def shared_hub(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstreams: dict[str, Upstream],
) -> AsyncIterator[ProxyHub]:
    data = tmp_path_factory.mktemp("proxy-hub")
    settings = Settings(
        hub=HubSettings(data_dir=data, cookie_secret="test-" + "x" * 40),
        db=DbSettings(url=f"sqlite:///{data / 'labdock.sqlite'}"),
        backend=BackendSettings(labels="labdock.test=1", runtime_volumes="off"),
    )
    async with build_hub(settings) as built:
        routes = RouteTable()
        activity = ActivityTracker(every=0)
        pool = UpstreamPool(connect_timeout=2.0, idle_timeout=1.5)
        states: dict[tuple[str, str], str] = {}

        async def describe(user: str, server: str) -> str | None:
            return states.get((user, server))

        app = tornado.web.Application(
            make_routes(built.deps)
            + proxy_routes(
                built.deps,
                routes,
                activity,
                describe=describe,
                upstream=pool,
                ws_handshake_timeout=0.5,  # must not limit a socket's life once open
            ),
            **built.app.settings,
        )
        front = None
        if request.param == "front":
            path = str(data / "hub.sock")
            sock = tornado.netutil.bind_unix_socket(path, mode=0o600)
            server = tornado.httpserver.HTTPServer(app, xheaders=True)
            server.add_sockets([sock])
            front = front_proxy(
                built.deps,
                routes,
                activity,
                hub=f"unix:{path}",
                cookie_secret=app.settings["cookie_secret"],
                pool=ConnectionPool(connect_timeout=2.0, idle_timeout=1.5),
                auth_ttl=AUTH_TTL,
            )
            port = await front.listen("127.0.0.1", 0)
        else:
            sock, port = tornado.testing.bind_unused_port()
            server = tornado.httpserver.HTTPServer(app)
            server.add_sockets([sock])
        running = RunningHub(built, f"http://127.0.0.1:{port}")
        pools = Pools(pool, front.pool if front else None)
        hub = ProxyHub(running, routes, activity, pools, upstreams, front=front, states=states)
        for name in ("alice", "bob", "carol"):
            user, _ = await built.deps.accounts.create_user(name, PASSWORD)
            hub.ids[name] = user.id
        root, _ = await built.deps.accounts.create_user("root", PASSWORD, is_admin=True)
        hub.ids["root"] = root.id
        try:
            yield hub
        finally:
            if front is not None:
                await front.close()
            server.stop()
            await server.close_all_connections()
            pool.close()


@pytest_asyncio.fixture(loop_scope="module")
async def proxy_hub(shared_hub: ProxyHub) -> ProxyHub:
    shared_hub.reset()
    return shared_hub


async def raw_request(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send bytes as they are and read until the hub closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        writer.write(data)
        await writer.drain()
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
    except ConnectionError:
        pass
    finally:
        writer.close()
    return received


def body(response: tornado.httpclient.HTTPResponse) -> Any:
    return json.loads(response.body)


def head(method: str, path: str, *lines: str) -> bytes:
    """A request head written out by hand, byte for byte."""
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: hub", *lines, "", ""]).encode()


def cookie_line(browser: Browser) -> str:
    return "Cookie: " + browser._headers()["Cookie"]


def free_port() -> int:
    """A port nothing listens on (free now, and nothing of ours takes it after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Reaching a server -------------------------------------------------------------


async def test_owner_reaches_their_server_with_the_prefix_kept(proxy_hub: ProxyHub) -> None:
    alice = await proxy_hub.browser("alice")
    response = await proxy_hub.fetch("/user/alice/tree/echo?x=1", alice)
    assert response.code == 200
    seen = body(response)
    assert seen["name"] == "alice" and seen["uri"] == "/user/alice/tree/echo?x=1"


async def test_a_route_without_keep_prefix_gets_only_the_rest_of_the_path(
    proxy_hub: ProxyHub, upstreams: dict[str, Upstream]
) -> None:
    proxy_hub.route(upstreams["alice"], server="lab", server_id=3, keep_prefix=False)
    alice = await proxy_hub.browser("alice")
    seen = body(await proxy_hub.fetch("/user/alice/lab/api/echo?q=%2F", alice))
    assert seen["uri"] == "/api/echo?q=%2F"
    assert seen["headers"]["X-Forwarded-Prefix"] == ["/user/alice/lab"]


async def test_missing_trailing_slash_redirects_to_the_prefix_keeping_the_query(
    proxy_hub: ProxyHub,
) -> None:
    alice = await proxy_hub.browser("alice")
    response = await proxy_hub.fetch("/user/alice?next=1", alice)
    assert response.code == 302 and response.headers["Location"] == "/user/alice/?next=1"
    posted = await proxy_hub.fetch("/user/alice", alice, method="POST", body=b"x")
    assert posted.code == 307


async def test_plain_http_server_in_the_busybox_image_is_reached(
    proxy_hub: ProxyHub, docker_client: docker.DockerClient
) -> None:
    image = ensure_test_image(docker_client)
    container = docker_client.containers.run(
        image,
        detach=True,
        labels=LABEL,
        environment={"LABDOCK_PORT": "8080", "LABDOCK_PREFIX": "/user/carol/"},
        name=f"labdock-test-proxy-busybox-{secrets.token_hex(4)}",
    )
    try:
        container.reload()
        ip = container.attrs["NetworkSettings"]["IPAddress"]
        wait_listening(ip, 8080, container)
        proxy_hub.route(Upstream("carol", f"http://{ip}:8080", "s"), server_id=9)
        browser = await proxy_hub.browser("carol")
        response = await proxy_hub.fetch("/user/carol/index.html", browser)
        assert response.code == 200 and response.body == b"ok\n"
    finally:
        container.remove(force=True)


async def test_keep_alive_connections_are_reused(
    proxy_hub: ProxyHub, upstreams: dict[str, Upstream]
) -> None:
    alice = await proxy_hub.browser("alice")
    for _ in range(5):
        assert (await proxy_hub.fetch("/user/alice/echo", alice)).code == 200
    assert proxy_hub.pool.idle_connections(upstreams["alice"].target) == 1


# Who may pass ------------------------------------------------------------------


async def test_browser_without_session_goes_to_login_and_comes_back(proxy_hub: ProxyHub) -> None:
    response = await proxy_hub.fetch(
        "/user/alice/tree?x=1", headers={"Accept": "text/html,application/xhtml+xml"}
    )
    assert response.code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/hub/login"
    assert parse_qs(location.query)["next"] == ["/user/alice/tree?x=1"]


async def test_api_client_without_credentials_gets_401_json(proxy_hub: ProxyHub) -> None:
    response = await proxy_hub.fetch("/user/alice/api/status")
    assert response.code == 401
    assert response.headers["Content-Type"].startswith("application/json")
    assert body(response)["status"] == 401


@pytest.mark.parametrize(
    "path", ["/user/..//evil.example/", "/user/%2e%2e//evil.example", "/user/alice/../../x"]
)
async def test_login_redirect_never_points_off_the_hub(proxy_hub: ProxyHub, path: str) -> None:
    response = await raw_request(
        proxy_hub.port,
        head("GET", path, "Accept: text/html", "Connection: close"),
    )
    status = int(response.split(b" ", 2)[1])
    if status == 302:
        location = next(
            line.split(b": ", 1)[1].decode()
            for line in response.split(b"\r\n")
            if line.lower().startswith(b"location:")
        )
        target = parse_qs(urlsplit(location).query)["next"][0]
        assert target.startswith("/") and not target.startswith("//") and "\\" not in target
    else:
        assert status == 400


async def test_another_user_is_refused_as_if_no_server_were_there(proxy_hub: ProxyHub) -> None:
    bob = await proxy_hub.browser("bob")
    response = await proxy_hub.fetch("/user/alice/echo", bob)
    assert response.code == 404 and "no server you may open" in body(response)["message"]
    page = await proxy_hub.fetch("/user/alice/echo", bob, headers={"Accept": "text/html"})
    assert page.code == 404 and b"<html" in page.body


async def test_shared_user_gets_through_and_admins_only_with_admin_access(
    proxy_hub: ProxyHub, upstreams: dict[str, Upstream]
) -> None:
    proxy_hub.route(upstreams["alice"], server_id=1, shared_with=frozenset({proxy_hub.ids["bob"]}))
    bob = await proxy_hub.browser("bob")
    response = await proxy_hub.fetch("/user/alice/echo", bob)
    assert response.code == 200 and body(response)["name"] == "alice"
    root, carol = await proxy_hub.browser("root"), await proxy_hub.browser("carol")
    assert (await proxy_hub.fetch("/user/alice/echo", carol)).code == 404
    assert (await proxy_hub.fetch("/user/alice/echo", root)).code == 404
    proxy_hub.routes.admin_access = True
    try:
        response = await proxy_hub.fetch("/user/alice/echo", root)
        assert response.code == 200 and body(response)["name"] == "alice"
    finally:
        proxy_hub.routes.admin_access = False


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/user/alice/../bob/echo", 404),
        ("/user/alice/%2e%2e/bob/echo", 404),
        ("/user/alice/%2E%2E/bob/echo", 404),
        ("/user/alice/x/../../bob/echo", 404),
        ("/user/alice%2Fx/echo", 400),
        ("/user/alice%2fx/../../bob/echo", 400),
        ("/user/alice;x/echo", 400),
        ("/user/bob;/echo", 400),
        ("/user/alice\\..\\bob/echo", 400),
        ("/user/al/echo", 404),
        ("/user/bo/echo", 404),
        ("/user/alice/..%2Fbob/echo", 400),
        ("/user//alice/echo", 200),
        ("/user/%61lice/echo", 200),
    ],
)
async def test_path_confusion_never_reaches_a_server_outside_the_canonical_prefix(
    proxy_hub: ProxyHub, upstreams: dict[str, Upstream], path: str, status: int
) -> None:
    alice = await proxy_hub.browser("alice")
    before = len(upstreams["bob"].seen())
    request = head("GET", path, cookie_line(alice), "Connection: close")
    response = await raw_request(proxy_hub.port, request)
    assert int(response.split(b" ", 2)[1]) == status, response[:300]
    assert len(upstreams["bob"].seen()) == before
    if status == 200:
        seen = json.loads(response.split(b"\r\n\r\n", 1)[1])
        assert seen["name"] == "alice" and seen["uri"] == "/user/alice/echo"


async def test_cross_site_post_with_a_session_cookie_is_refused(proxy_hub: ProxyHub) -> None:
    alice = await proxy_hub.browser("alice")
    foreign = await proxy_hub.fetch(
        "/user/alice/echo",
        alice,
        method="POST",
        body=b"x",
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.code == 403
    own = await proxy_hub.fetch(
        "/user/alice/echo", alice, method="POST", body=b"x", headers={"Origin": proxy_hub.url}
    )
    assert own.code == 200


# What goes upstream ------------------------------------------------------------


async def test_upstream_gets_the_server_secret_and_never_the_hub_credentials(
    proxy_hub: ProxyHub,
) -> None:
    alice = await proxy_hub.browser("alice")
    response = await proxy_hub.fetch(
        "/user/alice/echo",
        headers={
            "Cookie": alice._headers()["Cookie"] + "; theme=dark",
            "Connection": "keep-alive, X-Private",
            "X-Private": "hop",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic eDp5",
            "X-Forwarded-For": "6.6.6.6",
            "X-App": "kept",
        },
    )
    assert response.code == 200
    headers = body(response)["headers"]
    assert headers["Authorization"] == [f"token {proxy_hub.upstreams['alice'].secret}"]
    assert headers["Cookie"] == ["theme=dark"]
    for gone in ("X-Private", "Keep-Alive", "Proxy-Authorization"):
        assert gone not in headers
    assert headers["X-App"] == ["kept"]
    assert headers["X-Forwarded-For"] == ["127.0.0.1"]
    assert headers["X-Forwarded-Proto"] == ["http"]
    assert headers["X-Forwarded-Host"] == [f"127.0.0.1:{proxy_hub.port}"]
    assert headers["X-Forwarded-Prefix"] == ["/user/alice"]
    assert headers["Host"] == [f"127.0.0.1:{proxy_hub.port}"]


async def test_the_apps_own_authorization_header_rides_on_the_session_cookie(
    proxy_hub: ProxyHub,
) -> None:
    """JupyterLab's page sends ``Authorization: token <server secret>`` on every call;
    Airflow's UI sends its JWTs. Not hub tokens: the session cookie decides."""
    alice = await proxy_hub.browser("alice")
    secret = proxy_hub.upstreams["alice"].secret
    for header in (f"token {secret}", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"):
        response = await proxy_hub.fetch(
            "/user/alice/echo",
            headers={"Cookie": alice._headers()["Cookie"], "Authorization": header},
        )
        assert response.code == 200, response.body
        assert body(response)["headers"]["Authorization"] == [f"token {secret}"]
    # Without a session such a header is no credential at all.
    bare = await proxy_hub.fetch("/user/alice/echo", headers={"Authorization": f"token {secret}"})
    assert bare.code == 401
    # And it does not excuse a cross-site write from the Origin check.
    foreign = await proxy_hub.fetch(
        "/user/alice/echo",
        method="POST",
        body=b"x",
        headers={
            "Cookie": alice._headers()["Cookie"],
            "Authorization": f"token {secret}",
            "Origin": "https://evil.example",
        },
    )
    assert foreign.code == 403


async def test_api_token_gets_through_but_never_reaches_the_server(proxy_hub: ProxyHub) -> None:
    user = await proxy_hub.accounts.get("alice")
    token = await proxy_hub.accounts.create_token(user)
    response = await proxy_hub.fetch(
        "/user/alice/echo", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.code == 200
    seen = body(response)["headers"]["Authorization"]
    assert seen == [f"token {proxy_hub.upstreams['alice'].secret}"]


async def test_token_without_the_access_scope_or_unknown_is_refused(proxy_hub: ProxyHub) -> None:
    user = await proxy_hub.accounts.get("alice")
    token = await proxy_hub.accounts.create_token(user, scopes=frozenset({"read:servers"}))
    narrow = await proxy_hub.fetch("/user/alice/echo", headers={"Authorization": f"token {token}"})
    assert narrow.code == 403 and "access:servers" in body(narrow)["message"]
    unknown = await proxy_hub.fetch("/user/alice/echo", headers={"Authorization": "token ldk_nope"})
    assert unknown.code == 401 and body(unknown)["status"] == 401


async def test_redirects_pass_through_unfollowed(proxy_hub: ProxyHub) -> None:
    alice = await proxy_hub.browser("alice")
    response = await proxy_hub.fetch("/user/alice/redirect", alice)
    assert response.code == 302
    assert response.headers["Location"] == "/elsewhere?from=upstream"


@pytest.mark.parametrize("code", [201, 204, 304, 404, 418, 500])
async def test_status_and_headers_of_the_server_pass_through(
    proxy_hub: ProxyHub, code: int
) -> None:
    alice = await proxy_hub.browser("alice")
    response = await proxy_hub.fetch(f"/user/alice/status?code={code}", alice)
    assert response.code == code
    assert response.headers["X-Upstream-Status"] == str(code)
    assert "X-Frame-Options" not in response.headers


async def test_server_cannot_plant_a_hub_session_cookie(proxy_hub: ProxyHub) -> None:
    alice = await proxy_hub.browser("alice")
    response = await proxy_hub.fetch("/user/alice/cookies", alice)
    cookies = response.headers.get_list("Set-Cookie")
    assert any(c.startswith("app_pref=dark") for c in cookies)
    assert not any("labdock-session" in c or "_xsrf" in c for c in cookies)


async def test_head_passes_content_length_without_a_body(proxy_hub: ProxyHub) -> None:
    alice = await proxy_hub.browser("alice")
    response = await proxy_hub.fetch("/user/alice/echo", alice, method="HEAD")
    assert response.code == 200
    assert response.headers["Content-Length"] == "1234" and response.body == b""


async def test_request_bodies_arrive_whole_with_length_or_chunked(proxy_hub: ProxyHub) -> None:
    alice = await proxy_hub.browser("alice")
    data = secrets.token_bytes(300_000)
    fixed = body(await proxy_hub.fetch("/user/alice/echo", alice, method="PUT", body=data))
    assert fixed["body_sha256"] == hashlib.sha256(data).hexdigest()

    async def produce(write: Any) -> None:
        for start in range(0, len(data), 70_000):
            await write(data[start : start + 70_000])

    chunked = body(
        await proxy_hub.fetch("/user/alice/echo", alice, method="POST", body_producer=produce)
    )
    assert chunked["body_length"] == len(data)
    assert chunked["body_sha256"] == hashlib.sha256(data).hexdigest()
    assert chunked["headers"]["Transfer-Encoding"] == ["chunked"]


async def test_expect_100_continue_is_answered_by_the_hub_and_the_body_forwarded(
    proxy_hub: ProxyHub,
) -> None:
    alice = await proxy_hub.browser("alice")
    data = b"y" * 100_000
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_hub.port)
    writer.write(
        head(
            "POST",
            "/user/alice/echo",
            cookie_line(alice),
            f"Content-Length: {len(data)}",
            "Expect: 100-continue",
            "Connection: close",
        )
    )
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 (Continue)\r\n\r\n"
    writer.write(data)
    response = await reader.read()
    writer.close()
    seen = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert seen["body_sha256"] == hashlib.sha256(data).hexdigest()
    assert "Expect" not in seen["headers"]


async def test_requests_are_recorded_as_activity(proxy_hub: ProxyHub) -> None:
    alice = await proxy_hub.browser("alice")
    await proxy_hub.fetch("/user/alice/echo", alice)
    assert proxy_hub.activity.last_seen(1) is not None
    assert proxy_hub.activity.last_seen(2) is None


# Servers that are missing, down or slow ------------------------------------------


async def test_owner_of_a_missing_route_gets_a_page_with_a_way_to_start_it(
    proxy_hub: ProxyHub,
) -> None:
    carol = await proxy_hub.browser("carol")
    page = await proxy_hub.fetch("/user/carol/lab/tree", carol, headers={"Accept": "text/html"})
    assert page.code == 503
    assert b"not running" in page.body and b'href="/hub/home"' in page.body
    api = await proxy_hub.fetch("/user/carol/lab/tree", carol)
    assert api.code == 503 and body(api) == {
        "status": 503,
        "message": "carol's server is not running.",
    }


async def test_missing_route_page_uses_the_state_the_hub_knows(proxy_hub: ProxyHub) -> None:
    proxy_hub.states[("carol", "lab")] = "starting (pulling the image)"
    carol = await proxy_hub.browser("carol")
    api = await proxy_hub.fetch("/user/carol/lab/tree", carol)
    assert body(api)["message"] == "carol's server 'lab' is starting (pulling the image)."


async def test_stopped_server_gives_a_friendly_503(proxy_hub: ProxyHub) -> None:
    proxy_hub.route(Upstream("carol", f"http://127.0.0.1:{free_port()}", "s"), server_id=7)
    browser = await proxy_hub.browser("carol")
    page = await proxy_hub.fetch("/user/carol/", browser, headers={"Accept": "text/html"})
    assert page.code == 503 and b"not answering" in page.body and b"/hub/home" in page.body
    api = await proxy_hub.fetch("/user/carol/", browser)
    assert api.code == 503 and "not answering" in body(api)["message"]


async def test_slow_server_gives_504_after_the_idle_timeout(proxy_hub: ProxyHub) -> None:
    alice = await proxy_hub.browser("alice")
    started = time.monotonic()
    response = await proxy_hub.fetch("/user/alice/slow?delay=10", alice, request_timeout=8)
    assert response.code == 504
    assert 1.4 < time.monotonic() - started < 4


async def test_server_stalling_mid_body_has_its_connection_cut(proxy_hub: ProxyHub) -> None:
    alice = await proxy_hub.browser("alice")
    started = time.monotonic()
    response = await raw_request(
        proxy_hub.port, head("GET", "/user/alice/stall", cookie_line(alice)), timeout=8
    )
    assert response.startswith(b"HTTP/1.1 200")
    assert b"first piece" in response
    assert not response.endswith(b"0\r\n\r\n")  # never a clean end of the chunked body
    assert time.monotonic() - started < 5


async def test_client_leaving_mid_download_or_upload_frees_the_upstream(
    proxy_hub: ProxyHub, upstreams: dict[str, Upstream], caplog: pytest.LogCaptureFixture
) -> None:
    alice = await proxy_hub.browser("alice")
    target = upstreams["alice"].target
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_hub.port)
    writer.write(head("GET", f"/user/alice/download?size={100 << 20}", cookie_line(alice)))
    await reader.readexactly(1 << 20)
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_hub.port)
    writer.write(head("PUT", "/user/alice/echo", cookie_line(alice), f"Content-Length: {1 << 30}"))
    writer.write(b"x" * (1 << 20))
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.3)
    assert proxy_hub.pool.idle_connections(target) == 0  # cut, never pooled half-read
    assert (await proxy_hub.fetch("/user/alice/echo", alice)).code == 200
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_concurrent_requests_each_get_their_own_answer(proxy_hub: ProxyHub) -> None:
    alice, bob = await proxy_hub.browser("alice"), await proxy_hub.browser("bob")
    paths = [(alice, f"/user/alice/echo?n={i}") for i in range(20)]
    paths += [(bob, f"/user/bob/echo?n={i}") for i in range(20)]
    responses = await asyncio.gather(*(proxy_hub.fetch(p, b) for b, p in paths))
    for (_, path), response in zip(paths, responses, strict=True):
        assert body(response)["uri"] == path


# Hostile input ---------------------------------------------------------------------

SMUGGLED = b"GET /user/alice/smuggled HTTP/1.1\r\nHost: hub\r\n\r\n"


@pytest.mark.parametrize(
    "framing",
    [
        ("Content-Length: 5", f"Content-Length: {5 + len(SMUGGLED)}"),
        (f"Content-Length: 5, {5 + len(SMUGGLED)}",),
        ("Transfer-Encoding: chunked", "Content-Length: 5"),
        ("Content-Length: 5", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: gzip, chunked",),
    ],
)
async def test_ambiguous_body_framing_is_refused_and_smuggles_nothing(
    proxy_hub: ProxyHub, upstreams: dict[str, Upstream], framing: tuple[str, ...]
) -> None:
    alice = await proxy_hub.browser("alice")
    before = upstreams["alice"].seen()
    request = head("POST", "/user/alice/echo", cookie_line(alice), *framing)
    request += b"0\r\n\r\n" + SMUGGLED
    response = await raw_request(proxy_hub.port, request, timeout=2)
    assert response.startswith(b"HTTP/1.1 400")
    assert upstreams["alice"].seen() == before


async def test_oversized_headers_are_refused_before_reaching_anyone(
    proxy_hub: ProxyHub, upstreams: dict[str, Upstream]
) -> None:
    alice = await proxy_hub.browser("alice")
    before = upstreams["alice"].seen()
    request = head("GET", "/user/alice/echo", cookie_line(alice), "X-Big: " + "a" * 100_000)
    response = await raw_request(proxy_hub.port, request, timeout=2)
    # tornado answers an over-long head by closing the connection, without a response.
    assert response == b"" or response.split(b" ", 2)[1] in (b"400", b"431")
    assert upstreams["alice"].seen() == before


# WebSocket ---------------------------------------------------------------------------


async def ws_connect(
    hub: ProxyHub, path: str, browser: Browser | None = None, **headers: str
) -> WebSocketClientConnection:
    if browser is not None:
        headers.setdefault("Cookie", browser._headers()["Cookie"])
    request = tornado.httpclient.HTTPRequest(
        hub.url.replace("http", "ws", 1) + path, headers=headers
    )
    return await websocket_connect(request, subprotocols=["v1.test", "v2.test"])


async def ws_refusal(hub: ProxyHub, path: str, browser: Browser | None, **headers: str) -> int:
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await ws_connect(hub, path, browser, **headers)
    return refused.value.code


async def test_websocket_without_a_session_is_refused(proxy_hub: ProxyHub) -> None:
    assert await ws_refusal(proxy_hub, "/user/alice/ws", None) == 401


async def test_websocket_of_another_user_is_refused(proxy_hub: ProxyHub) -> None:
    bob = await proxy_hub.browser("bob")
    assert await ws_refusal(proxy_hub, "/user/alice/ws", bob) == 404


async def test_websocket_from_a_foreign_origin_is_refused(
    proxy_hub: ProxyHub, upstreams: dict[str, Upstream]
) -> None:
    alice = await proxy_hub.browser("alice")
    before = upstreams["alice"].seen()
    code = await ws_refusal(proxy_hub, "/user/alice/ws", alice, Origin="https://evil.example")
    assert code == 403
    assert upstreams["alice"].seen() == before


async def test_websocket_relays_text_binary_and_close_codes_both_ways(
    proxy_hub: ProxyHub, upstreams: dict[str, Upstream]
) -> None:
    alice = await proxy_hub.browser("alice")
    conn = await ws_connect(proxy_hub, "/user/alice/ws", alice, Origin=proxy_hub.url)
    assert conn.selected_subprotocol == "v1.test"
    await conn.write_message("hello")
    assert await conn.read_message() == "hello"
    blob = bytes(range(256)) * 10
    await conn.write_message(blob, binary=True)
    assert await conn.read_message() == blob
    conn.close(4001, "client says bye")
    # The upstream outlives one test run per mode: wait for this close, not any close.
    for _ in range(50):
        last = upstreams["alice"].fetch("/last-close")
        if last == {"code": 4001, "reason": "client says bye"}:
            break
        await asyncio.sleep(0.05)
    assert last == {"code": 4001, "reason": "client says bye"}

    conn = await ws_connect(proxy_hub, "/user/alice/ws", alice)
    await asyncio.sleep(0.8)
    await conn.write_message("still here")
    assert await conn.read_message() == "still here"
    await conn.write_message("close:4002:server says bye")
    assert await conn.read_message() is None
    assert (conn.close_code, conn.close_reason) == (4002, "server says bye")
    assert proxy_hub.activity.last_seen(1) is not None


async def test_websocket_to_a_stopped_server_is_refused_with_503(proxy_hub: ProxyHub) -> None:
    proxy_hub.route(Upstream("carol", f"http://127.0.0.1:{free_port()}", "s"), server_id=7)
    browser = await proxy_hub.browser("carol")
    assert await ws_refusal(proxy_hub, "/user/carol/ws", browser) == 503


# Big transfers -------------------------------------------------------------------------


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class PeakRss:
    """Samples this process's RSS every 20 ms while a transfer runs."""

    def __init__(self) -> None:
        self.start = rss_bytes()
        self.peak = self.start
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes())
            await asyncio.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    @property
    def growth(self) -> int:
        return self.peak - self.start


@pytest.mark.slow
async def test_200_mb_up_and_down_stream_without_filling_the_hubs_memory(
    proxy_hub: ProxyHub,
) -> None:
    proxy_hub.pool.idle_timeout = 30.0
    alice = await proxy_hub.browser("alice")
    size = 200 * 1024 * 1024
    piece = bytes(range(256)) * 256
    expected = hashlib.sha256()
    for _ in range(size // len(piece)):
        expected.update(piece)

    async def produce(write: Any) -> None:
        for _ in range(size // len(piece)):
            await write(piece)

    with PeakRss() as upload_rss:
        up = await proxy_hub.fetch(
            "/user/alice/echo",
            alice,
            method="PUT",
            body_producer=produce,
            headers={"Content-Length": str(size)},
            request_timeout=120,
        )
    assert up.code == 200, up.body
    assert body(up)["body_sha256"] == expected.hexdigest()

    # The shared test client refuses bodies over 100 MB; this one takes any size.
    big = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_body_size=2 * size)
    for length in ("", "1"):
        received = hashlib.sha256()
        count = 0

        def collect(chunk: bytes, received: Any = received) -> None:
            nonlocal count
            received.update(chunk)
            count += len(chunk)

        with PeakRss() as download_rss:
            down = await big.fetch(
                f"{proxy_hub.url}/user/alice/download?size={size}&length={length}",
                headers=alice._headers(),
                streaming_callback=collect,
                request_timeout=120,
            )
        assert down.code == 200 and count == size
        assert received.hexdigest() == expected.hexdigest()
        assert download_rss.growth < 50 * 1024 * 1024, download_rss.growth
    big.close()
    assert upload_rss.growth < 50 * 1024 * 1024, upload_rss.growth


# The fast path (front mode) -------------------------------------------------------------


async def test_allowed_requests_skip_the_hubs_handlers_when_the_front_runs(
    proxy_hub: ProxyHub, upstreams: dict[str, Upstream]
) -> None:
    alice = await proxy_hub.browser("alice")
    for _ in range(3):
        assert (await proxy_hub.fetch("/user/alice/echo", alice)).code == 200
    target = upstreams["alice"].target
    tornado_pool = proxy_hub.pool._pools[0]
    if proxy_hub.front is None:
        assert tornado_pool.idle_connections(target) == 1
    else:
        # Straight from the front to the server, on one kept-alive connection.
        assert proxy_hub.front.pool.idle_connections(target) == 1
        assert tornado_pool.idle_connections(target) == 0


async def test_a_logged_out_session_stops_passing_within_the_cache_bound(
    proxy_hub: ProxyHub, upstreams: dict[str, Upstream]
) -> None:
    proxy_hub.route(upstreams["bob"], user="carol", user_id=proxy_hub.ids["carol"], server_id=8)
    browser = Browser(proxy_hub.running)  # a session of its own, not the module's
    assert (await browser.login("carol", PASSWORD)).code == 302
    cookie = browser._headers()["Cookie"]
    answer = await proxy_hub.fetch("/user/carol/echo", headers={"Cookie": cookie})
    assert answer.code == 200
    assert (await browser.post("/hub/logout", {})).code == 302
    logged_out = time.monotonic()
    while True:
        answer = await proxy_hub.fetch("/user/carol/echo", headers={"Cookie": cookie})
        if answer.code != 200:
            break
        assert time.monotonic() - logged_out < AUTH_TTL + 0.5, "still passing after logout"
        await asyncio.sleep(0.05)
    assert answer.code == 401


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response off a kept-alive connection: its status and its body."""
    raw_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = raw_head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if fields.get("transfer-encoding", "").lower() == "chunked":
        payload = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            payload += await reader.readexactly(size + 2)
            if size == 0:
                return int(lines[0].split()[1]), payload
    length = int(fields.get("content-length", "0"))
    return int(lines[0].split()[1]), await reader.readexactly(length)


async def test_a_repeated_request_on_one_connection_is_judged_again_each_time(
    proxy_hub: ProxyHub,
) -> None:
    """The front reuses its reading of a repeated head; never a stale decision."""
    browser = Browser(proxy_hub.running)  # a session of its own, to log out below
    assert (await browser.login("alice", PASSWORD)).code == 302
    request = head("GET", "/user/alice/echo", cookie_line(browser))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_hub.port)
    try:

        async def send() -> int:
            nonlocal reader, writer
            writer.write(request)
            await writer.drain()
            try:
                return (await read_response(reader))[0]
            except asyncio.IncompleteReadError:
                # tornado alone closes after a refusal; the front keeps the connection.
                assert proxy_hub.front is None, "the front dropped a kept-alive connection"
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy_hub.port)
                return await send()

        assert [await send(), await send(), await send()] == [200, 200, 200]
        removed = proxy_hub.routes.remove(1)
        assert removed is not None
        assert await send() == 503  # the same bytes, the route gone: the hub's page
        proxy_hub.routes.add(removed)
        assert await send() == 200
        assert (await browser.post("/hub/logout", {})).code == 302
        logged_out = time.monotonic()
        while (status := await send()) == 200:
            assert time.monotonic() - logged_out < AUTH_TTL + 0.5, "still passing after logout"
            await asyncio.sleep(0.05)
        assert status == 401
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order_on_one_connection(
    proxy_hub: ProxyHub,
) -> None:
    alice = await proxy_hub.browser("alice")
    requests = b"".join(
        head("GET", f"/user/alice/echo?n={n}", cookie_line(alice)) for n in range(3)
    )
    requests += head("GET", "/user/alice/echo?n=last", cookie_line(alice), "Connection: close")
    response = await raw_request(proxy_hub.port, requests)
    assert response.count(b"HTTP/1.1 200") == 4
    uris = [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1", 1)[0])["uri"]
            for part in response.split(b"HTTP/1.1 200 OK")[1:]]
    assert uris == [f"/user/alice/echo?n={n}" for n in ("0", "1", "2", "last")]


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
async def test_a_clients_claims_about_its_own_address_are_not_believed(
    proxy_hub: ProxyHub, version: str
) -> None:
    alice = await proxy_hub.browser("alice")
    request = head(
        "GET",
        "/user/alice/echo",
        cookie_line(alice),
        "X-Real-Ip: 6.6.6.6",
        "X-Forwarded-For: 6.6.6.6",
        "X-Forwarded-Proto: https",
        "Connection: close",
    ).replace(b"HTTP/1.1", version.encode(), 1)
    response = await raw_request(proxy_hub.port, request)
    seen = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert seen["headers"]["X-Forwarded-For"] == ["127.0.0.1"]
    assert seen["headers"]["X-Forwarded-Proto"] == ["http"]
    assert "X-Real-Ip" not in seen["headers"]


async def test_removing_a_route_drops_its_pooled_connections_in_both_pools(
    proxy_hub: ProxyHub, upstreams: dict[str, Upstream]
) -> None:
    forgotten: list[int] = []
    alice = await proxy_hub.browser("alice")
    assert (await proxy_hub.fetch("/user/alice/echo", alice)).code == 200
    target = upstreams["alice"].target
    assert proxy_hub.pool.idle_connections(target) >= 1

    def forget(route: Route) -> None:
        proxy_hub.pool._pools[0].discard(route.target)
        if proxy_hub.front is not None:
            proxy_hub.front.pool.discard(route.target)
        forgotten.append(route.server_id)

    proxy_hub.routes.on_remove(forget)
    try:
        proxy_hub.routes.remove(1)
    finally:
        proxy_hub.routes._on_remove.remove(forget)
    assert forgotten == [1]
    assert proxy_hub.pool.idle_connections(target) == 0
