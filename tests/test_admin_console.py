"""The admin console over real HTTP against a real hub: every action, every refusal.

Users, teams and quotas, servers (on the real engine with the busybox image),
and the audit log; permission refusals, XSRF, cross-site posts and hostile
usernames. One flow runs in a real browser (Debian's chromium via Playwright).
"""

from __future__ import annotations

import asyncio
import json
import re
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import docker
import pytest
import pytest_asyncio

from hub.domain.audit import AuditEntry
from hub.domain.resources import GiB
from hub.web.base import BaseHandler
from tests.conftest import RunningHub
from tests.test_servers_api import busybox_env, test_image  # noqa: F401 - a fixture
from tests.test_web import Browser

ADMIN_PAGES = [
    "/hub/admin",
    "/hub/admin/users",
    "/hub/admin/teams",
    "/hub/admin/servers",
    "/hub/admin/audit",
]
PASSWORD = "correct horse"


def text_of(response: Any) -> str:
    """The page's text with tags removed and entities decoded, for plain assertions."""
    html = response.body.decode()
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


def one_time_password(response: Any) -> str:
    found = re.search(r'<code id="one-time-password">([^<]+)</code>', response.body.decode())
    assert found, "no one-time password on the page"
    return unescape(found.group(1))


async def admin_browser(hub: RunningHub, name: str = "root") -> Browser:
    await hub.hub.deps.accounts.create_user(name, PASSWORD, is_admin=True)
    browser = Browser(hub)
    assert (await browser.login(name, PASSWORD)).code == 302
    return browser


async def user_browser(hub: RunningHub, name: str) -> Browser:
    await hub.hub.deps.accounts.create_user(name, PASSWORD)
    browser = Browser(hub)
    assert (await browser.login(name, PASSWORD)).code == 302
    return browser


async def entries(hub: RunningHub, **filters: Any) -> list[AuditEntry]:
    """Audit entries, once the refusals written after their responses have landed."""
    await asyncio.gather(*list(BaseHandler._audit_writes), return_exceptions=True)
    audit = hub.hub.deps.audit
    for _ in range(50):
        found = await audit.page(limit=500, **filters)
        if found:
            return found
        await asyncio.sleep(0.05)
    return []


async def api(hub: RunningHub, token: str, method: str, path: str, body: Any = None) -> Any:
    kwargs: dict[str, Any] = {"method": method, "headers": {"Authorization": f"token {token}"}}
    if body is not None:
        kwargs["body"] = json.dumps(body)
    if method == "DELETE":
        kwargs["allow_nonstandard_methods"] = True
    return await hub.fetch("/hub/api" + path, request_timeout=120, **kwargs)


# Who gets in ------------------------------------------------------------------


@pytest.mark.parametrize("path", ADMIN_PAGES)
async def test_visitors_without_a_session_are_sent_to_log_in(
    hub_server: RunningHub, path: str
) -> None:
    response = await hub_server.fetch(path)
    assert response.code == 302
    assert response.headers["Location"] == "/hub/login?next=" + quote(path, safe="")


async def test_non_admins_get_a_403_page_on_every_page_and_action(hub_server: RunningHub) -> None:
    await hub_server.hub.deps.accounts.create_user("bob", PASSWORD)
    mallory = await user_browser(hub_server, "mallory")
    for path in ADMIN_PAGES:
        page = await mallory.get(path)
        assert page.code == 403 and "the admin console is for admins only" in text_of(page)
    for path, form in [
        ("/hub/admin/users", {"name": "eve"}),
        ("/hub/admin/users/mallory/make-admin", {}),
        ("/hub/admin/users/bob/disable", {}),
        ("/hub/admin/teams", {"name": "risk"}),
        ("/hub/admin/quotas/users/mallory", {"memory": "1T"}),
        ("/hub/admin/servers/1/stop", {}),
    ]:
        response = await mallory.post(path, form)
        assert response.code == 403, path
    accounts = hub_server.hub.deps.accounts
    assert not (await accounts.get("mallory")).is_admin
    assert not (await accounts.get("bob")).disabled
    assert "eve" not in [u.name for u in await accounts.all_users()]
    refused = await entries(hub_server, action="access", actor="mallory")
    assert {e.target for e in refused} >= {
        "/hub/admin/users",
        "/hub/admin/users/mallory/make-admin",
    }
    assert all(e.outcome == "refused" for e in refused)


