"""The proxy under attack, on both of its paths: the front (the public port) and the hub's
own ``/user/`` handlers.

A real hub (``build_hub``: the same wiring as ``labdock serve``) proxies to a real
user server, ``tests/upstream_app.py``, run here as a plain process on loopback:
what is tested is the hub, and the server needs only tornado. Every test runs
once through the front (``Hub.listen``) and once straight to the tornado
application, which is where the front sends everything it does not pass itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import tornado.httpclient
from sqlalchemy import text
from tornado.websocket import WebSocketClientConnection, websocket_connect

from hub.app import Hub, build_hub
from hub.config import BackendSettings, CapacitySettings, DbSettings, HubSettings, Settings
from hub.domain.routes import Route
from tests.conftest import SESSION_HUBS, RunningHub, fresh_database, listening
from tests.test_web import Browser

APP = Path(__file__).with_name("upstream_app.py")
PASSWORD = "correct horse"
# The promise under test: an open tunnel or stream ends this soon after its grant.
BOUND = 2.0

pytestmark = pytest.mark.asyncio(loop_scope="module")


# The user server: tests/upstream_app.py as a local process --------------------------


@dataclass(frozen=True)
class Upstream:
    target: str
    secret: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    """bob's server, listening on a free loopback port for the whole module."""
    port, secret = free_port(), secrets.token_hex(16)
    env = {**os.environ, "LABDOCK_PORT": str(port), "LABDOCK_SECRET": secret}
    env["LABDOCK_NAME"] = "bob"
    process = subprocess.Popen([sys.executable, str(APP)], env=env)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("tests/upstream_app.py never listened") from None
                time.sleep(0.05)
        yield Upstream(f"http://127.0.0.1:{port}", secret)
    finally:
        process.terminate()
        process.wait(10)


# The hub ----------------------------------------------------------------------------


@dataclass
class SecurityHub:
    """One hub for the module, reachable both ways, with users and bob's server routed."""

    built: Hub
    urls: dict[str, str]
    upstream: Upstream
    ids: dict[str, int] = field(default_factory=dict)
    admin_token: str = ""

    def route(self) -> Route:
        return Route(
            user="bob",
            server="",
            user_id=self.ids["bob"],
            server_id=2,
            target=self.upstream.target,
            secret=self.upstream.secret,
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, docker_client: Any
) -> AsyncIterator[SecurityHub]:
    data = tmp_path_factory.mktemp("security-hub")
    hub_id = "t" + secrets.token_hex(5)
    SESSION_HUBS.add(hub_id)
    with fresh_database(data) as db_url:
        settings = Settings(
            hub=HubSettings(data_dir=data, cookie_secret="test-" + "x" * 40, id=hub_id),
            db=DbSettings(url=db_url),
            backend=BackendSettings(labels="labdock.test=1", runtime_volumes="off"),
            capacity=CapacitySettings(gpus=""),
        )
        async with build_hub(settings) as built:
            front = await built.listen(0, "127.0.0.1")
            async with listening(built) as direct:
                hub = SecurityHub(
                    built, {"front": f"http://127.0.0.1:{front}", "tornado": direct.url}, upstream
                )
                accounts = built.deps.accounts
                for name in ("alice", "bob", "carol"):
                    user, _ = await accounts.create_user(name, PASSWORD)
                    hub.ids[name] = user.id
                root, _ = await accounts.create_user("root", PASSWORD, is_admin=True)
                hub.ids["root"] = root.id
                hub.admin_token = await accounts.create_token(
                    root, scopes=frozenset({"admin:users", "access:servers"})
                )
                yield hub


