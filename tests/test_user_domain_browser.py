# ruff: noqa: F811 (pytest fixtures imported from tests.browser_support)
"""Subdomain mode in real Chromium, through the front that ``labdock serve`` runs.

The hub is at ``http://localhost:<port>`` and users' hosts at
``http://<name>.users.localhost:<port>``: Chromium resolves every ``*.localhost``
name to the loopback address itself, so no DNS is needed.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Iterator
from dataclasses import replace

import docker
import pytest
import tornado.testing
from playwright.sync_api import Browser, BrowserContext, Page, expect

from hub.app import build_hub
from hub.config import Settings
from tests.browser_support import (  # noqa: F401 (fixtures)
    DESKTOP,
    BrowserHub,
    busybox_environment,
    chromium,
    login,
    playwright_driver,
    shot,
)
from tests.busybox_image import ensure_test_image

DOMAIN = "users.localhost"

# What the red team's page did: read the hub's XSRF cookie, list the users, and make
# its author an admin with the visitor's credentials. Each attempt reports how it ended.
EVIL_SCRIPT = """
(async () => {
  const hub = "HUB";
  const out = {cookie: document.cookie};
  const xsrf = decodeURIComponent((document.cookie.match(/_xsrf=([^;]*)/) || ["", ""])[1]);
  const attempt = async (name, url, init) => {
    try {
      const r = await fetch(url, {credentials: "include", ...init});
      out[name] = r.type === "opaque" ? "opaque" : r.status + " " + (await r.text()).slice(0, 300);
    } catch (e) { out[name] = "blocked: " + e; }
  };
  await attempt("list", hub + "/hub/api/users", {});
  await attempt("patch", hub + "/hub/api/users/eve", {method: "PATCH",
    headers: {"Content-Type": "application/json", "X-XSRFToken": xsrf},
    body: JSON.stringify({admin: true})});
  await attempt("simple", hub + "/hub/api/users/eve", {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "text/plain"}, body: JSON.stringify({admin: true})});
  await attempt("local_list", "/hub/api/users", {});
  await attempt("local_patch", "/hub/api/users/eve", {method: "PATCH",
    headers: {"Content-Type": "application/json", "X-XSRFToken": xsrf},
    body: JSON.stringify({admin: true})});
  window.evilResult = out;
  document.title = "done";
})();
"""


class FrontBrowserHub(BrowserHub):
    """A ``BrowserHub`` served as ``labdock serve`` serves: the front on the public port."""

    def __init__(self, settings: Settings, port: int) -> None:
        super().__init__(settings)
        self.port = port

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with build_hub(self.settings) as built:
            await built.listen(self.port, "127.0.0.1")
            self.url = f"http://localhost:{self.port}"
            self._ready.set_result(built)
            await self._stop.wait()

    def host(self, name: str) -> str:
        return f"http://{name}.{DOMAIN}:{self.port}"

    def is_admin(self, name: str) -> bool:
        return self.run(self.hub.deps.accounts.get(name)).is_admin


@pytest.fixture
def domain_hub(settings: Settings) -> Iterator[FrontBrowserHub]:
    sock, port = tornado.testing.bind_unused_port()
    sock.close()
    hub_settings = replace(settings.hub, public_url=f"http://localhost:{port}", user_domain=DOMAIN)
    # Admin access to users' servers (off by default) is on, so the admin really opens
    # the user's page: in subdomain mode that is safe, and this proves it.
    hub_settings = replace(hub_settings, admin_access=True)
    hub = FrontBrowserHub(replace(settings, hub=hub_settings), port).start()
    try:
        yield hub
    finally:
        hub.stop()


def new_page(browser: Browser) -> tuple[BrowserContext, Page]:
    context = browser.new_context(viewport=DESKTOP, reduced_motion="reduce")
    context.set_default_timeout(20_000)
    return context, context.new_page()


def test_analyst_runs_a_kernel_on_her_own_host_and_logging_out_closes_it(
    domain_hub: FrontBrowserHub, chromium: Browser
) -> None:
    hub = domain_hub
    names = [e.name for e in hub.run(hub.hub.deps.catalog.visible_to(frozenset()))]
    assert "jupyter" in names, f"build the jupyter image first (labdock images build): {names}"
    hub.add_user("ivy")
    context, page = new_page(chromium)
    try:
        login(page, hub, "ivy")
        page.goto(hub.url + "/hub/launch?environment=jupyter")
        page.get_by_label("Memory", exact=True).select_option(label="1 GiB")
        page.get_by_label("Server name").fill("lab")
        page.get_by_role("button", name="Launch").click()
        page.wait_for_url("**/hub/progress/lab")
        # The hub sends the browser on to ivy's own host, which signs in through the hub.
        own = hub.host("ivy")
        page.wait_for_url(re.compile(re.escape(own) + r"/user/ivy/lab/.*"), timeout=120_000)
        cookies = {c["name"]: c for c in context.cookies(own)}
        assert "labdock-user" in cookies and "labdock-session" not in cookies, cookies
        assert cookies["labdock-user"]["httpOnly"] and cookies["labdock-user"]["sameSite"] == "Lax"
        assert cookies["labdock-user"]["domain"] == f"ivy.{DOMAIN}"  # host-only
        assert "labdock" not in page.evaluate("document.cookie")

        notebook = page.locator('.jp-LauncherCard[data-category="Notebook"]').first
        notebook.click(timeout=120_000)
        idle = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').first
        expect(idle).to_be_visible(timeout=90_000)  # the kernel's WebSocket is open
        cell = page.locator(".jp-Notebook .jp-Cell .cm-content").first
        cell.click(timeout=60_000)
        page.keyboard.type("print(6*7)")
        output = page.locator(".jp-OutputArea-output").first
        for attempt in range(4):
            cell.click()
            page.keyboard.press("Shift+Enter")
            try:
                expect(output).to_have_text("42", timeout=15_000)
                break
            except AssertionError:
                if attempt == 3:
                    raise
        assert page.url.startswith(own)
        shot(page, "subdomain", "1-notebook", full_page=False)

        page.goto(hub.url + "/hub/home")
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url("**/hub/login")
        # Within the proxy's grant cache time (2 s), the user host lets the browser in no more.
        deadline = time.monotonic() + 10
        while True:
            page.goto(own + "/user/ivy/lab/api/status")
            if page.url.startswith(hub.url + "/hub/login"):
                break
            assert time.monotonic() < deadline, page.url
            time.sleep(0.5)
        shot(page, "subdomain", "2-logged-out")
    finally:
        context.close()


@pytest.fixture(scope="module")
def test_image() -> str:
    client = docker.from_env()
    try:
        return ensure_test_image(client)
    finally:
        client.close()


def evil_environment(image: str, hub_url: str):  # type: ignore[no-untyped-def]
    page = f"<!doctype html><title>cats</title><script>{EVIL_SCRIPT.replace('HUB', hub_url)}"
    page += "</script><p>Cute cats</p>"
    encoded = base64.b64encode(page.encode()).decode()
    command = (
        "mkdir -p /tmp/www$LABDOCK_PREFIX && echo ok > /tmp/www${LABDOCK_PREFIX}index.html && "
        f"echo {encoded} | base64 -d > /tmp/www${{LABDOCK_PREFIX}}evil.html && "
        "exec httpd -f -p $LABDOCK_PORT -h /tmp/www"
    )
    return busybox_environment(
        image, "pages", ("sh", "-c", command), description="Serves her home's pages."
    )


def test_a_users_page_opened_by_an_admin_cannot_make_her_an_admin(
    domain_hub: FrontBrowserHub, chromium: Browser, test_image: str
) -> None:
    """The red team's attack, replayed: it must fail in subdomain mode."""
    hub = domain_hub
    hub.add_environment(evil_environment(test_image, hub.url))
    hub.add_user("eve")
    hub.add_user("root", admin=True)
    eve_context, eve = new_page(chromium)
    admin_context, admin = new_page(chromium)
    try:
        login(eve, hub, "eve")
        eve.goto(hub.url + "/hub/launch")
        eve.locator('label[for="env-pages"]').click()
        eve.get_by_role("button", name="Launch").click()
        eve.wait_for_url(hub.host("eve") + "/user/eve/pages/", timeout=60_000)

        login(admin, hub, "root")
        evil = hub.url + "/user/eve/pages/evil.html"
        admin.goto(evil)
        admin.wait_for_url(hub.host("eve") + "/user/eve/pages/evil.html")
        expect(admin).to_have_title("done", timeout=20_000)
        result = admin.evaluate("window.evilResult")
        shot(admin, "subdomain", "3-evil-page")
        assert "_xsrf" not in result["cookie"] and "labdock" not in result["cookie"], result
        assert result["list"].startswith("blocked"), result  # no CORS: unreadable
        assert result["patch"].startswith("blocked"), result  # its preflight is refused
        assert result["local_list"].startswith("404"), result  # no hub API on her host
        assert result["local_patch"].startswith("404"), result
        # The request that needs no preflight went out and was refused: nothing changed.
        assert not hub.is_admin("eve")
        users = hub.run(hub.hub.deps.accounts.all_users())
        assert {u.name for u in users if u.is_admin} == {"admin", "root"}, users
    finally:
        eve_context.close()
        admin_context.close()