async def test_a_non_admin_holding_admin_users_cannot_make_an_admin_by_page_or_api(
    hub_server: RunningHub,
) -> None:
    accounts = hub_server.hub.deps.accounts
    helper, _ = await accounts.create_user("helper", PASSWORD)
    await accounts.create_user("bob", PASSWORD)
    token = await accounts.create_token(helper, scopes=frozenset({"admin:users", "users"}))
    auth = {"Authorization": f"token {token}"}
    for path in ("/hub/admin/users/bob/make-admin", "/hub/admin/users/helper/make-admin"):
        page = await hub_server.fetch(path, method="POST", body="", headers=auth)
        assert page.code == 403
    assert (await hub_server.fetch("/hub/admin/users", headers=auth)).code == 403
    for name in ("bob", "helper"):
        response = await api(hub_server, token, "PATCH", f"/users/{name}", {"admin": True})
        assert response.code == 403
    created = await api(hub_server, token, "POST", "/users/eve", {"admin": True})
    assert created.code == 403 and b"only admins may do this" in created.body
    for name in ("bob", "helper"):
        assert not (await accounts.get(name)).is_admin
    refused = await entries(hub_server, actor="helper", outcome="refused")
    assert len(refused) >= 5


async def test_an_admins_token_limited_to_admin_users_cannot_edit_quotas_in_the_console(
    hub_server: RunningHub,
) -> None:
    accounts = hub_server.hub.deps.accounts
    root, _ = await accounts.create_user("root", PASSWORD, is_admin=True)
    token = await accounts.create_token(root, scopes=frozenset({"admin:users"}))
    auth = {"Authorization": f"token {token}"}
    assert (await hub_server.fetch("/hub/admin/users", headers=auth)).code == 200
    teams = await hub_server.fetch("/hub/admin/teams", headers=auth)
    assert teams.code == 403 and b"admin:quotas" in teams.body


# XSRF and cross-site posts ------------------------------------------------------


async def test_every_form_needs_the_xsrf_token_even_with_sec_fetch_mode_no_cors(
    hub_server: RunningHub,
) -> None:
    browser = await admin_browser(hub_server)
    await hub_server.hub.deps.accounts.create_user("bob", PASSWORD)
    cookies = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    for path, body in [
        ("/hub/admin/users", "name=eve"),
        ("/hub/admin/users/bob/disable", ""),
        ("/hub/admin/users/bob/make-admin", ""),
        ("/hub/admin/teams", "name=risk"),
        ("/hub/admin/servers/1/remove", ""),
    ]:
        for extra in ({}, {"Sec-Fetch-Mode": "no-cors"}, {"Sec-Fetch-Site": "same-origin"}):
            response = await hub_server.fetch(
                path, method="POST", body=body, headers={"Cookie": cookies, **extra}
            )
            assert response.code == 403, (path, extra)
            assert b"xsrf" in response.body.lower()
    accounts = hub_server.hub.deps.accounts
    bob = await accounts.get("bob")
    assert not bob.disabled and not bob.is_admin
    assert "eve" not in [u.name for u in await accounts.all_users()]
    assert await hub_server.hub.deps.teams.find("risk") is None
    refused = await entries(hub_server, action="xsrf")
    assert refused and refused[0].actor == "root" and refused[0].outcome == "refused"