@dataclass
class Way:
    """The hub as one path reaches it."""

    hub: SecurityHub
    path: str

    @property
    def url(self) -> str:
        return self.hub.urls[self.path]

    @property
    def running(self) -> RunningHub:
        return RunningHub(self.hub.built, self.url)

    async def fetch(self, path: str, **kwargs: Any) -> tornado.httpclient.HTTPResponse:
        return await self.running.fetch(path, **kwargs)

    async def browser(self, name: str) -> Browser:
        """A fresh browser session of ``name``: each test revokes its own."""
        browser = Browser(self.running)
        assert (await browser.login(name, PASSWORD)).code == 302
        return browser

    async def token(self, name: str) -> str:
        accounts = self.hub.built.deps.accounts
        return await accounts.create_token(await accounts.get(name))

    async def ws(self, path: str, **headers: str) -> WebSocketClientConnection:
        request = tornado.httpclient.HTTPRequest(
            self.url.replace("http", "ws", 1) + path, headers=headers
        )
        return await websocket_connect(request)

    async def admin(self, method: str, path: str, payload: Any) -> Any:
        response = await self.fetch(
            path,
            method=method,
            body=json.dumps(payload),
            headers={"Authorization": f"token {self.hub.admin_token}"},
        )
        assert response.code == 200, response.body
        return json.loads(response.body)

    async def sql(self, statement: str, **params: Any) -> None:
        """Change the DB behind the hub's back, as the CLI (another process) does."""
        async with self.hub.built.engine.begin() as conn:
            await conn.execute(text(statement), params)


@pytest_asyncio.fixture(loop_scope="module", params=["front", "tornado"])
async def way(request: pytest.FixtureRequest, shared: SecurityHub) -> AsyncIterator[Way]:
    built = shared.built
    built.routes.admin_access = False
    built.routes.add(shared.route())
    for name in ("alice", "bob", "carol"):
        user = await built.deps.accounts.get(name)
        if user.disabled:
            await built.deps.accounts.update(user, disabled=False)
    yield Way(shared, request.param)
    built.routes.admin_access = False


def cookie(browser: Browser) -> dict[str, str]:
    return {"Cookie": browser._headers()["Cookie"]}


async def echoes(conn: WebSocketClientConnection) -> None:
    await conn.write_message("ls")
    assert await asyncio.wait_for(conn.read_message(), 5) == "ls"


async def closes_within(conn: WebSocketClientConnection, bound: float = BOUND) -> float:
    """Seconds until the hub closed the socket; fails if it is still open after ``bound``."""
    started = time.monotonic()
    try:
        message = await asyncio.wait_for(conn.read_message(), bound)
    except TimeoutError:
        raise AssertionError(f"the socket is still open {bound} s after the revocation") from None
    assert message is None, f"the socket still relays: {message!r}"
    return time.monotonic() - started


# 1. Open connections end with their grant ------------------------------------------------


async def test_logging_out_closes_an_open_terminal_socket_within_2_s(way: Way) -> None:
    bob = await way.browser("bob")
    conn = await way.ws("/user/bob/terminals/websocket/1/ws", **cookie(bob))
    await echoes(conn)
    assert (await bob.post("/hub/logout", {})).code == 302
    await closes_within(conn)


async def test_disabling_a_user_through_the_api_closes_their_sockets_within_2_s(
    way: Way,
) -> None:
    bob = await way.browser("bob")
    by_session = await way.ws("/user/bob/ws", **cookie(bob))
    by_token = await way.ws("/user/bob/ws", Authorization=f"token {await way.token('bob')}")
    for conn in (by_session, by_token):
        await echoes(conn)
    await way.admin("PATCH", "/hub/api/users/bob", {"disabled": True})
    for conn in (by_session, by_token):
        await closes_within(conn)


async def test_sessions_ended_by_another_process_close_their_sockets_within_2_s(
    way: Way,
) -> None:
    """A password change ends the user's other sessions; the CLI deletes rows likewise."""
    bob = await way.browser("bob")
    conn = await way.ws("/user/bob/ws", **cookie(bob))
    await echoes(conn)
    await way.sql("DELETE FROM sessions WHERE user_id = :id", id=way.hub.ids["bob"])
    await closes_within(conn)


async def test_a_revoked_token_closes_its_sockets_within_2_s(way: Way) -> None:
    token = await way.token("bob")
    conn = await way.ws("/user/bob/ws", Authorization=f"token {token}")
    await echoes(conn)
    await way.sql("DELETE FROM api_tokens WHERE user_id = :id", id=way.hub.ids["bob"])
    await closes_within(conn)


