"""The analyst's pages: home (my servers), launch (the form) and progress (the launch bar).

GET /hub/home              my servers, live use, quotas and storage
GET /hub/launch            choose an environment and its size; ?server=NAME prefills the name
GET /hub/progress/NAME     a launch's progress bar (``/hub/progress/`` for the default server)

Each page renders its first data into a JSON block, so it shows at once, and an
ES module in ``static/`` keeps it live through the REST API.
"""

from __future__ import annotations

import logging
from typing import Any

from hub.domain.accounts import User
from hub.domain.errors import LabdockError, NotFound
from hub.domain.records import ServerRecord
from hub.domain.resources import format_memory
from hub.domain.servers import ServerState
from hub.web.base import BaseHandler, authenticated_page
from hub.web.limits_api import limits_model
from hub.web.servers_api import server_model

log = logging.getLogger(__name__)


async def server_view(handler: BaseHandler, record: ServerRecord) -> dict[str, Any]:
    """The API's server model plus the environment's version and description."""
    model = server_model(record, handler.deps.workspaces.notice(record.id))
    env = await handler.deps.catalog.by_id(record.environment_id or 0, record.image_digest)
    model["version"] = env.version if env else None
    model["description"] = env.description if env else None
    return model


async def storage_view(handler: BaseHandler, user: User) -> dict[str, Any] | None:
    """The home volume against its quota, or ``None`` when the hub does not measure it."""
    if handler.deps.storage is None:
        return None
    try:
        report = await handler.deps.storage.report(user)
    except LabdockError as exc:
        log.info("storage figures unavailable: %s", exc.message)
        return None
    standing = report.user
    return {
        "used": standing.used,
        "quota": standing.quota,
        "warning": standing.warning,
        "measured": report.measured.isoformat() if report.measured else None,
    }


class HomeHandler(BaseHandler):
    """My servers, with live use, quotas and storage."""

    @authenticated_page
    async def get(self) -> None:
        assert self.user is not None
        records = await self.deps.servers.of_user(self.user.id)
        limits = limits_model(await self.deps.launch_limits.for_user(self.user))
        data = {
            "user": self.user.name,
            "servers": [await server_view(self, r) for r in records],
            "quota": limits["quota"],
            "storage": await storage_view(self, self.user),
            "launchable": any(e["launchable"] for e in limits["environments"]),
        }
        self.render_page("home.html", data=data, nav="home")


class LaunchHandler(BaseHandler):
    """The launch form, bounded by what admission would grant now."""

    @authenticated_page
    async def get(self) -> None:
        assert self.user is not None
        records = await self.deps.servers.of_user(self.user.id)
        data = {
            "user": self.user.name,
            "limits": limits_model(await self.deps.launch_limits.for_user(self.user)),
            "servers": {r.name: r.state.value for r in records},
            "server": self.get_argument("server", ""),
            "environment": self.get_argument("environment", ""),
        }
        self.render_page("launch.html", data=data, nav="launch")


class ProgressPageHandler(BaseHandler):
    """A launch's progress; goes to the server once it is ready."""

    async def get(self, server: str) -> None:
        self.server_name = server
        await self.show()

    @authenticated_page
    async def show(self) -> None:
        assert self.user is not None
        server = self.server_name
        record = await self.deps.servers.get(self.user.id, server)
        if record is None:
            raise NotFound(f"you have no server {server!r}" if server else "no default server")
        res = record.resources
        size = [f"{res.cpus:g} CPU{'' if res.cpus == 1 else 's'}", format_memory(res.memory)]
        if res.gpus:
            size.append(f"{res.gpus} GPU{'' if res.gpus == 1 else 's'}")
        data = {
            "user": self.user.name,
            "server": await server_view(self, record),
            "starting": record.state == ServerState.STARTING,
            "size": " · ".join(size),
        }
        self.render_page("progress.html", data=data, nav="launch")