async def test_a_cross_site_post_is_refused_even_with_a_valid_token(
    hub_server: RunningHub,
) -> None:
    browser = await admin_browser(hub_server)
    await hub_server.hub.deps.accounts.create_user("bob", PASSWORD)
    cookies = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    form = f"_xsrf={quote(browser.cookies['_xsrf'])}"
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        response = await hub_server.fetch(
            "/hub/admin/users/bob/make-admin",
            method="POST",
            body=form,
            headers={"Cookie": cookies, **headers},
        )
        assert response.code == 403, headers
    assert not (await hub_server.hub.deps.accounts.get("bob")).is_admin
    same = await hub_server.fetch(
        "/hub/admin/users/bob/make-admin",
        method="POST",
        body=form,
        headers={"Cookie": cookies, "Origin": hub_server.url, "Sec-Fetch-Site": "same-origin"},
    )
    assert same.code == 302
    assert (await hub_server.hub.deps.accounts.get("bob")).is_admin


# Users ----------------------------------------------------------------------------


async def test_admin_creates_a_user_in_a_team_and_sees_the_one_time_password_once(
    hub_server: RunningHub,
) -> None:
    browser = await admin_browser(hub_server)
    created = await browser.post("/hub/admin/users", {"name": "bob", "teams": "risk, ml"})
    assert created.code == 201
    assert created.headers["Cache-Control"] == "no-store"
    password = one_time_password(created)
    assert len(password) >= 12
    assert "shown only this once" in text_of(created)
    listing = await browser.get("/hub/admin/users")
    assert listing.code == 200 and password not in listing.body.decode()
    assert 'id="user-bob"' in listing.body.decode()
    bob = await hub_server.hub.deps.accounts.get("bob")
    assert await hub_server.hub.deps.teams.teams_of(bob.id) == ["ml", "risk"]
    first = Browser(hub_server)
    login = await first.login("bob", password)
    assert login.code == 302 and login.headers["Location"] == "/hub/password"
    [entry] = await entries(hub_server, action="user.create")
    assert (entry.actor, entry.target) == ("root", "bob")
    assert entry.detail["teams"] == ["ml", "risk"]


async def test_creating_a_user_that_exists_says_so_and_changes_nothing(
    hub_server: RunningHub,
) -> None:
    browser = await admin_browser(hub_server)
    await hub_server.hub.deps.accounts.create_user("bob", PASSWORD)
    again = await browser.post("/hub/admin/users", {"name": "bob", "teams": "risk"})
    assert again.code == 409 and "user 'bob' already exists" in text_of(again)
    assert await hub_server.hub.deps.teams.find("risk") is None
    assert (await Browser(hub_server).login("bob", PASSWORD)).code == 302


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("\u212aate", "it would become 'kate'"),
        ("../x", "1 to 32 characters"),
        ("<script>alert(1)</script>", "1 to 32 characters"),
        ("a" * 33, "1 to 32 characters"),
        ("Alice", "it would become 'alice'"),
        ("-rf", "not starting with '-' or '.'"),
        ("", "must not be empty"),
    ],
)
async def test_hostile_usernames_get_a_clear_error_and_lose_nothing(
    hub_server: RunningHub, name: str, message: str
) -> None:
    browser = await admin_browser(hub_server)
    await hub_server.hub.deps.accounts.create_user("kate", PASSWORD)
    before = [u.name for u in await hub_server.hub.deps.accounts.all_users()]
    response = await browser.post("/hub/admin/users", {"name": name, "teams": "risk"})
    assert response.code == 400
    assert message in text_of(response)
    body = response.body.decode()
    assert "<script>alert(1)" not in body
    if name:
        # The form keeps what was typed, escaped, so the admin can correct it.
        assert 'value="&lt;script&gt;' in body if "<" in name else name in unescape(body)
    after = [u.name for u in await hub_server.hub.deps.accounts.all_users()]
    assert after == before
    assert await hub_server.hub.deps.teams.find("risk") is None
    assert (await Browser(hub_server).login("kate", PASSWORD)).code == 302


async def test_a_bad_team_name_refuses_the_whole_creation(hub_server: RunningHub) -> None:
    browser = await admin_browser(hub_server)
    response = await browser.post("/hub/admin/users", {"name": "bob", "teams": "risk, ../etc"})
    assert response.code == 400 and "team name: 1 to 32 characters" in text_of(response)
    assert "bob" not in [u.name for u in await hub_server.hub.deps.accounts.all_users()]