async def test_stopping_the_server_closes_its_sockets_at_once(way: Way) -> None:
    bob = await way.browser("bob")
    conn = await way.ws("/user/bob/ws", **cookie(bob))
    await echoes(conn)
    assert way.hub.built.routes.remove(2) is not None
    assert await closes_within(conn) < 1.0  # the route table says so at once: no sweep


async def test_logging_out_cuts_a_streaming_response_within_2_s(way: Way) -> None:
    bob = await way.browser("bob")
    host = way.url.removeprefix("http://")
    reader, writer = await asyncio.open_connection(*host.split(":"))
    try:
        writer.write(
            f"GET /user/bob/stall HTTP/1.1\r\nHost: {host}\r\n"
            f"Cookie: {cookie(bob)['Cookie']}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"first piece"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert (await bob.post("/hub/logout", {})).code == 302
        try:
            rest = await asyncio.wait_for(reader.read(), BOUND)
        except ConnectionResetError:
            rest = b""
        except TimeoutError:
            raise AssertionError(f"the body still streams {BOUND} s after logging out") from None
        assert not rest.endswith(b"0\r\n\r\n")  # cut, never a clean end of the body
    finally:
        writer.close()


async def test_a_socket_whose_grant_stands_outlives_sweeps_and_a_route_re_added(
    way: Way,
) -> None:
    bob = await way.browser("bob")
    conn = await way.ws("/user/bob/ws", **cookie(bob))
    way.hub.built.routes.add(way.hub.route())  # the hub's reconcile re-adds it as it was
    await asyncio.sleep(2.5)
    await echoes(conn)
    conn.close()


# 2. and 4. Who may open a server, and what everyone else is told -------------------------


async def test_admins_may_not_open_other_users_servers_unless_the_setting_says_so(
    way: Way,
) -> None:
    root, carol = await way.browser("root"), await way.browser("carol")
    stranger = await way.fetch("/user/bob/echo", headers=cookie(carol))
    token = {"Authorization": f"token {way.hub.admin_token}"}
    for headers in (cookie(root), token):
        refused = await way.fetch("/user/bob/echo", headers=headers)
        assert (refused.code, refused.body) == (404, stranger.body)
    with pytest.raises(tornado.httpclient.HTTPClientError) as ws_refused:
        await way.ws("/user/bob/ws", **cookie(root))
    assert ws_refused.value.code == 404

    way.hub.built.routes.admin_access = True
    for headers in (cookie(root), token):
        allowed = await way.fetch("/user/bob/echo", headers=headers)
        assert allowed.code == 200 and json.loads(allowed.body)["name"] == "bob"


async def test_running_stopped_and_missing_servers_of_others_look_the_same(way: Way) -> None:
    carol = await way.browser("carol")
    answers = []
    for path in ("/user/bob/echo", "/user/alice/echo", "/user/nobody/echo"):
        for accept in ("application/json", "text/html"):
            headers = {**cookie(carol), "Accept": accept}
            response = await way.fetch(path, headers=headers)
            answers.append((accept, response.code, response.body))
    json_answers = {a for a in answers if a[0] == "application/json"}
    # Each page masks its XSRF token afresh (tornado); everything else must be the same.
    html_answers = {
        (a[0], a[1], re.sub(rb'name="_xsrf" value="[^"]*"', b"", a[2]))
        for a in answers
        if a[0] == "text/html"
    }
    assert len(json_answers) == 1 and len(html_answers) == 1, answers
    (_, code, body), *_ = json_answers
    assert code == 404
    assert json.loads(body)["message"] == "There is no server you may open at this address."
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await way.ws("/user/bob/ws", **cookie(carol))
    assert refused.value.code == 404
    # The owner of a stopped server is still told so, and how to start it.
    alice = await way.browser("alice")
    own = await way.fetch("/user/alice/echo", headers=cookie(alice))
    assert own.code == 503 and json.loads(own.body)["message"] == "alice's server is not running."


# 5. and 6. What reaches the server, and from where --------------------------------------


async def test_the_hubs_xsrf_token_never_reaches_the_server(way: Way) -> None:
    bob = await way.browser("bob")
    headers = {**cookie(bob), "X-XSRFToken": "hub-secret", "X-CSRFToken": "apps-own"}
    response = await way.fetch("/user/bob/echo", headers=headers)
    seen = json.loads(response.body)["headers"]
    assert "X-Xsrftoken" not in seen and "X-XSRFToken" not in seen
    assert "_xsrf" not in "".join(seen.get("Cookie", []))
    assert seen["X-Csrftoken"] == ["apps-own"]


async def test_a_websocket_origin_must_match_the_hubs_scheme_host_and_port(way: Way) -> None:
    bob = await way.browser("bob")
    netloc = way.url.removeprefix("http://")
    for origin in (f"https://{netloc}", f"http://127.0.0.1:{free_port()}", "http://localhost"):
        with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
            await way.ws("/user/bob/ws", Origin=origin, **cookie(bob))
        assert refused.value.code == 403, origin
    posted = await way.fetch(
        "/user/bob/echo",
        method="POST",
        body=b"x",
        headers={**cookie(bob), "Origin": f"https://{netloc}"},
    )
    assert posted.code == 403
    conn = await way.ws("/user/bob/ws", Origin=way.url, **cookie(bob))
    await echoes(conn)
    conn.close()


# 3. Slow and piled-up connections on the public port ------------------------------------


@contextlib.asynccontextmanager
async def front_with(with_settings: Any, **hub: Any) -> AsyncIterator[int]:
    """A hub with these ``[hub]`` settings, listening through its front; yields the port."""
    async with build_hub(with_settings(hub=hub)) as built:
        yield await built.listen(0, "127.0.0.1")


async def trickle(port: int, data: bytes, every: float) -> tuple[bytes, float]:
    """Send ``data`` a byte at a time; return what came back and when the hub hung up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in data:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(every)

    sending = asyncio.create_task(send())
    try:
        answer = await asyncio.wait_for(reader.read(), 30)
    except ConnectionResetError:
        answer = b""
    elapsed = time.monotonic() - started
    sending.cancel()
    writer.close()
    return answer, elapsed


async def test_a_request_head_trickled_a_byte_at_a_time_is_cut_at_the_head_deadline(
    with_settings: Any,
) -> None:
    endless = b"GET /hub/login HTTP/1.1\r\nHost: hub\r\nX-Slow: " + b"a" * 1000
    async with front_with(with_settings, request_head_timeout=1.5) as port:
        results = await asyncio.gather(*(trickle(port, endless, 0.2) for _ in range(20)))
        for answer, elapsed in results:
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert 1.3 < elapsed < 3.0, elapsed  # each byte did not put the deadline off
        # A connection that sends nothing at all is let go by the same deadline.
        silent, elapsed = await trickle(port, b"", 0.2)
        assert silent == b"" and 1.3 < elapsed < 3.0
        # A slow head that ends in time passes; so does the next one on that connection.
        whole = b"GET /hub/login HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n"
        answer, _ = await trickle(port, whole, 1.0 / len(whole))
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


async def test_connections_beyond_the_cap_for_one_address_get_429_and_are_closed(
    with_settings: Any,
) -> None:
    async with front_with(with_settings, max_connections_per_client=4) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refused = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert refused.startswith(b"HTTP/1.1 429 ") and b"too many connections" in refused
        held.pop()[1].close()
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /hub/login HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200 ")
        writer.close()
        for _, held_writer in held:
            held_writer.close()


async def test_the_admin_access_setting_reaches_the_proxy(with_settings: Any) -> None:
    async with build_hub(with_settings(hub={"admin_access": True})) as built:
        assert built.routes.admin_access
    async with build_hub(with_settings()) as built:
        assert not built.routes.admin_access
