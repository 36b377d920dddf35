# ruff: noqa: F811 (pytest fixtures imported from tests.browser_support)
"""The analyst's pages in a real browser (Playwright driving Debian's headless Chromium).

Every flow saves screenshots to artifacts/ui/<flow>-<step>.png.
"""

from __future__ import annotations

import io
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from playwright.sync_api import Page, Request, expect

from hub.domain.resources import GiB, MiB
from tests.browser_support import (  # noqa: F401 (fixtures)
    PHONE,
    BrowserHub,
    browser_hub,
    busybox_environment,
    chromium,
    first_load_bytes,
    login,
    playwright_driver,
    shot,
    ui_page,
)
from tests.busybox_image import ensure_test_image
from tests.test_catalog_api import definition

# Serves, then after a few seconds allocates past its memory limit.
SERVE_THEN_OOM = (
    "mkdir -p /tmp/www$LABDOCK_PREFIX && echo ok > /tmp/www$LABDOCK_PREFIX/index.html && "
    "httpd -p $LABDOCK_PORT -h /tmp/www && sleep 4 && "
    "exec dd if=/dev/zero of=/dev/null bs=512M count=1"
)
# Serves, and holds 120 MiB (dd's buffer, stuck writing to a pipe nobody reads).
SERVE_AND_HOLD = (
    "mkdir -p /tmp/www$LABDOCK_PREFIX && echo ok > /tmp/www$LABDOCK_PREFIX/index.html && "
    "httpd -p $LABDOCK_PORT -h /tmp/www && "
    "exec sh -c 'dd if=/dev/zero bs=120M count=1 | sleep 3600'"
)
PAGE_BUDGET = 100 * 1024


@pytest.fixture(scope="module")
def test_image() -> str:
    client = docker.from_env()
    try:
        return ensure_test_image(client)
    finally:
        client.close()


@pytest.fixture
def hub(browser_hub: BrowserHub, test_image: str) -> BrowserHub:
    browser_hub.add_environment(busybox_environment(test_image))
    browser_hub.add_environment(
        busybox_environment(
            test_image,
            "oomy",
            ("sh", "-c", SERVE_THEN_OOM),
            description="Serves, then allocates more memory than it may.",
        )
    )
    browser_hub.add_environment(
        busybox_environment(
            test_image,
            "hog",
            ("sh", "-c", SERVE_AND_HOLD),
            description="Serves, and holds 120 MiB.",
        )
    )
    browser_hub.add_environment(
        busybox_environment(
            test_image,
            "failing",
            ("sh", "-c", "LABDOCK_TEST_MODE=exit LABDOCK_TEST_LINES=12 exec /app/start"),
            description="Prints a few lines and exits.",
        )
    )
    return browser_hub


def server_card(page: Page, name: str):  # type: ignore[no-untyped-def]
    return page.locator(f'li.server[data-server="{name}"]')


def launch_from_form(page: Page, env: str, name: str, memory: str | None = None) -> None:
    page.goto(page.url.split("/hub/")[0] + "/hub/launch")
    page.locator(f'label[for="env-{env}"]').click()
    if memory:
        page.get_by_label("Memory", exact=True).select_option(label=memory)
    page.get_by_label("Server name").fill(name)
    page.get_by_role("button", name="Launch").click()