@pytest.mark.parametrize("path", ["..%2Fx", "%E2%84%AAate", "%3Cscript%3E", "a" * 33, "nobody"])
async def test_actions_on_hostile_or_unknown_names_are_404_and_change_nothing(
    hub_server: RunningHub, path: str
) -> None:
    browser = await admin_browser(hub_server)
    response = await browser.post(f"/hub/admin/users/{path}/disable", {})
    assert response.code == 404
    assert "<script>" not in response.body.decode()
    assert not any(u.disabled for u in await hub_server.hub.deps.accounts.all_users())


async def test_disable_ends_sessions_and_login_then_enable_restores_it(
    hub_server: RunningHub,
) -> None:
    browser = await admin_browser(hub_server)
    bob = await user_browser(hub_server, "bob")
    disabled = await browser.post("/hub/admin/users/bob/disable", {})
    assert disabled.code == 302 and disabled.headers["Location"] == "/hub/admin/users"
    shown = await browser.get("/hub/admin/users")
    assert "bob is disabled." in text_of(shown)
    assert "bob is disabled." not in text_of(await browser.get("/hub/admin/users"))  # shown once
    assert (await bob.get("/hub/home")).code == 302
    refused = await Browser(hub_server).login("bob", PASSWORD)
    assert refused.code == 403 and "this account is disabled" in text_of(refused)
    assert (await browser.post("/hub/admin/users/bob/enable", {})).code == 302
    assert (await Browser(hub_server).login("bob", PASSWORD)).code == 302
    updates = await entries(hub_server, action="user.update", actor="root")
    assert [e.detail["disabled"] for e in updates] == [False, True]
    login_refusals = await entries(hub_server, action="login")
    assert login_refusals[0].target == "bob" and login_refusals[0].outcome == "refused"


async def test_an_admin_cannot_disable_or_reset_themselves_from_the_console(
    hub_server: RunningHub,
) -> None:
    browser = await admin_browser(hub_server)
    disable = await browser.post("/hub/admin/users/root/disable", {})
    assert disable.code == 400 and "you cannot disable yourself" in text_of(disable)
    reset = await browser.post("/hub/admin/users/root/reset-password", {})
    assert reset.code == 400 and "password page" in text_of(reset)
    assert (await browser.get("/hub/admin/users")).code == 200


async def test_reset_password_shows_a_one_time_password_once_and_ends_sessions(
    hub_server: RunningHub,
) -> None:
    browser = await admin_browser(hub_server)
    bob = await user_browser(hub_server, "bob")
    reset = await browser.post("/hub/admin/users/bob/reset-password", {})
    assert reset.code == 200 and reset.headers["Cache-Control"] == "no-store"
    password = one_time_password(reset)
    assert "New password for bob" in text_of(reset)
    assert (await bob.get("/hub/home")).code == 302  # the old session ended
    assert (await Browser(hub_server).login("bob", PASSWORD)).code == 401
    fresh = Browser(hub_server)
    login = await fresh.login("bob", password)
    assert login.headers["Location"] == "/hub/password"
    assert (await fresh.get("/hub/home")).headers["Location"] == "/hub/password"
    changed = await fresh.post(
        "/hub/password", {"current": password, "new": "a new secret", "confirm": "a new secret"}
    )
    assert changed.code == 302 and (await fresh.get("/hub/home")).code == 200
    [entry] = await entries(hub_server, action="user.password_reset")
    assert (entry.actor, entry.target) == ("root", "bob")
    assert password not in json.dumps(dict(entry.detail))


