# ruff: noqa: F811 (pytest fixtures imported from tests.browser_support)
"""The owner sees, on the home page, that a process in a running server was OOM-killed."""

from __future__ import annotations

import re

import docker
from playwright.sync_api import Page, expect

from tests.browser_support import (  # noqa: F401 (fixtures)
    BrowserHub,
    browser_hub,
    busybox_environment,
    chromium,
    login,
    playwright_driver,
    shot,
    ui_page,
)
from tests.busybox_image import ensure_test_image
from tests.test_ui_browser import launch_from_form, server_card


def test_a_child_killed_for_memory_shows_on_the_running_servers_card(
    browser_hub: BrowserHub, ui_page: Page, docker_client: docker.DockerClient
) -> None:
    hub, page = browser_hub, ui_page
    hub.add_environment(busybox_environment(ensure_test_image(docker_client)))
    hub.add_user("gil")
    login(page, hub, "gil")
    launch_from_form(page, "busybox", "lab", memory="128 MiB")
    page.wait_for_url("**/user/gil/lab/")
    container_id = hub.container_of("gil", "lab")
    assert container_id
    code, _ = docker_client.containers.get(container_id).exec_run(
        ["dd", "if=/dev/zero", "of=/dev/null", "bs=512M"]
    )
    assert code == 137
    page.goto(hub.url + "/hub/home")
    card = server_card(page, "lab")
    notice = card.locator("[data-notice]")
    expect(notice).to_have_text(
        re.compile(r"a process in lab was killed: over the 128 MiB memory limit"), timeout=20_000
    )
    expect(card.locator(".state")).to_have_text("Running")
    page.wait_for_timeout(4_000)  # past the page's next refresh from the API
    expect(notice).to_be_visible()
    shot(page, "oom-notice", "1-home-running")