def test_analyst_launches_watches_opens_and_stops_a_server(hub: BrowserHub, ui_page: Page) -> None:
    page = ui_page
    hub.add_user("alice")
    login(page, hub, "alice")
    expect(page.get_by_role("heading", name="No servers yet")).to_be_visible()
    shot(page, "launch", "1-home-empty")

    page.get_by_role("link", name="New server").click()
    page.wait_for_url("**/hub/launch")
    page.locator('label[for="env-busybox"]').click()
    expect(page.locator("#env-busybox")).to_be_checked()
    shot(page, "launch", "2-form")
    # Keyboard only: the environment radios, the size selects, the name, then Enter.
    page.locator("#env-busybox").focus()
    page.keyboard.press("Tab")
    expect(page.get_by_label("CPUs", exact=True)).to_be_focused()
    page.get_by_label("Memory", exact=True).select_option(label="256 MiB")
    page.get_by_label("Server name").fill("web")
    page.get_by_label("Server name").press("Enter")

    page.wait_for_url("**/hub/progress/web")
    shot(page, "launch", "3-progress")
    page.wait_for_url("**/user/alice/web/")
    assert page.content().count("ok") >= 1

    page.goto(hub.url + "/hub/home")
    card = server_card(page, "web")
    expect(card.locator(".state")).to_have_text("Running")
    expect(card.locator("[data-memory]")).to_contain_text("of 256 MiB")
    expect(card.locator("[data-cpu]")).to_contain_text("of 0.5 cores")
    expect(card.get_by_role("link", name="Open web")).to_have_attribute("href", "/user/alice/web/")
    expect(card).to_contain_text("busybox")
    expect(card).to_contain_text("1.0")
    expect(card.locator("[data-uptime]")).not_to_have_text("—")
    shot(page, "launch", "4-home-running")

    card.get_by_role("button", name="Stop web").click()
    expect(card.locator(".state")).to_have_text("Stopped", timeout=30_000)
    expect(server_card(page, "web").get_by_role("button", name="Start web")).to_be_visible()
    shot(page, "launch", "5-home-stopped")
    assert hub.server_state("alice", "web") == "stopped"

    # Remove asks first, in a dialog that Escape dismisses, then deletes the container.
    card.get_by_role("button", name="Remove web").click()
    dialog = page.get_by_role("dialog", name="Remove web?")
    expect(dialog).to_be_visible()
    shot(page, "launch", "6-remove-dialog", full_page=False)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(card.get_by_role("button", name="Remove web")).to_be_focused()
    card.get_by_role("button", name="Remove web").click()
    dialog.get_by_role("button", name="Remove").click()
    expect(dialog).to_be_hidden()
    deadline = time.monotonic() + 20
    while hub.container_of("alice", "web") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert hub.container_of("alice", "web") is None


def test_form_offers_no_more_than_the_quota_and_a_forged_request_is_refused(
    hub: BrowserHub, ui_page: Page
) -> None:
    page = ui_page
    hub.add_user("bob")
    hub.set_quota({"memory": 512 * MiB}, user="bob")
    login(page, hub, "bob")
    page.goto(hub.url + "/hub/launch")
    page.locator('label[for="env-busybox"]').click()
    memory = page.get_by_label("Memory", exact=True)
    offered = memory.locator("option").evaluate_all("os => os.map(o => Number(o.value))")
    assert max(offered) == 512 * MiB, offered
    expect(page.locator("#memory-hint")).to_contain_text("your quota")
    shot(page, "quota", "1-form-bounded")

    # A request forged from the page itself, past the form: the hub refuses it with the numbers.
    answer = page.evaluate(
        """async () => {
          const xsrf = document.cookie.match(/_xsrf=([^;]*)/)[1];
          const r = await fetch('/hub/api/users/bob/servers/big', {method: 'POST',
            headers: {'Content-Type': 'application/json', 'X-XSRFToken': decodeURIComponent(xsrf)},
            body: JSON.stringify({environment: 'busybox', memory: '1G'})});
          return {status: r.status, body: await r.json()};
        }"""
    )
    assert answer["status"] == 403, answer
    assert re.search(r"needs 1 GiB; 512 MiB left in your quota", answer["body"]["message"])

    # The same through the form, with a tampered option: the page shows the reason.
    memory.evaluate(
        "s => { const o = s.options[s.options.length - 1]; o.value = String(1024 ** 3);"
        " o.selected = true; }"
    )
    page.get_by_label("Server name").fill("big")
    page.get_by_role("button", name="Launch").click()
    alert = page.locator("#form-error")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text("Not launched: needs 1 GiB; 512 MiB left in your quota")
    shot(page, "quota", "2-forged-refused")
    assert hub.server_state("bob", "big") is None


def test_admin_raises_a_team_quota_and_the_form_offers_the_new_maximum(
    hub: BrowserHub, chromium, ui_page: Page  # type: ignore[no-untyped-def]
) -> None:
    hub.add_user("carol", teams=("risk",))
    hub.add_user("root", admin=True)
    hub.set_quota({"memory": 256 * MiB}, team="risk")
    page = ui_page
    login(page, hub, "carol")
    page.goto(hub.url + "/hub/launch")
    offered = page.get_by_label("Memory", exact=True).locator("option")
    assert max(offered.evaluate_all("os => os.map(o => Number(o.value))")) == 256 * MiB
    expect(page.locator("#memory-hint")).to_contain_text("team 'risk' quota")
    shot(page, "team-quota", "1-before")

    admin = chromium.new_context(viewport={"width": 1280, "height": 860})
    try:
        admin_page = admin.new_page()
        login(admin_page, hub, "root")
        expect(admin_page.get_by_role("link", name="Admin")).to_be_visible()
        raise_team_quota(admin_page, hub, "risk", "768M")
    finally:
        admin.close()

    page.reload()
    offered = page.get_by_label("Memory", exact=True).locator("option")
    assert max(offered.evaluate_all("os => os.map(o => Number(o.value))")) == 768 * MiB
    page.get_by_label("Memory", exact=True).select_option(str(768 * MiB))
    shot(page, "team-quota", "3-after")