async def test_admins_make_and_unmake_admins_but_never_the_last_one(
    hub_server: RunningHub,
) -> None:
    accounts = hub_server.hub.deps.accounts
    browser = await admin_browser(hub_server)
    await accounts.create_user("bob", PASSWORD)
    assert (await browser.post("/hub/admin/users/bob/make-admin", {})).code == 302
    assert (await accounts.get("bob")).is_admin
    assert "bob is now an admin." in text_of(await browser.get("/hub/admin/users"))
    assert (await browser.post("/hub/admin/users/bob/unmake-admin", {})).code == 302
    assert not (await accounts.get("bob")).is_admin
    # The hub's first admin ("admin") and root remain; demote admin, then root is the last.
    assert (await browser.post("/hub/admin/users/admin/unmake-admin", {})).code == 302
    last = await browser.post("/hub/admin/users/root/unmake-admin", {})
    assert last.code == 409 and "this is the last admin" in text_of(last)
    assert (await accounts.get("root")).is_admin
    flags = [e.detail.get("admin") for e in await entries(hub_server, action="user.update")]
    assert flags == [False, False, True]


async def test_team_membership_is_edited_from_the_users_list(hub_server: RunningHub) -> None:
    browser = await admin_browser(hub_server)
    bob, _ = await hub_server.hub.deps.accounts.create_user("bob", PASSWORD)
    teams = hub_server.hub.deps.teams
    assert (await browser.post("/hub/admin/users/bob/teams", {"teams": "risk, ml"})).code == 302
    assert await teams.teams_of(bob.id) == ["ml", "risk"]
    assert (await browser.post("/hub/admin/users/bob/teams", {"teams": "ml quant"})).code == 302
    assert await teams.teams_of(bob.id) == ["ml", "quant"]
    assert await teams.find("risk") is not None  # the team and its quota stay
    bad = await browser.post("/hub/admin/users/bob/teams", {"teams": "ml, K\u212a"})
    assert bad.code == 400 and "team" in text_of(bad)
    assert await teams.teams_of(bob.id) == ["ml", "quant"]
    page = await browser.get("/hub/admin/users")
    assert 'value="ml, quant"' in page.body.decode()
    [last, first] = await entries(hub_server, action="user.teams")
    assert first.detail == {"joined": ["ml", "risk"], "left": []}
    assert last.detail == {"joined": ["quant"], "left": ["risk"]}


async def test_the_users_list_shows_teams_servers_and_last_login(hub_server: RunningHub) -> None:
    browser = await admin_browser(hub_server)
    accounts = hub_server.hub.deps.accounts
    await accounts.create_user("zoe", PASSWORD)
    page = await browser.get("/hub/admin")
    assert page.code == 200
    text = text_of(page)
    assert "root admin" in text and "zoe" in text and "0 running" in text
    assert "never" in text and "just now" in text
    assert re.search(r'<a href="/hub/admin"[^>]*>Admin</a>', page.body.decode())


# Teams and quotas --------------------------------------------------------------------


async def test_admin_creates_a_team_and_raises_its_quota_beside_its_use(
    hub_server: RunningHub,
) -> None:
    browser = await admin_browser(hub_server)
    created = await browser.post("/hub/admin/teams", {"name": "risk"})
    assert created.code == 302 and created.headers["Location"] == "/hub/admin/teams#team-risk"
    page = await browser.get("/hub/admin/teams")
    assert "Team risk is created" in text_of(page) and 'id="team-risk"' in page.body.decode()
    form = {"cpus": "4", "memory": "8G", "gpus": "", "servers": "3", "storage": "20G"}
    saved = await browser.post("/hub/admin/quotas/teams/risk", form)
    assert saved.code == 302
    team_id = await hub_server.hub.deps.teams.find("risk")
    described = await hub_server.hub.deps.quotas.describe(team_id=team_id)
    assert described.limits.as_dict() == {
        "cpus": 4.0,
        "memory": 8 * GiB,
        "gpus": None,
        "servers": 3,
        "storage": 20 * GiB,
    }
    page = await browser.get("/hub/admin/teams")
    text = text_of(page)
    assert "0 B used of 8 GiB" in text and "0 used of 3" in text
    assert 'name="memory" value="8G"' in re.sub(r"\s+", " ", page.body.decode())
    [entry] = await entries(hub_server, action="quota.set")
    assert entry.target == "team:risk" and entry.detail["memory"] == 8 * GiB
    duplicate = await browser.post("/hub/admin/teams", {"name": "risk"})
    assert duplicate.code == 400 and "already exists" in text_of(duplicate)


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"memory": "lots"}, "memory: expected a size such as 512M or 4G"),
        ({"servers": "1.5"}, "servers: expected a whole number"),
        ({"cpus": "-1"}, "cpus: must be zero or more"),
        ({"cpus": "nan"}, "cpus: must be zero or more"),
        ({"gpus": "two"}, "gpus: expected a number"),
    ],
)
async def test_bad_quota_values_are_refused_and_the_old_quota_stays(
    hub_server: RunningHub, form: dict[str, str], message: str
) -> None:
    browser = await admin_browser(hub_server)
    bob, _ = await hub_server.hub.deps.accounts.create_user("bob", PASSWORD)
    quotas = hub_server.hub.deps.quotas
    await quotas.set({"memory": 2 * GiB, "servers": 1}, user_id=bob.id)
    response = await browser.post(
        "/hub/admin/quotas/users/bob", {"memory": "2G", "servers": "1", **form}
    )
    assert response.code == 400 and message in text_of(response)
    # The editor shows what was typed, so nothing is lost.
    typed = next(iter(form.values()))
    assert f'value="{typed}"' in response.body.decode()
    limits = (await quotas.describe(user_id=bob.id)).limits.as_dict()
    assert limits["memory"] == 2 * GiB and limits["servers"] == 1


