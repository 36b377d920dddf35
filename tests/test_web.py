"""The hub over real HTTP: login, sessions, XSRF, safe redirects, health."""

from __future__ import annotations

from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest

from hub.app import build_hub
from hub.web.pages import safe_next
from tests.conftest import RunningHub


class Browser:
    """Just enough of a browser: keeps cookies, posts forms with the XSRF token."""

    def __init__(self, hub: RunningHub) -> None:
        self.hub = hub
        self.cookies: dict[str, str] = {}

    def _remember(self, response) -> None:  # type: ignore[no-untyped-def]
        for header in response.headers.get_list("Set-Cookie"):
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            for key, morsel in jar.items():
                if (morsel["expires"] and "1970" in morsel["expires"]) or morsel.value == "":
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = morsel.value

    async def get(self, path: str):  # type: ignore[no-untyped-def]
        response = await self.hub.fetch(path, headers=self._headers())
        self._remember(response)
        return response

    async def post(self, path: str, form: dict[str, str], xsrf: bool = True):  # type: ignore[no-untyped-def]
        if "_xsrf" not in self.cookies:
            await self.get("/hub/login")
        body = dict(form)
        if xsrf:
            body["_xsrf"] = self.cookies["_xsrf"]
        response = await self.hub.fetch(
            path, method="POST", body=urlencode(body), headers=self._headers()
        )
        self._remember(response)
        return response

    def _headers(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    async def login(self, username: str, password: str, next_url: str = ""):  # type: ignore[no-untyped-def]
        form = {"username": username, "password": password}
        if next_url:
            form["next"] = next_url
        return await self.post("/hub/login", form)


async def make_user(hub: RunningHub, name: str, password: str = "correct horse") -> None:
    await hub.hub.deps.accounts.create_user(name, password)


async def test_root_sends_visitors_to_the_login_page(hub_server: RunningHub) -> None:
    response = await hub_server.fetch("/")
    assert response.code == 302
    assert response.headers["Location"] == "/hub/login"
    page = await hub_server.fetch("/hub/login")
    assert page.code == 200
    assert b'name="password"' in page.body and b'name="_xsrf"' in page.body


async def test_home_without_session_redirects_to_login_with_next(hub_server: RunningHub) -> None:
    response = await hub_server.fetch("/hub/home")
    assert response.code == 302
    assert response.headers["Location"] == "/hub/login?next=%2Fhub%2Fhome"


async def test_login_sets_an_httponly_samesite_session_and_shows_home(
    hub_server: RunningHub,
) -> None:
    await make_user(hub_server, "alice")
    browser = Browser(hub_server)
    response = await browser.login("alice", "correct horse")
    assert response.code == 302 and response.headers["Location"] == "/hub/home"
    cookie = next(c for c in response.headers.get_list("Set-Cookie") if "labdock-session" in c)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    home = await browser.get("/hub/home")
    assert home.code == 200 and b"alice" in home.body


async def test_wrong_password_shows_the_form_again_with_a_reason(hub_server: RunningHub) -> None:
    await make_user(hub_server, "alice")
    browser = Browser(hub_server)
    response = await browser.login("alice", "not the password")
    assert response.code == 401
    assert b"wrong username or password" in response.body
    assert "labdock-session" not in browser.cookies


async def test_hostile_username_on_login_is_escaped_in_the_page(hub_server: RunningHub) -> None:
    browser = Browser(hub_server)
    response = await browser.login("<script>alert(1)</script>", "whatever1")
    assert response.code == 401
    assert b"<script>alert(1)" not in response.body


async def test_login_without_xsrf_token_is_refused(hub_server: RunningHub) -> None:
    await make_user(hub_server, "alice")
    browser = Browser(hub_server)
    response = await browser.post(
        "/hub/login", {"username": "alice", "password": "correct horse"}, xsrf=False
    )
    assert response.code == 403
    assert "labdock-session" not in browser.cookies


async def test_logout_revokes_the_session_even_if_the_cookie_is_replayed(
    hub_server: RunningHub,
) -> None:
    await make_user(hub_server, "alice")
    browser = Browser(hub_server)
    await browser.login("alice", "correct horse")
    stolen = dict(browser.cookies)
    await browser.post("/hub/logout", {})
    browser.cookies = stolen
    response = await browser.get("/hub/home")
    assert response.code == 302 and response.headers["Location"].startswith("/hub/login")


async def test_one_time_password_forces_a_new_password_first(hub_server: RunningHub) -> None:
    _, one_time = await hub_server.hub.deps.accounts.create_user("bob")
    assert one_time
    browser = Browser(hub_server)
    response = await browser.login("bob", one_time)
    assert response.headers["Location"] == "/hub/password"
    assert (await browser.get("/hub/home")).headers["Location"] == "/hub/password"
    mismatch = await browser.post(
        "/hub/password", {"current": one_time, "new": "a fine password", "confirm": "another"}
    )
    assert mismatch.code == 400 and b"differ" in mismatch.body
    done = await browser.post(
        "/hub/password",
        {"current": one_time, "new": "a fine password", "confirm": "a fine password"},
    )
    assert done.code == 302 and done.headers["Location"] == "/hub/home"
    assert (await browser.get("/hub/home")).code == 200


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "https://evil.example/",
        "https://hub//evil",
        "/%2F%2Fevil.example",
        "%2F%2Fevil.example",
        "/%5Cevil.example",
        "/\tevil",
        "javascript:alert(1)",
        "",
    ],
)
def test_next_never_leaves_the_hub(target: str) -> None:
    assert safe_next(target) == "/hub/home"


