"""The environment catalog through the REST API: what users may launch, and admins' changes.

    GET   /hub/api/environments                  -> what this user may launch
    GET   /hub/api/environments/jupyter          -> it, with every version
    POST  /hub/api/environments/rstudio          {"image": "myorg/rstudio:4.3", "port": 8787,
                                                  "command": [...], "prefix": "strip", ...}
    PATCH /hub/api/environments/rstudio          {"enabled": false, "teams": ["risk"],
                                                  "version": "4.2"}
    POST  /hub/api/environments/rstudio/versions {"image": "myorg/rstudio:4.4"}

Changing the catalog takes the ``admin:environments`` scope and an admin; each
change goes to the audit log. An environment is made only from an image already
on the engine (nothing is pulled), and each version's image is tagged
``labdock/<hub id>/<name>:<label>`` so that ``docker image prune`` keeps it. Disabling or
retiring an environment stops new launches and restarts; servers already
running keep running until they are stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from hub.domain.accounts import User, check_team_name
from hub.domain.catalog import (
    ENVIRONMENT_NAME,
    SHORT_DIGEST,
    VERSION_LABEL,
    Environment,
    EnvironmentInfo,
    EnvironmentManifest,
    ImageStore,
    Version,
    check_label,
    check_policy,
    check_version_ref,
    resources_from,
    shown,
)
from hub.domain.errors import BackendUnavailable, Conflict, Forbidden, InvalidInput, NotFound
from hub.domain.manifest import manifest_from_request
from hub.domain.resources import Resources
from hub.web.catalog_openapi import OPENAPI_PATHS as OPENAPI_PATHS  # read by hub.web.openapi
from hub.web.catalog_openapi import OPENAPI_SCHEMAS as OPENAPI_SCHEMAS
from hub.web.servers_api import ApiHandler

SCOPE = "admin:environments"
PATCH_KEYS = frozenset({"description", "resources", "enabled", "retired", "teams", "version"})
ADMIN_KEYS = frozenset({"image", "version", "teams", "enabled"})
VERSION_KEYS = frozenset({"image", "version", "current"})
RUNTIME_KEYS = frozenset(
    {
        "port",
        "command",
        "prefix",
        "readiness_path",
        "gpu",
        "gpu_shareable",
        "pids_limit",
        "shm_size",
        "home",
        "contents",
    }
)


class CatalogStore(Protocol):
    """The catalog as admins change it (``hub.db.environments.SqlCatalog``)."""

    async def all(self) -> list[Environment]: ...

    async def describe(self, name: str) -> EnvironmentInfo | None: ...

    async def create(
        self,
        name: str,
        manifest: EnvironmentManifest,
        *,
        label: str,
        image: str,
        digest: str,
        teams: Sequence[str] = (),
        enabled: bool = True,
    ) -> EnvironmentInfo: ...

    async def add_version(
        self,
        name: str,
        *,
        label: str,
        image: str,
        digest: str,
        manifest: EnvironmentManifest | None = None,
        current: bool = True,
    ) -> EnvironmentInfo: ...

    async def update(
        self,
        name: str,
        *,
        description: str | None = None,
        default: Resources | None = None,
        maximum: Resources | None = None,
        enabled: bool | None = None,
        retired: bool | None = None,
        teams: Sequence[str] | None = None,
        version: str | None = None,
    ) -> EnvironmentInfo: ...


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


def _teams(body: dict[str, Any]) -> list[str] | None:
    teams = body.get("teams")
    if teams is None:
        return None
    if not isinstance(teams, list) or not all(isinstance(t, str) for t in teams):
        raise InvalidInput("teams: expected a list of team names ([] offers it to everyone)")
    for team in teams:
        check_team_name(team)
    return list(dict.fromkeys(teams))


def default_label(reference: str, digest: str) -> str:
    """The tag of ``myorg/rstudio:4.3`` (``4.3``), or the digest's first 12 hex digits."""
    _, colon, tag = reference.rpartition(":")
    if (
        colon
        and "/" not in tag
        and tag != "latest"
        and VERSION_LABEL.match(tag)
        and not reference.startswith("sha256:")
    ):
        return tag
    return digest.removeprefix("sha256:")[:SHORT_DIGEST]