async def test_per_user_quota_override_and_lifting_a_limit(hub_server: RunningHub) -> None:
    browser = await admin_browser(hub_server)
    bob, _ = await hub_server.hub.deps.accounts.create_user("bob", PASSWORD)
    form = {"cpus": "1.5", "memory": "512M", "gpus": "0", "servers": "2", "storage": ""}
    assert (await browser.post("/hub/admin/quotas/users/bob", form)).code == 302
    quotas = hub_server.hub.deps.quotas
    limits = (await quotas.describe(user_id=bob.id)).limits.as_dict()
    assert limits == {"cpus": 1.5, "memory": 512 * 2**20, "gpus": 0, "servers": 2, "storage": None}
    page = await browser.get("/hub/admin/teams")
    assert "own quota" in text_of(page)
    lifted = dict(form, memory="")
    assert (await browser.post("/hub/admin/quotas/users/bob", lifted)).code == 302
    assert (await quotas.describe(user_id=bob.id)).limits.as_dict()["memory"] is None
    missing = await browser.post("/hub/admin/quotas/teams/ghosts", form)
    assert missing.code == 404 and "no team 'ghosts'" in text_of(missing)


# Servers ------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def with_busybox(hub_server: RunningHub, test_image: str) -> RunningHub:  # noqa: F811
    await hub_server.hub.deps.catalog.add(busybox_env(test_image))  # type: ignore[attr-defined]
    return hub_server


async def launch(hub: RunningHub, name: str, server: str = "") -> Any:
    accounts = hub.hub.deps.accounts
    try:
        user = await accounts.get(name)
    except Exception:
        user, _ = await accounts.create_user(name, PASSWORD)
    token = await accounts.create_token(user)
    path = f"/users/{name}/servers/{server}" if server else f"/users/{name}/server"
    response = await api(hub, token, "POST", path, {"environment": "busybox", "memory": "128M"})
    assert response.code == 201, response.body
    return user


def containers(client: docker.DockerClient, hub_id: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"labdock.hub={hub_id}"})