@pytest.mark.parametrize("target", ["/user/alice/", "/user/alice/lab/tree?x=1", "/hub/home"])
def test_next_keeps_local_paths(target: str) -> None:
    assert safe_next(target) == target


async def test_login_with_an_open_redirect_next_lands_at_home(hub_server: RunningHub) -> None:
    await make_user(hub_server, "alice")
    response = await Browser(hub_server).login("alice", "correct horse", next_url="//evil.example")
    assert response.headers["Location"] == "/hub/home"


async def test_health_reports_db_and_engine_ok(hub_server: RunningHub) -> None:
    response = await hub_server.fetch("/hub/health")
    assert response.code == 200
    assert response.body == b'{"db": "ok", "backend": "ok"}'


async def test_health_is_503_naming_the_engine_when_it_is_unreachable(with_settings) -> None:  # type: ignore[no-untyped-def]
    import tornado.httpserver
    import tornado.testing

    from tests.conftest import RunningHub as Running

    settings = with_settings(backend={"docker_host": "unix:///nonexistent/docker.sock"})
    async with build_hub(settings) as built:
        sock, port = tornado.testing.bind_unused_port()
        server = tornado.httpserver.HTTPServer(built.app)
        server.add_sockets([sock])
        try:
            response = await Running(built, f"http://127.0.0.1:{port}").fetch("/hub/health")
        finally:
            server.stop()
    assert response.code == 503
    import json

    body = json.loads(response.body)
    assert body["db"] == "ok"
    assert body["backend"].startswith("down: cannot reach the Docker engine")


async def test_unknown_api_path_answers_json_404(hub_server: RunningHub) -> None:
    response = await hub_server.fetch("/hub/api/nothing-here")
    assert response.code == 404
    assert response.headers["Content-Type"].startswith("application/json")
    assert b"no such API path" in response.body


async def test_api_root_gives_the_version(hub_server: RunningHub) -> None:
    response = await hub_server.fetch("/hub/api/")
    assert response.code == 200 and b'"version"' in response.body


async def test_pages_send_protective_headers(hub_server: RunningHub) -> None:
    response = await hub_server.fetch("/hub/login")
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_repeated_failed_logins_back_off_that_address_with_a_clear_message(
    hub_server: RunningHub, caplog: pytest.LogCaptureFixture
) -> None:
    # The owner elsewhere is not locked out: see tests/test_login_throttle.py.
    await make_user(hub_server, "alice")
    browser = Browser(hub_server)
    for _ in range(3):
        assert (await browser.login("alice", "wrong guess")).code == 401
    locked = await browser.login("alice", "correct horse")
    assert locked.code == 429
    assert b"too many failed logins for this account from your address; try again in" in (
        locked.body
    )
    assert 1 <= int(locked.headers["Retry-After"]) <= 2  # the first wait: 2 seconds
    other = Browser(hub_server)
    await make_user(hub_server, "bob")
    assert (await other.login("bob", "correct horse")).code == 302  # others are not locked out


async def test_failed_login_logs_the_username_truncated_and_escaped(
    hub_server: RunningHub, caplog: pytest.LogCaptureFixture
) -> None:
    hostile = "evil\nINFO forged line" + "x" * 100
    await Browser(hub_server).login(hostile, "whatever1")
    [line] = [r.getMessage() for r in caplog.records if "failed login" in r.getMessage()]
    assert "\n" not in line and "\\n" in line
    assert "x" * 40 not in line