def runtime_request(env: Environment) -> dict[str, Any]:
    """The current version's runtime settings, as a request would give them."""
    return {
        "description": env.description,
        "contents": env.contents,
        "port": env.port,
        "command": list(env.command),
        "prefix": "keep" if env.keep_prefix else "strip",
        "readiness_path": env.readiness_path,
        "gpu": env.gpu,
        "gpu_shareable": env.gpu_shareable,
        "pids_limit": env.pids_limit,
        "shm_size": env.shm_size,
        "home": env.home,
        "resources": {"default": _res(env.default), "maximum": _res(env.maximum)},
    }


# Handlers ------------------------------------------------------------------------------


class CatalogHandler(ApiHandler):
    """Shared by the catalog's handlers: the admin check and the collaborators."""

    def admin(self) -> User:
        actor = self.require(SCOPE)
        if not actor.is_admin:
            raise Forbidden("only admins change the environment catalog")
        return actor

    @property
    def store(self) -> CatalogStore:
        store = self.deps.catalog_admin
        if store is None:
            raise BackendUnavailable("this hub was started without catalog administration")
        return store

    @property
    def images(self) -> ImageStore:
        images = self.deps.images
        if images is None:
            raise BackendUnavailable("this hub was started without access to the engine's images")
        return images

    async def resolve(self, body: dict[str, Any]) -> tuple[str, str]:
        """The image reference and its digest: the image must be on the engine already."""
        reference = body.get("image")
        if not isinstance(reference, str) or not reference:
            raise InvalidInput("image: name an image already on the engine (nothing is pulled)")
        digest = await self.images.resolve(reference)
        if digest is None:
            raise InvalidInput(
                f"image {shown(reference)} is not on the engine; labdock never pulls: build it "
                "(labdock images build) or load it (docker load) first"
            )
        return reference, digest

    async def check_teams(self, teams: Sequence[str]) -> None:
        for team in teams:
            if await self.deps.teams.find(team) is None:
                raise InvalidInput(f"teams: no team {shown(team)}; create it first")

    async def audit(self, actor: User, action: str, name: str, detail: dict[str, Any]) -> None:
        await self.deps.audit.record(
            actor_id=actor.id, action=action, target=f"environment:{name}", detail=detail
        )