def raise_team_quota(page: Page, hub: BrowserHub, team: str, memory: str) -> None:
    """Through the admin console's team page, where it offers a quota form."""
    page.goto(hub.url + "/hub/admin/teams")
    form = page.locator(f'form[action="/hub/admin/quotas/teams/{team}"]')
    form.get_by_label("Memory", exact=True).fill(memory)
    shot(page, "team-quota", "2-admin-console")
    form.get_by_role("button").click()
    page.wait_for_load_state()


def test_an_oom_killed_server_says_so_on_the_home_page(hub: BrowserHub, ui_page: Page) -> None:
    page = ui_page
    hub.add_user("dave")
    login(page, hub, "dave")
    launch_from_form(page, "oomy", "greedy", memory="128 MiB")
    page.wait_for_url("**/user/dave/greedy/")
    page.goto(hub.url + "/hub/home")
    card = server_card(page, "greedy")
    expect(card.locator(".reason")).to_have_text(
        re.compile(r"stopped: exceeded its 128 MiB memory limit"), timeout=30_000
    )
    expect(card.locator(".state")).to_have_text("Stopped")
    shot(page, "oom", "1-home-stopped")


def test_memory_warning_shows_when_a_server_passes_90_percent(
    hub: BrowserHub, ui_page: Page
) -> None:
    page = ui_page
    hub.add_user("erin")
    login(page, hub, "erin")
    launch_from_form(page, "hog", "hungry", memory="128 MiB")
    page.wait_for_url("**/user/erin/hungry/")
    page.goto(hub.url + "/hub/home")
    warning = server_card(page, "hungry").locator("[data-warning]")
    expect(warning).to_be_visible(timeout=20_000)
    expect(warning).to_contain_text("of its 128 MiB limit")
    stats = page.evaluate("fetch('/hub/api/users/erin/servers/hungry/stats').then(r => r.json())")
    assert stats["memory_warning"] is True and stats["memory_fraction"] >= 0.9, stats
    shot(page, "memory-warning", "1-home")


def test_a_failed_launch_shows_the_reason_and_log_lines_with_a_retry(
    hub: BrowserHub, ui_page: Page
) -> None:
    page = ui_page
    hub.add_user("fay")
    login(page, hub, "fay")
    launch_from_form(page, "failing", "broken")
    page.wait_for_url("**/hub/progress/broken")
    failure = page.locator("#failure")
    expect(failure).to_be_visible(timeout=30_000)
    expect(page.locator("#reason")).to_contain_text("exit")
    expect(page.locator("#logs")).to_contain_text("line 12")
    expect(page.get_by_role("button", name="Retry")).to_be_focused()
    shot(page, "failure", "1-progress")
    with page.expect_navigation():  # the retry's progress page, once the hub took it
        page.get_by_role("button", name="Retry").click()
    expect(failure).to_be_visible(timeout=30_000)
    expect(page.locator("#logs")).to_contain_text("line 12")
    assert hub.server_state("fay", "broken") == "failed"


def test_pages_are_readable_at_360_px_and_weigh_under_100_kb(
    hub: BrowserHub, chromium  # type: ignore[no-untyped-def]
) -> None:
    hub.add_user("gus", teams=("risk",))
    hub.set_quota({"memory": 2 * GiB, "cpus": 2}, team="risk")
    context = chromium.new_context(
        viewport=PHONE, device_scale_factor=2, is_mobile=True, reduced_motion="reduce"
    )
    try:
        page = context.new_page()
        login(page, hub, "gus")
        launch_from_form(page, "busybox", "phone")
        page.wait_for_url("**/user/gus/phone/")
        session = context.storage_state()
        weights = {}
        for path in ("/hub/home", "/hub/launch", "/hub/progress/phone"):
            # Each page in a fresh context: logged in, but nothing cached.
            fresh = chromium.new_context(
                viewport=PHONE, storage_state=session, reduced_motion="reduce"
            )
            try:
                cold = fresh.new_page()
                total, parts = first_load_bytes(cold, hub.url + path)
                weights[path] = total
                assert total < PAGE_BUDGET, (path, total, parts)
                assert any(p.endswith(".css") or ".css?" in p for p in parts), parts
                if path == "/hub/progress/phone":
                    continue  # it moves on to the server once ready
                width = cold.evaluate("document.documentElement.scrollWidth")
                assert width <= PHONE["width"], (path, width)
            finally:
                fresh.close()
            page.goto(hub.url + path)
            page.wait_for_load_state("networkidle")
            shot(page, "phone", path.rsplit("/", 1)[-1])
        print("first-load bytes:", json.dumps(weights))
    finally:
        context.close()
    login_context = chromium.new_context(viewport=PHONE)
    try:
        page = login_context.new_page()
        total, parts = first_load_bytes(page, hub.url + "/hub/login")
        assert total < PAGE_BUDGET, (total, parts)
        shot(page, "phone", "login")
    finally:
        login_context.close()


