"""Real-browser tests: a hub on a free port in a background thread, and headless Chromium.

    from tests.browser_support import browser_hub, chromium, ui_page  # noqa: F401 (fixtures)

    def test_something(browser_hub: BrowserHub, ui_page: Page) -> None:
        browser_hub.add_user("alice")
        login(ui_page, browser_hub, "alice")
        shot(ui_page, "flow", "home")          # artifacts/ui/flow-home.png

Playwright's sync API refuses to run inside a running asyncio loop, so the
browser tests are plain (sync) tests and the hub gets its own loop in a
thread; ``BrowserHub.run`` hands it coroutines (create users, set quotas).
Chromium is Debian's (``apt-get install chromium``): ``playwright install``
downloads nothing here.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest
import tornado.httpserver
import tornado.testing
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from hub.app import Hub, build_hub
from hub.config import Settings
from hub.domain.catalog import Environment
from hub.domain.resources import MiB, Resources
from tests.test_servers_api import busybox_env

T = TypeVar("T")

CHROMIUM = os.environ.get("LABDOCK_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "ui"
PASSWORD = "correct horse"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 360, "height": 740}


class BrowserHub:
    """A fully wired hub serving on 127.0.0.1:<free port> from a thread of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready: Future[Hub] = Future()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="browser-hub", daemon=True)

    @property
    def hub(self) -> Hub:
        return self._ready.result()

    def start(self) -> BrowserHub:
        self._thread.start()
        self._ready.result(timeout=120)
        return self

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start(), which waits on it
            if not self._ready.done():
                self._ready.set_exception(exc)
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with build_hub(self.settings) as built:
            sock, port = tornado.testing.bind_unused_port()
            server = tornado.httpserver.HTTPServer(built.app)
            server.add_sockets([sock])
            self.url = f"http://127.0.0.1:{port}"
            self._ready.set_result(built)
            try:
                await self._stop.wait()
            finally:
                server.stop()
                await server.close_all_connections()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        """Run a coroutine on the hub's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)

    # -- set-up helpers -------------------------------------------------------------------

    def add_user(
        self, name: str, *, admin: bool = False, teams: tuple[str, ...] = ()
    ) -> None:
        async def make() -> None:
            deps = self.hub.deps
            user, _ = await deps.accounts.create_user(name, PASSWORD, is_admin=admin)
            for team in teams:
                await deps.teams.join(user.id, team)

        self.run(make())

    def add_environment(self, env: Environment) -> None:
        self.run(self.hub.deps.catalog.add(env))  # type: ignore[attr-defined]

    def set_quota(self, limits: dict[str, Any], *, user: str = "", team: str = "") -> None:
        async def put() -> None:
            deps = self.hub.deps
            if user:
                await deps.quotas.set(limits, user_id=(await deps.accounts.get(user)).id)
            else:
                team_id = await deps.teams.find(team)
                assert team_id is not None, team
                await deps.quotas.set(limits, team_id=team_id)

        self.run(put())

    def server_state(self, user: str, server: str) -> str | None:
        async def get() -> str | None:
            deps = self.hub.deps
            record = await deps.servers.get((await deps.accounts.get(user)).id, server)
            return record.state.value if record else None

        return self.run(get())


    def container_of(self, user: str, server: str) -> str | None:
        async def get() -> str | None:
            deps = self.hub.deps
            record = await deps.servers.get((await deps.accounts.get(user)).id, server)
            return record.container_id if record else None

        return self.run(get())


def busybox_environment(
    image: str, name: str = "busybox", command: tuple[str, ...] = ("/app/start",), **fields: Any
) -> Environment:
    """A catalog entry over the busybox test image, worded for the pages' screenshots."""
    values: dict[str, Any] = {
        "description": "A tiny web app for tests.",
        "version": "1.0",
        "default": Resources(cpus=0.5, memory=128 * MiB),
    }
    values.update(fields)
    return busybox_env(image, name, command, **values)


def login(page: Page, hub: BrowserHub, name: str, password: str = PASSWORD) -> None:
    """Log in through the form and land on the home page."""
    page.goto(hub.url + "/hub/login")
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/hub/home")


def shot(page: Page, flow: str, step: str, *, full_page: bool = True) -> Path:
    """A screenshot in the git-ignored artifacts/ui/ folder."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{flow}-{step}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def first_load_bytes(page: Page, url: str) -> tuple[int, dict[str, int]]:
    """Bytes transferred (headers and encoded bodies) to load ``url`` with an empty cache."""
    sizes: dict[str, int] = {}

    def finished(request: Any) -> None:
        got = request.sizes()
        sizes[request.url] = got["responseBodySize"] + got["responseHeadersSize"]

    page.on("requestfinished", finished)
    try:
        page.goto(url, wait_until="networkidle")
    finally:
        page.remove_listener("requestfinished", finished)
    return sum(sizes.values()), sizes


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def browser_hub(settings: Settings) -> Iterator[BrowserHub]:
    """A real hub (real engine, real database) for a browser to talk to."""
    hub = BrowserHub(settings).start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def chromium(playwright_driver: Playwright) -> Iterator[Browser]:
    """Debian's Chromium, headless. Missing, it fails the test with the install command."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    browser = playwright_driver.chromium.launch(
        executable_path=CHROMIUM, args=["--no-sandbox", "--headless"]
    )
    yield browser
    browser.close()


@pytest.fixture
def ui_page(chromium: Browser) -> Iterator[Page]:
    """A fresh desktop-sized page with its own cookies and an empty cache."""
    # Reduced motion: the bars are drawn at their value, not mid-animation, in screenshots.
    context = chromium.new_context(viewport=DESKTOP, reduced_motion="reduce")
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
