"""The environment catalog through the REST API: what users may launch, and admins' changes.

    GET   /hub/api/environments                  -> what this user may launch
    GET   /hub/api/environments/jupyter          -> it, with every version
    POST  /hub/api/environments/rstudio          {"image": "myorg/rstudio:4.3", "port": 8787,
                                                  "command": [...], "prefix": "strip", ...}
    PATCH /hub/api/environments/rstudio          {"enabled": false, "teams": ["risk"],
                                                  "version": "4.2"}
    POST  /hub/api/environments/rstudio/versions {"image": "myorg/rstudio:4.4"}

Changing the catalog takes the ``admin:environments`` scope and an admin. The
handlers read each body into a typed value and hand it to
``hub.domain.catalog_admin.CatalogAdmin``, which checks it, pins the image (nothing
is pulled) and writes the audit log. Disabling or retiring an environment stops
new launches and restarts; servers already running keep running until they are
stopped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hub.domain.accounts import User, check_team_name
from hub.domain.catalog import (
    ENVIRONMENT_NAME,
    Environment,
    EnvironmentInfo,
    Version,
    check_label,
    check_version_ref,
    resources_change,
    shown,
)
from hub.domain.catalog_admin import (
    RUNTIME_KEYS,
    CatalogAdmin,
    CatalogChange,
    NewEnvironment,
    NewVersion,
)
from hub.domain.errors import BackendUnavailable, Forbidden, InvalidInput
from hub.domain.manifest import manifest_from_request
from hub.domain.resources import Resources
from hub.web.api_base import ApiHandler
from hub.web.catalog_openapi import OPENAPI_PATHS as OPENAPI_PATHS  # read by hub.web.openapi
from hub.web.catalog_openapi import OPENAPI_SCHEMAS as OPENAPI_SCHEMAS

SCOPE = "admin:environments"
PATCH_KEYS = frozenset({"description", "resources", "enabled", "retired", "teams", "version"})
ADMIN_KEYS = frozenset({"image", "version", "teams", "enabled"})
VERSION_KEYS = frozenset({"image", "version", "current"})


# Models ------------------------------------------------------------------------------


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _res(r: Resources) -> dict[str, Any]:
    return {"cpus": r.cpus, "memory": r.memory, "gpus": r.gpus}


def environment_model(env: Environment) -> dict[str, Any]:
    """An environment as users see it: what it holds, its version and its resources."""
    return {
        "name": env.name,
        "description": env.description,
        "version": env.version,
        "image": env.image,
        "contents": env.contents,
        "default": _res(env.default),
        "maximum": _res(env.maximum),
        "gpu": env.gpu,
    }


def version_model(v: Version) -> dict[str, Any]:
    return {
        "version": v.label,
        "image": v.image,
        "digest": v.digest,
        "contents": v.contents,
        "created": _iso(v.created),
        "current": v.current,
    }


def detail_model(info: EnvironmentInfo, *, admin: bool) -> dict[str, Any]:
    """An environment with every version; admins also see its state, teams and runtime."""
    env = info.environment
    model = {**environment_model(env), "versions": [version_model(v) for v in info.versions]}
    if admin:
        model.update(
            enabled=env.enabled,
            retired=env.retired,
            teams=list(info.teams),
            source=info.source,
            port=env.port,
            command=list(env.command),
            prefix="keep" if env.keep_prefix else "strip",
            readiness_path=env.readiness_path,
            gpu_shareable=env.gpu_shareable,
            pids_limit=env.pids_limit,
            shm_size=env.shm_size,
            home=env.home,
        )
    return model


# Request checks ------------------------------------------------------------------------


def _name(name: str) -> str:
    if not ENVIRONMENT_NAME.match(name):
        raise InvalidInput(
            f"environment {shown(name)}: names are 1 to 63 characters of a-z, 0-9 and '-'"
        )
    return name


def _flag(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise InvalidInput(f"{key}: expected true or false")


def _teams(body: dict[str, Any]) -> tuple[str, ...] | None:
    teams = body.get("teams")
    if teams is None:
        return None
    if not isinstance(teams, list) or not all(isinstance(t, str) for t in teams):
        raise InvalidInput("teams: expected a list of team names ([] offers it to everyone)")
    for team in teams:
        check_team_name(team)
    return tuple(dict.fromkeys(teams))


def _image(body: dict[str, Any]) -> str:
    # Not a string is as good as missing: the catalog refuses it, naming the field.
    image = body.get("image")
    return image if isinstance(image, str) else ""


def _label(body: dict[str, Any]) -> str | None:
    return check_label(body["version"]) if body.get("version") is not None else None


def new_environment(name: str, body: dict[str, Any]) -> NewEnvironment:
    """``POST /environments/{name}``'s body: the manifest, the image, and who gets it."""
    definition = {k: v for k, v in body.items() if k not in ADMIN_KEYS}
    manifest = manifest_from_request(definition, name)
    teams = _teams(body) or ()
    enabled = _flag(body, "enabled")
    return NewEnvironment(
        manifest=manifest,
        image=_image(body),
        label=_label(body),
        teams=teams,
        enabled=True if enabled is None else enabled,
    )