async def test_admin_sees_every_server_and_stops_and_removes_any(
    with_busybox: RunningHub, docker_client: docker.DockerClient
) -> None:
    hub = with_busybox
    browser = await admin_browser(hub)
    await launch(hub, "alice")
    await launch(hub, "bob", "lab")
    page = await browser.get("/hub/admin/servers")
    assert page.code == 200
    html = page.body.decode()
    assert 'data-key="alice/"' in html and 'data-key="bob/lab"' in html
    text = text_of(page)
    assert "running" in text and "busybox" in text and "128 MiB" in text
    assert "admin-servers.js" in html and 'data-stats-url="/hub/api/stats"' in html
    records = {r.user_name: r for r in await hub.hub.deps.servers.all()}
    alice, bob = records["alice"], records["bob"]
    stopped = await browser.post(f"/hub/admin/servers/{alice.id}/stop", {})
    assert stopped.code == 302
    assert "Server alice is stopped." in text_of(await browser.get("/hub/admin/servers"))
    after = await hub.hub.deps.servers.by_id(alice.id)
    assert after is not None and after.state.value == "stopped"
    assert after.stopped_reason == "stopped by an admin"
    assert len(containers(docker_client, hub.hub.hub_id)) == 2  # stop keeps the container
    removed = await browser.post(f"/hub/admin/servers/{bob.id}/remove", {})
    assert removed.code == 302
    names = {c.labels["labdock.server"] for c in containers(docker_client, hub.hub.hub_id)}
    assert names == {str(alice.id)}
    actions = [(e.action, e.target) for e in await entries(hub, actor="root")]
    assert ("server.stop", "alice") in actions and ("server.remove", "bob/lab") in actions
    missing = await browser.post("/hub/admin/servers/999999/stop", {})
    assert missing.code == 404


# The audit log ---------------------------------------------------------------------


async def test_launch_refusals_are_in_the_audit_log(with_busybox: RunningHub) -> None:
    hub = with_busybox
    accounts = hub.hub.deps.accounts
    alice, _ = await accounts.create_user("alice", PASSWORD)
    await hub.hub.deps.quotas.set({"servers": 0}, user_id=alice.id)
    token = await accounts.create_token(alice)
    over = await api(hub, token, "POST", "/users/alice/server", {"environment": "busybox"})
    assert over.code == 403
    missing = await api(hub, token, "POST", "/users/alice/servers/x", {"environment": "secret"})
    assert missing.code == 404
    other = await api(hub, token, "POST", "/users/bob/server", {"environment": "busybox"})
    assert other.code == 403
    refusals = await entries(hub, action="server.launch", outcome="refused")
    messages = {e.target: e.detail["message"] for e in refusals}
    assert "servers" in messages["alice/"]
    assert messages["alice/x"] == "environment 'secret' is not in the catalog"
    [access] = await entries(hub, action="access", actor="alice")
    assert access.target == "/hub/api/users/bob/server"


async def test_the_audit_page_filters_paginates_and_escapes(hub_server: RunningHub) -> None:
    browser = await admin_browser(hub_server)
    audit = hub_server.hub.deps.audit
    for i in range(60):
        await audit.record(actor_id=None, action="test.bulk", target=f"t{i:02d}")
    await Browser(hub_server).login("<script>alert(1)</script>", "nope nope")
    root = await hub_server.hub.deps.accounts.get("root")
    await audit.record(
        actor_id=root.id, action="quota.set", target="team:risk", detail={"memory": 8 * GiB}
    )
    page = await browser.get("/hub/admin/audit")
    assert page.code == 200
    html = page.body.decode()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert html.index("team:risk") < html.index("&lt;script&gt;") < html.index("t59")
    assert "memory: 8 GiB" in text_of(page)
    assert "t10" not in html  # 50 a page, newest first
    older = re.search(r'href="(/hub/admin/audit\?before=\d+)"', html)
    assert older
    second = await browser.get(unescape(older.group(1)))
    assert "t10" in second.body.decode() and "t00" in second.body.decode()
    assert "Newest" in text_of(second)
    mine = await browser.get("/hub/admin/audit?actor=root")
    assert "team:risk" in mine.body.decode() and "t59" not in mine.body.decode()
    logins = await browser.get("/hub/admin/audit?action=login&outcome=refused")
    text = text_of(logins)
    assert "wrong username or password" in text and "t59" not in text
    assert '<option value="login" selected>' in logins.body.decode()
    nothing = await browser.get("/hub/admin/audit?actor=nobody&before=x")
    assert nothing.code == 200 and "Nothing recorded matches these filters" in text_of(nothing)


# A real browser ------------------------------------------------------------------------

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "admin"
CHROMIUM = "/usr/bin/chromium"