def test_every_form_control_has_a_label(hub: BrowserHub, ui_page: Page) -> None:
    hub.add_user("hal")
    login(page := ui_page, hub, "hal")
    for path in ("/hub/home", "/hub/launch"):
        page.goto(hub.url + path)
        page.wait_for_load_state("networkidle")
        unlabelled = page.evaluate(
            """() => [...document.querySelectorAll('input:not([type=hidden]), select, button, a')]
                 .filter(e => e.offsetParent !== null)
                 .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                              && !e.textContent.trim())
                 .map(e => e.outerHTML)"""
        )
        assert unlabelled == [], (path, unlabelled)


def test_analyst_runs_a_cell_in_jupyterlab_and_stops_the_server(
    browser_hub: BrowserHub, ui_page: Page
) -> None:
    """The real ``jupyter`` environment, built by ``labdock images build jupyter``."""
    hub, page = browser_hub, ui_page
    names = [e.name for e in hub.run(hub.hub.deps.catalog.visible_to(frozenset()))]
    assert "jupyter" in names, f"build the jupyter image first (labdock images build): {names}"
    hub.add_user("ivy")
    login(page, hub, "ivy")
    page.goto(hub.url + "/hub/launch?environment=jupyter")
    expect(page.locator("#env-jupyter")).to_be_checked()
    page.get_by_label("Memory", exact=True).select_option(label="1 GiB")
    page.get_by_label("Server name").fill("lab")
    shot(page, "jupyter", "1-form")
    page.get_by_role("button", name="Launch").click()
    page.wait_for_url("**/hub/progress/lab")
    expect(page.locator("#steps li").first).to_be_visible()
    shot(page, "jupyter", "2-progress")

    page.wait_for_url(re.compile(r".*/user/ivy/lab/.*"), timeout=120_000)
    notebook = page.locator('.jp-LauncherCard[data-category="Notebook"]').first
    notebook.click(timeout=120_000)
    # The kernel is up and connected: its indicator in the notebook's toolbar says idle.
    idle = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').first
    expect(idle).to_be_visible(timeout=90_000)
    cell = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    cell.click(timeout=60_000)
    page.keyboard.type("print(6*7)")
    output = page.locator(".jp-OutputArea-output").first
    # A new notebook may swap its first kernel connection for another while it settles;
    # a run sent on the dropped one is lost, so it is sent again (as a person would).
    for attempt in range(4):
        cell.click()
        page.keyboard.press("Shift+Enter")
        try:
            expect(output).to_have_text("42", timeout=15_000)
            break
        except AssertionError:
            if attempt == 3:
                raise
    shot(page, "jupyter", "3-notebook", full_page=False)

    page.goto(hub.url + "/hub/home")
    card = server_card(page, "lab")
    expect(card.locator(".state")).to_have_text("Running")
    expect(card.locator("[data-memory]")).to_contain_text("of 1 GiB", timeout=10_000)
    shot(page, "jupyter", "4-home")
    card.get_by_role("button", name="Stop lab").click()
    expect(card.locator(".state")).to_have_text("Stopped", timeout=60_000)
    shot(page, "jupyter", "5-stopped")


def test_an_empty_name_launches_the_default_server(hub: BrowserHub, ui_page: Page) -> None:
    page = ui_page
    hub.add_user("jo")
    login(page, hub, "jo")
    launch_from_form(page, "busybox", "")
    page.wait_for_url("**/user/jo/")
    page.goto(hub.url + "/hub/home")
    card = server_card(page, "")
    expect(card.locator(".server-name")).to_have_text("default")
    expect(card.get_by_role("link", name="Open default")).to_have_attribute("href", "/user/jo/")
    page.goto(hub.url + "/hub/progress/")
    page.wait_for_url("**/user/jo/")  # a running server's progress page goes straight to it