def new_version(body: dict[str, Any]) -> NewVersion:
    """``POST /environments/{name}/versions``'s body: the image and any runtime settings."""
    unknown = set(body) - VERSION_KEYS - RUNTIME_KEYS
    if unknown:
        raise InvalidInput(
            f"unknown field {shown(sorted(map(str, unknown))[0])}; description and "
            "resources belong to the environment (PATCH it)"
        )
    current = _flag(body, "current")
    return NewVersion(
        image=_image(body),
        label=_label(body),
        runtime={k: v for k, v in body.items() if k in RUNTIME_KEYS},
        current=current,
    )


def catalog_change(body: dict[str, Any]) -> CatalogChange:
    """``PATCH /environments/{name}``'s body."""
    unknown = set(body) - PATCH_KEYS
    if unknown:
        raise InvalidInput(
            f"unknown field {shown(sorted(map(str, unknown))[0])}; "
            f"expected {', '.join(sorted(PATCH_KEYS))}"
        )
    description = body.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > 2000):
        raise InvalidInput("description: expected a string of at most 2000 characters")
    default = maximum = None
    resources = body.get("resources")
    if resources is not None:
        if not isinstance(resources, dict) or set(resources) - {"default", "maximum"}:
            raise InvalidInput('resources: expected {"default": {...}, "maximum": {...}}')
        if "default" in resources:
            default = resources_change(resources["default"], "resources.default")
        if "maximum" in resources:
            maximum = resources_change(resources["maximum"], "resources.maximum")
    version = check_version_ref(body["version"]) if body.get("version") is not None else None
    return CatalogChange(
        description=description,
        default=default,
        maximum=maximum,
        enabled=_flag(body, "enabled"),
        retired=_flag(body, "retired"),
        teams=_teams(body),
        version=version,
    )


# Handlers ------------------------------------------------------------------------------


class CatalogHandler(ApiHandler):
    """Shared by the catalog's handlers: the admin check and the catalog service."""

    def admin(self) -> User:
        actor = self.require(SCOPE)
        if not actor.is_admin:
            raise Forbidden("only admins change the environment catalog")
        return actor

    @property
    def catalog_admin(self) -> CatalogAdmin:
        service = self.deps.catalog_admin
        if service is None:
            raise BackendUnavailable("this hub was started without catalog administration")
        return service


class EnvironmentsHandler(CatalogHandler):
    """``GET /hub/api/environments``: what this user may launch (``?all=1``: admins, all)."""

    async def get(self) -> None:
        actor = self.require("read:servers")
        if self.get_argument("all", "") not in ("", "0", "false"):
            self.admin()
            everything = await self.catalog_admin.everything()
            self.write_json(
                [
                    {**environment_model(e), "enabled": e.enabled, "retired": e.retired}
                    for e in everything
                ]
            )
            return
        teams = await self.deps.teams.team_ids_of(actor.id)
        envs = await self.deps.catalog.visible_to(teams, admin=actor.is_admin)
        self.write_json([environment_model(e) for e in envs])


class EnvironmentHandler(CatalogHandler):
    """``/hub/api/environments/{name}``: read, create and change one environment."""

    async def get(self, name: str) -> None:
        actor = self.require("read:servers")
        _name(name)
        admin = actor.is_admin and SCOPE in self.scopes
        info = await self.catalog_admin.detail(actor, name, admin=admin)
        self.write_json(detail_model(info, admin=admin))

    async def post(self, name: str) -> None:
        actor = self.admin()
        new = new_environment(_name(name), self.json_body())
        info = await self.catalog_admin.create(actor, name, new)
        self.write_json(detail_model(info, admin=True), 201)

    async def patch(self, name: str) -> None:
        actor = self.admin()
        _name(name)
        change = catalog_change(self.json_body())
        updated = await self.catalog_admin.update(actor, name, change)
        self.write_json(detail_model(updated, admin=True))


class VersionsHandler(CatalogHandler):
    """``POST /hub/api/environments/{name}/versions``: another image for an environment."""

    async def post(self, name: str) -> None:
        actor = self.admin()
        _name(name)
        new = new_version(self.json_body())
        updated = await self.catalog_admin.add_version(actor, name, new)
        self.write_json(detail_model(updated, admin=True), 201)