async def test_in_a_real_browser_an_admin_creates_a_user_raises_a_quota_and_stops_a_server(
    with_busybox: RunningHub,
) -> None:
    from playwright.async_api import async_playwright

    hub = with_busybox
    accounts = hub.hub.deps.accounts
    await accounts.create_user("root", PASSWORD, is_admin=True)
    alice = await launch(hub, "alice", "lab")
    await hub.hub.deps.teams.join(alice.id, "risk")
    team_id = await hub.hub.deps.teams.find("risk")
    await hub.hub.deps.quotas.set({"memory": 1 * GiB, "servers": 2}, team_id=team_id)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--headless"]
        )
        try:
            context = await chromium.new_context(viewport={"width": 1280, "height": 860})
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))

            await page.goto(hub.url + "/hub/admin")
            await page.get_by_label("Username").fill("root")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Log in").click()
            await page.wait_for_url("**/hub/admin")
            await page.get_by_role("link", name="Users").wait_for()

            await page.get_by_label("Username").fill("dana")
            await page.get_by_label("Teams (optional)").fill("risk")
            await page.get_by_role("button", name="Create user").click()
            await page.get_by_text("dana is created").wait_for()
            password = await page.locator("#one-time-password").inner_text()
            assert len(password) >= 12
            await page.screenshot(path=str(ARTIFACTS / "users-created.png"), full_page=True)

            await page.get_by_role("link", name="Teams & quotas").click()
            card = page.locator("#team-risk")
            assert "1 GiB" in await card.inner_text()
            await card.get_by_label("Memory").fill("16G")
            await card.get_by_role("button", name="Save quota").click()
            await page.get_by_text("The quota of team risk is saved.").wait_for()
            assert await page.locator("#team-risk").get_by_label("Memory").input_value() == "16G"
            assert "used of 16 GiB" in await page.locator("#team-risk").inner_text()
            await page.screenshot(path=str(ARTIFACTS / "teams.png"), full_page=True)

            await page.get_by_role("link", name="Servers").click()
            row = page.locator('tr[data-key="alice/lab"]')
            await row.get_by_text("running").wait_for()
            # Live use, or a plain note that this hub has none: either way, no error.
            await page.locator("#live-note", has_text=re.compile(r"^Live use")).wait_for()
            await page.screenshot(path=str(ARTIFACTS / "servers.png"), full_page=True)
            await row.get_by_role("button", name="Stop alice/lab").click()
            await page.get_by_text("Server alice/lab is stopped.").wait_for()
            assert "stopped" in await page.locator('tr[data-key="alice/lab"]').inner_text()

            await page.get_by_role("link", name="Audit log").click()
            audit_text = await page.locator("table.audit").inner_text()
            for action in ("server.stop", "quota.set", "user.create"):
                assert action in audit_text
            await page.screenshot(path=str(ARTIFACTS / "audit.png"), full_page=True)

            await page.set_viewport_size({"width": 360, "height": 780})
            for name, path in (
                ("users", "/hub/admin/users"),
                ("teams", "/hub/admin/teams"),
                ("servers", "/hub/admin/servers"),
                ("audit", "/hub/admin/audit"),
            ):
                await page.goto(hub.url + path)
                wide = await page.evaluate("document.documentElement.scrollWidth")
                assert wide <= 360, f"{name} scrolls sideways at 360 px ({wide} px)"
                await page.screenshot(path=str(ARTIFACTS / f"{name}-360.png"), full_page=True)
            assert errors == []
        finally:
            await chromium.close()
    record = await hub.hub.deps.servers.get(alice.id, "lab")
    assert record is not None and record.state.value == "stopped"


async def test_an_admin_who_gives_up_admin_rights_lands_at_home(hub_server: RunningHub) -> None:
    browser = await admin_browser(hub_server)
    response = await browser.post("/hub/admin/users/root/unmake-admin", {})
    assert response.code == 302 and response.headers["Location"] == "/hub/home"
    assert not (await hub_server.hub.deps.accounts.get("root")).is_admin
    assert (await browser.get("/hub/admin")).code == 403
