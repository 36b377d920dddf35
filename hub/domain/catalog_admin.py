"""Admins' changes to the environment catalog: make an environment, add a version, change it.

    admin = CatalogAdmin(store=catalog, images=engine_images, teams=teams, audit=audit)
    info = await admin.create(root, "rstudio", NewEnvironment(manifest, "myorg/rstudio:4.3"))
    info = await admin.add_version(root, "rstudio", NewVersion("myorg/rstudio:4.4"))
    info = await admin.update(root, "rstudio", CatalogChange(version="4.3"))  # roll back
    info = await admin.update(root, "rstudio", CatalogChange(retired=True))

An environment is made only from an image already on the engine (nothing is
pulled), and each version's image is tagged ``labdock/<hub id>/<name>:<label>``
so that ``docker image prune`` keeps it. Everything that can be refused is
checked before the image gets its tag. Each change goes to the audit log. The
REST API (``hub.web.catalog_api``) comes through here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hub.domain.accounts import TeamDirectory, User
from hub.domain.audit import AuditLog
from hub.domain.catalog import (
    SHORT_DIGEST,
    VERSION_LABEL,
    Environment,
    EnvironmentInfo,
    EnvironmentManifest,
    ImageStore,
    ResourcesChange,
    check_policy,
    shown,
)
from hub.domain.errors import Conflict, InvalidInput, NotFound
from hub.domain.manifest import manifest_from_request
from hub.domain.resources import Resources

# What a new version may change about how its image runs (the rest is the environment's).
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

    async def all(self) -> list[Environment]:
        """Every environment at its current version, disabled and retired ones too."""

    async def describe(self, name: str) -> EnvironmentInfo | None:
        """An environment with its team names and every version; ``None`` if unknown."""

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
    ) -> EnvironmentInfo:
        """A new environment with one version; ``Conflict`` if the name is taken."""

    async def add_version(
        self,
        name: str,
        *,
        label: str,
        image: str,
        digest: str,
        manifest: EnvironmentManifest | None = None,
        current: bool = True,
    ) -> EnvironmentInfo:
        """Another version (runtime settings default to the current version's)."""

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
    ) -> EnvironmentInfo:
        """Change policy, teams or current version; ``None`` keeps a field."""


@dataclass(frozen=True)
class NewEnvironment:
    """An environment to make from ``image``, a reference to an image on the engine.

    ``label`` names its first version (default: the image's tag, or its short
    digest); ``teams`` it is offered to (empty: everyone).
    """

    manifest: EnvironmentManifest
    image: str
    label: str | None = None
    teams: tuple[str, ...] = ()
    enabled: bool = True


@dataclass(frozen=True)
class NewVersion:
    """Another image for an environment, with any runtime settings that change
    (``RUNTIME_KEYS``, as a request gives them; the others stay the current version's).

    ``current`` ``None`` makes it current without saying so in the audit log.
    """

    image: str
    label: str | None = None
    runtime: Mapping[str, object] = field(default_factory=dict)
    current: bool | None = None


@dataclass(frozen=True)
class CatalogChange:
    """What an admin changes about an environment; ``None`` keeps a field.

    ``version`` makes that version (label or digest) current: a rollback, or a
    roll forward.
    """

    description: str | None = None
    default: ResourcesChange | None = None
    maximum: ResourcesChange | None = None
    enabled: bool | None = None
    retired: bool | None = None
    teams: tuple[str, ...] | None = None
    version: str | None = None


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


def runtime_request(env: Environment) -> dict[str, object]:
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
        "resources": {"default": _figures(env.default), "maximum": _figures(env.maximum)},
    }


def _figures(r: Resources) -> dict[str, float | int]:
    return {"cpus": r.cpus, "memory": r.memory, "gpus": r.gpus}


