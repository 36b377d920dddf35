"""The browser session's defences: XSRF bound to the session, the hub's own Origin for
API writes, no framing, the forced password change, audit flooding, disabled users."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import docker
from tornado.httputil import HTTPHeaders

from tests.busybox_image import ensure_test_image
from tests.conftest import RunningHub
from tests.test_permissions import PASSWORD, Caller, session_of
from tests.test_servers_api import busybox_env, containers
from tests.test_web import Browser


async def admin_browser(hub: RunningHub) -> Browser:
    await hub.hub.deps.accounts.create_user("root", PASSWORD, is_admin=True)
    return await session_of(hub, "root")


async def api_write(hub: RunningHub, browser: Browser, **headers: str) -> Any:
    base = {"Cookie": "; ".join(f"{k}={v}" for k, v in browser.cookies.items())}
    return await hub.fetch(
        "/hub/api/users/zed", method="POST", body="{}", headers={**base, **headers}
    )


async def test_an_xsrf_token_of_the_callers_choosing_is_refused(hub_server: RunningHub) -> None:
    """Double-submit alone lets whoever can set the cookie pick the token: bound, it cannot."""
    browser = await admin_browser(hub_server)
    chosen = "2|deadbeef|00112233445566778899aabbccddeeff|1700000000"
    browser.cookies["_xsrf"] = chosen
    forged = await api_write(
        hub_server, browser, **{"X-XSRFToken": chosen, "Origin": hub_server.url}
    )
    assert forged.code == 403 and b"xsrf" in forged.body.lower()
    form = await hub_server.fetch(
        "/hub/admin/users?_xsrf=" + chosen,
        method="POST",
        body="name=zed",
        headers=browser._headers(),
    )
    assert form.code == 403
    assert (await hub_server.hub.deps.accounts.all_users())[-1].name == "root"


async def test_the_session_token_is_handed_over_at_login_and_works(hub_server: RunningHub) -> None:
    browser = await admin_browser(hub_server)
    token = browser.cookies["_xsrf"]
    ok = await api_write(hub_server, browser, **{"X-XSRFToken": token, "Origin": hub_server.url})
    assert ok.code == 201, ok.body
    # Another session of the same user gets another token; neither works for the other.
    other = await session_of(hub_server, "root")
    assert other.cookies["_xsrf"] != token
    crossed = await api_write(hub_server, other, **{"X-XSRFToken": token, "Origin": hub_server.url})
    assert crossed.code == 403


async def test_cookie_api_writes_need_the_hubs_own_origin(hub_server: RunningHub) -> None:
    browser = await admin_browser(hub_server)
    token = browser.cookies["_xsrf"]
    host = hub_server.url.removeprefix("http://")
    for origin in (None, "null", f"https://{host}", "http://evil.example", f"http://{host}.evil"):
        headers = {"X-XSRFToken": token}
        if origin is not None:
            headers["Origin"] = origin
        response = await api_write(hub_server, browser, **headers)
        assert response.code == 403, (origin, response.body)
    # A sibling host of the same site is refused too, whatever its Origin says.
    same_site = await api_write(
        hub_server,
        browser,
        **{"X-XSRFToken": token, "Origin": hub_server.url, "Sec-Fetch-Site": "same-site"},
    )
    assert same_site.code == 403
    assert [u.name for u in await hub_server.hub.deps.accounts.all_users()] == ["admin", "root"]


async def test_no_hub_page_or_answer_may_be_framed(hub_server: RunningHub) -> None:
    browser = await admin_browser(hub_server)
    for path in ("/hub/login", "/hub/home", "/hub/admin/users", "/hub/api/users", "/hub/nope", "/"):
        response = await hub_server.fetch(path, headers=browser._headers())
        headers: HTTPHeaders = response.headers
        assert headers.get("X-Frame-Options") == "DENY", path
        assert "frame-ancestors 'none'" in headers.get("Content-Security-Policy", ""), path


async def test_a_session_that_must_change_its_password_can_only_change_it(
    hub_server: RunningHub,
) -> None:
    accounts = hub_server.hub.deps.accounts
    _, one_time = await accounts.create_user("newbie")
    assert one_time
    browser = Browser(hub_server)
    await browser.login("newbie", one_time)
    caller = Caller(hub_server, browser=browser)
    for method, path in (
        ("GET", "/users/newbie"),
        ("GET", "/environments"),
        ("POST", "/users/newbie/server"),
    ):
        response = await hub_server.fetch(
            "/hub/api" + path,
            method=method,
            headers=caller.headers(method),
            body="{}" if method == "POST" else None,
        )
        assert response.code == 403, (path, response.body)
        assert b"/hub/password" in response.body
    changed = await browser.post(
        "/hub/password", {"current": one_time, "new": "a new password", "confirm": "a new password"}
    )
    assert changed.code in (200, 302), changed.body
    assert (await hub_server.fetch("/hub/api/users/newbie", headers=browser._headers())).code == 200


async def test_a_flood_of_bad_tokens_writes_one_audit_row_a_minute_per_address(
    hub_server: RunningHub,
) -> None:
    for _ in range(200):
        response = await hub_server.fetch(
            "/hub/api/users", headers={"Authorization": "token ldk_" + "x" * 40}
        )
        assert response.code == 401
    await asyncio.sleep(0.5)  # refusals are written after the answer
    rows = [e for e in await hub_server.hub.deps.audit.recent(500) if e.action == "token"]
    assert len(rows) == 1, rows
    # The next window's row says how many were held back.
    digest = hub_server.hub.deps.refusals
    digest._window = 0.0
    await hub_server.fetch("/hub/api/users", headers={"Authorization": "token ldk_" + "y" * 40})
    await asyncio.sleep(0.5)
    rows = [e for e in await hub_server.hub.deps.audit.recent(500) if e.action == "token"]
    assert len(rows) == 2 and rows[0].detail["held_back"] == 199


async def test_disabling_a_user_stops_their_servers_with_the_reason_and_keeps_the_volume(
    hub_server: RunningHub, docker_client: docker.DockerClient, hub_id: str
) -> None:
    image = ensure_test_image(docker_client)
    await hub_server.hub.deps.catalog.add(busybox_env(image))  # type: ignore[attr-defined]
    accounts = hub_server.hub.deps.accounts
    bob, _ = await accounts.create_user("bob", PASSWORD)
    root, _ = await accounts.create_user("root", PASSWORD, is_admin=True)
    bob_token = await accounts.create_token(bob)
    launched = await hub_server.fetch(
        "/hub/api/users/bob/server",
        method="POST",
        headers={"Authorization": f"token {bob_token}"},
        body=json.dumps({"environment": "busybox"}),
        request_timeout=120,
    )
    assert launched.code == 201, launched.body
    assert (
        await hub_server.fetch("/user/bob/", headers={"Authorization": f"token {bob_token}"})
    ).code == 200
    root_token = await accounts.create_token(root, scopes=frozenset({"admin:users"}))
    disabled = await hub_server.fetch(
        "/hub/api/users/bob",
        method="PATCH",
        headers={"Authorization": f"token {root_token}"},
        body=json.dumps({"disabled": True}),
    )
    assert disabled.code == 200, disabled.body
    # The path is cut at once; the container stops within its grace period.
    [record] = await hub_server.hub.deps.servers.of_user(bob.id)
    assert hub_server.hub.routes.get(record.id) is None
    for _ in range(100):
        [record] = await hub_server.hub.deps.servers.of_user(bob.id)
        if record.state.value == "stopped":
            break
        await asyncio.sleep(0.1)
    assert record.state.value == "stopped"
    assert record.stopped_reason == "stopped: the account was disabled by an admin"
    [container] = containers(docker_client, hub_id)
    container.reload()
    assert container.status == "exited"
    volumes = docker_client.volumes.list(filters={"label": f"labdock.hub={hub_id}"})
    assert volumes, "the home volume stays"
