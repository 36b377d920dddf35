"""What every JSON API handler shares: the body parsed safely, and the user a path names.

class ServerHandler(ApiHandler):
    async def delete(self, name: str, server: str = "") -> None:
        owner = await self.owner(name, "servers")      # 403 unless the caller may
        body = self.json_body()                         # a dict, or a 400 that says why
        record = await self.owned_server(owner, server) # or a 404
"""

from __future__ import annotations

import json
from typing import Any

from hub.domain.accounts import User, may_act_on
from hub.domain.errors import Forbidden, InvalidInput, NotFound
from hub.domain.records import ServerRecord
from hub.web.base import BaseHandler


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: Python reads them, JSON has none


def _holds_nul(value: Any) -> bool:
    """Whether any string in a parsed JSON document holds NUL (which PostgreSQL cannot store)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and "\x00" in item:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class ApiHandler(BaseHandler):
    """Shared helpers of the JSON API."""

    def json_body(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidInput("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidInput("the request body must be a JSON object")
        if _holds_nul(body):
            raise InvalidInput("the request body must not contain NUL characters")
        return body

    async def owner(self, name: str, scope: str) -> User:
        """The user named in the path, if the caller may act for them with ``scope``."""
        actor = self.require_any(scope)
        if not may_act_on(actor, self.scopes, scope, name):
            # The same answer whether or not the user exists: names are not to be probed.
            raise Forbidden(f"you may not use {scope!r} on {name!r}")
        return actor if name == actor.name else await self.deps.accounts.get(name)

    async def owned_server(self, owner: User, server: str) -> ServerRecord:
        """``owner``'s server named ``server`` ("" is the default one), or 404."""
        record = await self.deps.servers.get(owner.id, server)
        if record is None:
            raise NotFound(
                f"{owner.name} has no server {server!r}" if server else "no default server"
            )
        return record