class CatalogAdmin:
    """Reads the catalog for admins and changes it: every change is checked, then audited."""

    def __init__(
        self, *, store: CatalogStore, images: ImageStore, teams: TeamDirectory, audit: AuditLog
    ) -> None:
        self.store = store
        self._images = images
        self._teams = teams
        self._audit = audit

    async def everything(self) -> list[Environment]:
        """Every environment, disabled and retired ones too."""
        return await self.store.all()

    async def detail(self, actor: User, name: str, *, admin: bool) -> EnvironmentInfo:
        """An environment with every version, as ``actor`` may see it.

        An admin (``admin``: one acting with the catalog's scope) sees any; others
        only one launchable and offered to them, and the same ``NotFound`` as for a
        name not in the catalog otherwise.
        """
        info = await self.store.describe(name)
        if info is not None and not admin:
            env = info.environment
            teams = await self._teams.team_ids_of(actor.id)
            if not (env.launchable and env.offered_to(admin=actor.is_admin, team_ids=teams)):
                info = None
        if info is None:
            raise NotFound(f"environment {name!r} is not in the catalog")
        return info

    async def create(self, actor: User, name: str, new: NewEnvironment) -> EnvironmentInfo:
        """Make an environment from an image on the engine, pin it by a tag, and audit it."""
        if await self.store.describe(name) is not None:
            raise Conflict(f"environment {name!r} exists; PATCH it, or POST a new version")
        manifest = new.manifest
        check_policy(name, manifest.default, manifest.maximum, manifest.gpu)
        await self._check_teams(new.teams)
        digest = await self._resolve(new.image)
        label = new.label or default_label(new.image, digest)
        tag = await self._images.pin(name, label, digest)
        info = await self.store.create(
            name,
            manifest,
            label=label,
            image=tag,
            digest=digest,
            teams=new.teams,
            enabled=new.enabled,
        )
        detail = {"image": new.image, "digest": digest, "version": label, "teams": list(new.teams)}
        await self._record(actor, "environment.create", name, detail)
        return info

    async def add_version(self, actor: User, name: str, new: NewVersion) -> EnvironmentInfo:
        """Add another image to an environment (current unless ``new.current`` is False)."""
        info = await self.store.describe(name)
        if info is None:
            raise NotFound(f"environment {name!r} is not in the catalog")
        env = info.environment
        manifest = None
        if new.runtime:
            manifest = manifest_from_request({**runtime_request(env), **new.runtime}, name)
        digest = await self._resolve(new.image)
        label = new.label or default_label(new.image, digest)
        for known in info.versions:
            if label in (known.label, known.digest) or digest == known.digest:
                raise Conflict(
                    f"{name} already has this image or label, as version {known.label!r}; "
                    'make it current with PATCH {"version": ...}'
                )
        if new.current is not False:
            gpu = manifest.gpu if manifest is not None else env.gpu
            check_policy(name, env.default, env.maximum, gpu)
        tag = await self._images.pin(name, label, digest)
        updated = await self.store.add_version(
            name,
            label=label,
            image=tag,
            digest=digest,
            manifest=manifest,
            current=new.current is not False,
        )
        detail = {"image": new.image, "digest": digest, "version": label, "current": new.current}
        await self._record(actor, "environment.version", name, detail)
        return updated

    async def update(self, actor: User, name: str, change: CatalogChange) -> EnvironmentInfo:
        """Change an environment's policy or teams, pin a version as current (a rollback),
        disable or retire it; servers already running keep running."""
        info = await self.store.describe(name)
        if info is None:
            raise NotFound(f"environment {name!r} is not in the catalog")
        env = info.environment
        default = change.default.over(env.default) if change.default is not None else None
        maximum = change.maximum.over(env.maximum) if change.maximum is not None else None
        updated = await self.store.update(
            name,
            description=change.description,
            default=default,
            maximum=maximum,
            enabled=change.enabled,
            retired=change.retired,
            teams=change.teams,
            version=change.version,
        )
        detail: dict[str, object] = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in (
                ("description", change.description),
                ("enabled", change.enabled),
                ("retired", change.retired),
                ("teams", change.teams),
                ("version", change.version),
            )
            if value is not None
        }
        if default or maximum:
            detail["resources"] = {
                "default": _figures(updated.environment.default),
                "maximum": _figures(updated.environment.maximum),
            }
        await self._record(actor, "environment.update", name, detail)
        return updated

    async def _resolve(self, reference: str) -> str:
        """The digest of an image already on the engine."""
        if not reference:
            raise InvalidInput("image: name an image already on the engine (nothing is pulled)")
        digest = await self._images.resolve(reference)
        if digest is None:
            raise InvalidInput(
                f"image {shown(reference)} is not on the engine; labdock never pulls: build it "
                "(labdock images build) or load it (docker load) first"
            )
        return digest

    async def _check_teams(self, teams: Sequence[str]) -> None:
        for team in teams:
            if await self._teams.find(team) is None:
                raise InvalidInput(f"teams: no team {shown(team)}; create it first")

    async def _record(
        self, actor: User, action: str, name: str, detail: Mapping[str, object]
    ) -> None:
        await self._audit.record(
            actor_id=actor.id, action=action, target=f"environment:{name}", detail=detail
        )