class EnvironmentsHandler(CatalogHandler):
    """``GET /hub/api/environments``: what this user may launch (``?all=1``: admins, all)."""

    async def get(self) -> None:
        actor = self.require("read:servers")
        if self.get_argument("all", "") not in ("", "0", "false"):
            self.admin()
            everything = await self.store.all()
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
        info = await self.store.describe(name)
        admin = actor.is_admin and SCOPE in self.scopes
        if info is not None and not admin:
            env = info.environment
            teams = await self.deps.teams.team_ids_of(actor.id)
            if not (env.launchable and env.offered_to(admin=actor.is_admin, team_ids=teams)):
                info = None  # the same answer as for a name not in the catalog
        if info is None:
            raise NotFound(f"environment {name!r} is not in the catalog")
        self.write_json(detail_model(info, admin=admin))

    async def post(self, name: str) -> None:
        actor = self.admin()
        _name(name)
        body = self.json_body()
        definition = {k: v for k, v in body.items() if k not in ADMIN_KEYS}
        manifest = manifest_from_request(definition, name)
        teams = _teams(body) or []
        enabled = _flag(body, "enabled")
        label = check_label(body["version"]) if body.get("version") is not None else None
        if await self.store.describe(name) is not None:
            raise Conflict(f"environment {name!r} exists; PATCH it, or POST a new version")
        # Everything that can be refused is checked before the image gets its tag.
        check_policy(name, manifest.default, manifest.maximum, manifest.gpu)
        await self.check_teams(teams)
        reference, digest = await self.resolve(body)
        label = label or default_label(reference, digest)
        tag = await self.images.pin(name, label, digest)
        info = await self.store.create(
            name,
            manifest,
            label=label,
            image=tag,
            digest=digest,
            teams=teams,
            enabled=True if enabled is None else enabled,
        )
        await self.audit(
            actor,
            "environment.create",
            name,
            {"image": reference, "digest": digest, "version": label, "teams": teams},
        )
        self.write_json(detail_model(info, admin=True), 201)

    async def patch(self, name: str) -> None:
        actor = self.admin()
        _name(name)
        body = self.json_body()
        unknown = set(body) - PATCH_KEYS
        if unknown:
            raise InvalidInput(
                f"unknown field {shown(sorted(map(str, unknown))[0])}; "
                f"expected {', '.join(sorted(PATCH_KEYS))}"
            )
        info = await self.store.describe(name)
        if info is None:
            raise NotFound(f"environment {name!r} is not in the catalog")
        description = body.get("description")
        if description is not None and (
            not isinstance(description, str) or len(description) > 2000
        ):
            raise InvalidInput("description: expected a string of at most 2000 characters")
        default = maximum = None
        resources = body.get("resources")
        if resources is not None:
            if not isinstance(resources, dict) or set(resources) - {"default", "maximum"}:
                raise InvalidInput('resources: expected {"default": {...}, "maximum": {...}}')
            env = info.environment
            if "default" in resources:
                default = resources_from(resources["default"], "resources.default", env.default)
            if "maximum" in resources:
                maximum = resources_from(resources["maximum"], "resources.maximum", env.maximum)
        version = body.get("version")
        if version is not None:
            version = check_version_ref(version)
        updated = await self.store.update(
            name,
            description=description,
            default=default,
            maximum=maximum,
            enabled=_flag(body, "enabled"),
            retired=_flag(body, "retired"),
            teams=_teams(body),
            version=version,
        )
        detail = dict(body)
        if default or maximum:
            detail["resources"] = {
                "default": _res(updated.environment.default),
                "maximum": _res(updated.environment.maximum),
            }
        await self.audit(actor, "environment.update", name, detail)
        self.write_json(detail_model(updated, admin=True))


class VersionsHandler(CatalogHandler):
    """``POST /hub/api/environments/{name}/versions``: another image for an environment."""

    async def post(self, name: str) -> None:
        actor = self.admin()
        _name(name)
        body = self.json_body()
        unknown = set(body) - VERSION_KEYS - RUNTIME_KEYS
        if unknown:
            raise InvalidInput(
                f"unknown field {shown(sorted(map(str, unknown))[0])}; description and "
                "resources belong to the environment (PATCH it)"
            )
        current = _flag(body, "current")
        label = check_label(body["version"]) if body.get("version") is not None else None
        info = await self.store.describe(name)
        if info is None:
            raise NotFound(f"environment {name!r} is not in the catalog")
        manifest = None
        if set(body) & RUNTIME_KEYS:
            merged = {**runtime_request(info.environment)}
            merged.update({k: v for k, v in body.items() if k in RUNTIME_KEYS})
            manifest = manifest_from_request(merged, name)
        reference, digest = await self.resolve(body)
        label = label or default_label(reference, digest)
        for known in info.versions:
            if label in (known.label, known.digest) or digest == known.digest:
                raise Conflict(
                    f"{name} already has this image or label, as version {known.label!r}; "
                    'make it current with PATCH {"version": ...}'
                )
        env = info.environment
        if current is not False:
            gpu = manifest.gpu if manifest is not None else env.gpu
            check_policy(name, env.default, env.maximum, gpu)
        tag = await self.images.pin(name, label, digest)
        updated = await self.store.add_version(
            name,
            label=label,
            image=tag,
            digest=digest,
            manifest=manifest,
            current=True if current is None else current,
        )
        await self.audit(
            actor,
            "environment.version",
            name,
            {"image": reference, "digest": digest, "version": label, "current": current},
        )
        self.write_json(detail_model(updated, admin=True), 201)
