"""The REST API under ``/hub/api`` and the health check.

GET /hub/api/     {"version": "0.1.0"}
GET /hub/health   {"db": "ok", "backend": "ok"}  (503 naming what is down)
"""

from __future__ import annotations

import asyncio
from typing import Any

import hub
from hub.web.base import BaseHandler
from hub.web.deps import HealthCheck
from hub.web.openapi import errors, json_content, ref

HEALTH_TIMEOUT = 3.0


class VersionHandler(BaseHandler):
    """``GET /hub/api/``."""

    async def get(self) -> None:
        self.write_json({"version": hub.__version__})


class HealthHandler(BaseHandler):
    """``GET /hub/health``: checks the database and the container engine at once."""

    async def prepare(self) -> None:
        # Health must answer even when the database is down, so no session lookup.
        self.user = None

    async def get(self) -> None:
        db, backend = await asyncio.gather(
            self._probe(self.deps.check_db), self._probe(self.deps.check_backend)
        )
        healthy = db == "ok" and backend == "ok"
        self.set_header("Cache-Control", "no-store")
        self.write_json({"db": db, "backend": backend}, status=200 if healthy else 503)

    @staticmethod
    async def _probe(check: HealthCheck) -> str:
        try:
            await asyncio.wait_for(check(), HEALTH_TIMEOUT)
        except TimeoutError:
            return f"down: no answer within {HEALTH_TIMEOUT:g} s"
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"down: {text[:200]}"
        return "ok"


OPENAPI_PATHS: dict[str, Any] = {
    "/": {
        "get": {
            "summary": "The hub's version",
            "operationId": "getVersion",
            "tags": ["meta"],
            "security": [{}, {"token": []}, {"cookie": []}],
            "responses": {
                "200": json_content(ref("Version")),
                **errors(401),
            },
        }
    }
}