@pytest.fixture(scope="module")
def second_image(test_image: str) -> Iterator[str]:
    """Another local image (a label on the test image) to be an environment's newer version."""
    client = docker.from_env()
    tag = "labdock/test-busybox-v2:ui"
    dockerfile = f"FROM {test_image}\nLABEL labdock.test=1 labdock.test.ui=v2\n"
    try:
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
        yield tag
    finally:
        try:
            client.images.remove(tag, force=True)
        finally:
            client.close()


def call_api(hub: BrowserHub, token: str, method: str, path: str, body: Any = None) -> Any:
    """The REST API with a token, from the test's thread (the hub serves from its own)."""
    request = urllib.request.Request(
        hub.url + "/hub/api" + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"null")


def admin_token(hub: BrowserHub, name: str) -> str:
    async def make() -> str:
        deps = hub.hub.deps
        user, _ = await deps.accounts.create_user(name, "correct horse", is_admin=True)
        scopes = frozenset({"servers", "read:servers", "admin:environments"})
        return await deps.accounts.create_token(user, scopes=scopes)

    return hub.run(make())


def test_analyst_launches_an_older_version_of_an_environment(
    hub: BrowserHub, ui_page: Page, test_image: str, second_image: str
) -> None:
    client = docker.from_env()
    try:
        old_digest = str(client.images.get(test_image).id)
        new_digest = str(client.images.get(second_image).id)
    finally:
        client.close()
    root = admin_token(hub, "root")
    body = definition(
        test_image,
        version="1.0",
        description="busybox, in two versions",
        resources={
            "default": {"cpus": 0.5, "memory": "128M"},
            "maximum": {"cpus": 1, "memory": "256M"},
        },
    )
    call_api(hub, root, "POST", "/environments/versioned", body)
    newer = {"image": second_image, "version": "2.0"}
    added = call_api(hub, root, "POST", "/environments/versioned/versions", newer)
    assert [(v["version"], v["current"]) for v in added["versions"]] == [
        ("2.0", True),
        ("1.0", False),
    ]

    page = ui_page
    hub.add_user("kim")
    login(page, hub, "kim")
    launches: list[dict[str, Any]] = []

    def note_launch(request: Request) -> None:
        if request.method == "POST" and "/hub/api/users/kim/servers/" in request.url:
            launches.append(json.loads(request.post_data or "{}"))

    page.on("request", note_launch)
    page.goto(hub.url + "/hub/launch")
    # An environment with one version offers no choice of version.
    page.locator('label[for="env-busybox"]').click()
    field = page.locator("#version-field")
    expect(field).to_be_hidden()

    page.locator('label[for="env-versioned"]').click()
    version = page.get_by_label("Version", exact=True)
    expect(version).to_be_visible()
    options = version.locator("option")
    expect(options).to_have_text(
        [
            re.compile(rf"^2\.0 \(current\) · \d{{4}}-\d\d-\d\d · {new_digest[7:19]}$"),
            re.compile(rf"^1\.0 · \d{{4}}-\d\d-\d\d · {old_digest[7:19]}$"),
        ]
    )
    expect(version).to_have_value("2.0")
    # Keyboard only: from the environment to the version, the older one, on to the CPUs.
    page.locator("#env-versioned").focus()
    page.keyboard.press("Tab")
    expect(version).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(version).to_have_value("1.0")
    page.keyboard.press("Tab")
    expect(page.get_by_label("CPUs", exact=True)).to_be_focused()
    page.get_by_label("Server name").fill("old")
    expect(page.locator("#summary")).to_contain_text("versioned 1.0")
    shot(page, "version", "1-form")
    page.get_by_role("button", name="Launch").click()
    page.wait_for_url("**/user/kim/old/")

    # The current version again: the launch names no version, and gets the current image.
    page.goto(hub.url + "/hub/launch")
    page.locator('label[for="env-versioned"]').click()
    expect(version).to_have_value("2.0")
    page.get_by_label("Server name").fill("new")
    page.get_by_role("button", name="Launch").click()
    page.wait_for_url("**/user/kim/new/")

    assert [b.get("version") for b in launches] == ["1.0", None], launches
    servers = call_api(hub, root, "GET", "/users/kim")["servers"]
    assert servers["old"]["image_digest"] == old_digest
    assert servers["new"]["image_digest"] == new_digest
