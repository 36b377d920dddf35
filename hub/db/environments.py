"""The environment catalog in the database; implements ``hub.domain.catalog.Catalog``.

    catalog = SqlCatalog(sessions)
    await catalog.seed({"python": SeedImage(manifest, "labdock/python:5be0c1d24a7e",
                                            "sha256:3f2a...")})
    env = await catalog.get("python")                   # its current version
    old = await catalog.get("python", "5be0c1d24a7e")   # an earlier one, by label or digest

An environment row holds the policy (description, resources, enabled, retired)
and names its current version; ``environment_versions`` holds every image it
has had, pinned by digest, with the manifest snapshot that says how to run it.
Seeding adds a version when a build produced a new image, and never deletes one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.db.engine import writing
from hub.db.schema import EnvironmentRow, EnvironmentTeamRow, EnvironmentVersionRow, TeamRow
from hub.domain.catalog import (
    DEFAULT_HOME,
    DEFAULT_PIDS_LIMIT,
    DEFAULT_SHM_SIZE,
    VERSION_LABEL,
    Environment,
    EnvironmentInfo,
    EnvironmentManifest,
    SeedImage,
    Version,
    check_policy,
    manifest_of,
    shown,
)
from hub.domain.errors import Conflict, InvalidInput, NotFound
from hub.domain.resources import Resources

log = logging.getLogger(__name__)


def _res(r: Resources) -> dict[str, Any]:
    return {"cpus": r.cpus, "memory": r.memory, "gpus": r.gpus}


def _resources(d: Mapping[str, Any]) -> Resources:
    return Resources(cpus=float(d["cpus"]), memory=int(d["memory"]), gpus=int(d.get("gpus", 0)))


def manifest_document(manifest: EnvironmentManifest) -> dict[str, Any]:
    """How to run one version, as stored with it: plain JSON."""
    return {
        "contents": manifest.version,
        "port": manifest.port,
        "command": list(manifest.command),
        "prefix": manifest.prefix,
        "readiness_path": manifest.readiness_path,
        "default": _res(manifest.default),
        "maximum": _res(manifest.maximum),
        "gpu": manifest.gpu,
        "gpu_shareable": manifest.gpu_shareable,
        "pids_limit": manifest.pids_limit,
        "shm_size": manifest.shm_size,
        "home": manifest.home,
    }


def policy_document(default: Resources, maximum: Resources) -> dict[str, Any]:
    """The admins' part of an environment: its default and maximum resources."""
    return {"default": _res(default), "maximum": _res(maximum)}


def tag_label(tag: str) -> str:
    """``labdock/python:5be0c1d24a7e`` -> ``5be0c1d24a7e`` (the label of a built version)."""
    _, colon, label = tag.rpartition(":")
    return label if colon and "/" not in label and VERSION_LABEL.match(label) else "1"


def _environment(
    row: EnvironmentRow, version: EnvironmentVersionRow | None, teams: frozenset[int]
) -> Environment:
    doc: Mapping[str, Any] = version.manifest if version is not None else row.manifest
    policy = row.manifest
    return Environment(
        id=row.id,
        name=row.name,
        description=row.description,
        version=version.label if version is not None else row.version,
        image=(version.digest or version.image) if version else (row.image_digest or row.image),
        port=int(doc["port"]),
        command=tuple(doc["command"]),
        keep_prefix=doc.get("prefix", "keep") == "keep",
        readiness_path=str(doc["readiness_path"]),
        default=_resources(policy.get("default") or doc["default"]),
        maximum=_resources(policy.get("maximum") or doc["maximum"]),
        gpu=bool(doc.get("gpu", False)),
        gpu_shareable=bool(doc.get("gpu_shareable", False)),
        pids_limit=int(doc.get("pids_limit", DEFAULT_PIDS_LIMIT)),
        shm_size=int(doc.get("shm_size", DEFAULT_SHM_SIZE)),
        home=str(doc.get("home", DEFAULT_HOME)),
        teams=teams,
        enabled=row.enabled,
        retired=row.retired,
        contents=str(doc.get("contents", "")),
        current=version is None or version.label == row.version,
    )


def _version(row: EnvironmentRow, v: EnvironmentVersionRow) -> Version:
    return Version(
        label=v.label,
        image=v.image,
        digest=v.digest,
        contents=str(v.manifest.get("contents", "")),
        created=v.created,
        current=v.label == row.version,
    )


class SqlCatalog:
    """Environments, their versions and their teams, as rows."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    # Reading ---------------------------------------------------------------

    @staticmethod
    async def _teams(s: AsyncSession, environment_ids: Sequence[int]) -> dict[int, frozenset[int]]:
        rows = await s.execute(
            select(EnvironmentTeamRow.environment_id, EnvironmentTeamRow.team_id).where(
                EnvironmentTeamRow.environment_id.in_(environment_ids)
            )
        )
        found: dict[int, set[int]] = {}
        for env_id, team_id in rows:
            found.setdefault(env_id, set()).add(team_id)
        return {env_id: frozenset(teams) for env_id, teams in found.items()}

    @staticmethod
    async def _current(s: AsyncSession, row: EnvironmentRow) -> EnvironmentVersionRow | None:
        return await s.scalar(
            select(EnvironmentVersionRow).where(
                EnvironmentVersionRow.environment_id == row.id,
                EnvironmentVersionRow.label == row.version,
            )
        )

    @staticmethod
    async def _find_version(
        s: AsyncSession, environment_id: int, ref: str
    ) -> EnvironmentVersionRow | None:
        """By label, by digest, or by a digest's first hex digits when only one matches."""
        of_env = EnvironmentVersionRow.environment_id == environment_id
        exact = await s.scalar(
            select(EnvironmentVersionRow).where(
                of_env, (EnvironmentVersionRow.label == ref) | (EnvironmentVersionRow.digest == ref)
            )
        )
        if exact is not None or not ref.startswith("sha256:") or len(ref) >= 71:
            return exact
        candidates = [
            v
            for v in await s.scalars(select(EnvironmentVersionRow).where(of_env))
            if v.digest.startswith(ref)
        ]
        if len(candidates) > 1:
            raise InvalidInput(f"version {shown(ref)} matches several versions; give more digits")
        return candidates[0] if candidates else None

    async def _load(self, s: AsyncSession, row: EnvironmentRow, ref: str | None) -> Environment:
        if ref is None:
            version = await self._current(s, row)
        else:
            version = await self._find_version(s, row.id, ref)
            if version is None:
                raise NotFound(
                    f"environment {row.name!r} has no version {shown(ref)}; "
                    f"GET /hub/api/environments/{row.name} lists them"
                )
        teams = (await self._teams(s, [row.id])).get(row.id, frozenset())
        return _environment(row, version, teams)

    async def get(self, name: str, version: str | None = None) -> Environment | None:
        async with self._sessions() as s:
            row = await s.scalar(select(EnvironmentRow).where(EnvironmentRow.name == name))
            return await self._load(s, row, version) if row else None

    async def by_id(self, environment_id: int, digest: str = "") -> Environment | None:
        async with self._sessions() as s:
            row = await s.get(EnvironmentRow, environment_id)
            if row is None:
                return None
            version = None
            if digest:
                version = await s.scalar(
                    select(EnvironmentVersionRow).where(
                        EnvironmentVersionRow.environment_id == row.id,
                        EnvironmentVersionRow.digest == digest,
                    )
                )
            version = version or await self._current(s, row)
            teams = (await self._teams(s, [row.id])).get(row.id, frozenset())
            return _environment(row, version, teams)

    async def _all(self, s: AsyncSession, *where: Any) -> list[Environment]:
        rows = await s.execute(
            select(EnvironmentRow, EnvironmentVersionRow)
            .outerjoin(
                EnvironmentVersionRow,
                (EnvironmentVersionRow.environment_id == EnvironmentRow.id)
                & (EnvironmentVersionRow.label == EnvironmentRow.version),
            )
            .where(*where)
            .order_by(EnvironmentRow.name)
        )
        pairs = [(row, version) for row, version in rows]
        teams = await self._teams(s, [row.id for row, _ in pairs])
        return [_environment(row, v, teams.get(row.id, frozenset())) for row, v in pairs]

    async def visible_to(
        self, team_ids: frozenset[int], *, admin: bool = False
    ) -> list[Environment]:
        async with self._sessions() as s:
            envs = await self._all(
                s, EnvironmentRow.enabled.is_(True), EnvironmentRow.retired.is_(False)
            )
        return [e for e in envs if e.offered_to(admin=admin, team_ids=team_ids)]

    async def all(self) -> list[Environment]:
        """Every environment, disabled and retired ones too (for admins)."""
        async with self._sessions() as s:
            return await self._all(s)

    async def describe(self, name: str) -> EnvironmentInfo | None:
        """An environment with its team names and every version, newest first."""
        async with self._sessions() as s:
            row = await s.scalar(select(EnvironmentRow).where(EnvironmentRow.name == name))
            if row is None:
                return None
            env = await self._load(s, row, None)
            team_names = await s.scalars(
                select(TeamRow.name)
                .join(EnvironmentTeamRow, EnvironmentTeamRow.team_id == TeamRow.id)
                .where(EnvironmentTeamRow.environment_id == row.id)
                .order_by(TeamRow.name)
            )
            versions = await s.scalars(
                select(EnvironmentVersionRow)
                .where(EnvironmentVersionRow.environment_id == row.id)
                .order_by(EnvironmentVersionRow.id.desc())
            )
            return EnvironmentInfo(
                environment=env,
                teams=tuple(team_names),
                source=row.source,
                customized=row.customized,
                versions=tuple(_version(row, v) for v in versions),
            )

    # Seeding ---------------------------------------------------------------

    async def seed(self, built: Mapping[str, SeedImage]) -> list[tuple[str, str]]:
        """Record each built image as its environment's version; return the new (name, label).

        A new environment is created from its manifest. For an existing one, an
        image already recorded changes nothing (so an admin's choice of current
        version stands); a new image becomes a new, current version, and unless
        an admin has edited the environment its description and resources follow
        the manifest. Environments created by admins are left alone.
        """
        added: list[tuple[str, str]] = []
        async with writing(self._sessions) as s:
            for name, image in built.items():
                manifest = image.manifest
                row = await s.scalar(select(EnvironmentRow).where(EnvironmentRow.name == name))
                if row is None:
                    row = EnvironmentRow(
                        name=name,
                        description=manifest.description,
                        image=image.tag,
                        manifest=policy_document(manifest.default, manifest.maximum),
                        source="manifest",
                        customized=False,
                        enabled=True,
                        retired=False,
                        created=datetime.now(UTC),
                    )
                    s.add(row)
                    await s.flush()
                elif row.source != "manifest":
                    log.warning("not seeding %s: an admin made an environment of that name", name)
                    continue
                elif await s.scalar(
                    select(EnvironmentVersionRow.id).where(
                        EnvironmentVersionRow.environment_id == row.id,
                        EnvironmentVersionRow.digest == image.digest,
                    )
                ):
                    continue
                elif not row.customized:
                    row.description = manifest.description
                    row.manifest = policy_document(manifest.default, manifest.maximum)
                label = await self._free_label(s, row.id, tag_label(image.tag), image.digest)
                self._add_version(s, row, label, image.tag, image.digest, manifest)
                added.append((name, label))
        return added

    @staticmethod
    async def _free_label(s: AsyncSession, environment_id: int, label: str, digest: str) -> str:
        """``label``, or when another version has it (a forced rebuild), ``label-<digest>``."""
        taken = await s.scalar(
            select(EnvironmentVersionRow.id).where(
                EnvironmentVersionRow.environment_id == environment_id,
                EnvironmentVersionRow.label == label,
            )
        )
        if taken is None:
            return label
        return f"{label}-{digest.removeprefix('sha256:')[:8]}"[:64]

    @staticmethod
    def _add_version(
        s: AsyncSession,
        row: EnvironmentRow,
        label: str,
        image: str,
        digest: str,
        manifest: EnvironmentManifest | Mapping[str, Any],
        *,
        current: bool = True,
    ) -> None:
        doc = (
            manifest_document(manifest)
            if isinstance(manifest, EnvironmentManifest)
            else dict(manifest)
        )
        s.add(
            EnvironmentVersionRow(
                environment_id=row.id,
                label=label,
                image=image,
                digest=digest,
                manifest=doc,
                created=datetime.now(UTC),
            )
        )
        if current:
            row.version, row.image, row.image_digest = label, image, digest

    # Admin changes ---------------------------------------------------------

    @staticmethod
    async def _team_ids(s: AsyncSession, names: Sequence[str]) -> list[int]:
        rows = await s.execute(select(TeamRow.name, TeamRow.id).where(TeamRow.name.in_(names)))
        found = {name: team_id for name, team_id in rows}
        missing = [n for n in names if n not in found]
        if missing:
            raise InvalidInput(f"teams: no team {shown(missing[0])}; create it first")
        return [found[n] for n in dict.fromkeys(names)]

    async def _set_teams(self, s: AsyncSession, environment_id: int, names: Sequence[str]) -> None:
        ids = await self._team_ids(s, names)
        await s.execute(
            delete(EnvironmentTeamRow).where(EnvironmentTeamRow.environment_id == environment_id)
        )
        s.add_all(EnvironmentTeamRow(environment_id=environment_id, team_id=t) for t in ids)

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
        """A new environment, made by an admin from an image already on the engine."""
        check_policy(name, manifest.default, manifest.maximum, manifest.gpu)
        try:
            async with writing(self._sessions) as s:
                if await s.scalar(select(EnvironmentRow.id).where(EnvironmentRow.name == name)):
                    raise Conflict(f"environment {name!r} exists; PATCH it, or add a version")
                row = EnvironmentRow(
                    name=name,
                    description=manifest.description,
                    image=image,
                    manifest=policy_document(manifest.default, manifest.maximum),
                    source="admin",
                    customized=True,
                    enabled=enabled,
                    retired=False,
                    created=datetime.now(UTC),
                )
                s.add(row)
                await s.flush()
                self._add_version(s, row, label, image, digest, manifest)
                await self._set_teams(s, row.id, teams)
        except IntegrityError:
            raise Conflict(f"environment {name!r} was created at the same time") from None
        info = await self.describe(name)
        assert info is not None
        return info

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
        """Record another image for an environment; its runtime settings default to the current
        version's. A label or digest the environment already has is a ``Conflict``."""
        async with writing(self._sessions) as s:
            row = await s.scalar(select(EnvironmentRow).where(EnvironmentRow.name == name))
            if row is None:
                raise NotFound(f"environment {name!r} is not in the catalog")
            same = await s.scalar(
                select(EnvironmentVersionRow).where(
                    EnvironmentVersionRow.environment_id == row.id,
                    (EnvironmentVersionRow.label == label)
                    | (EnvironmentVersionRow.digest == digest),
                )
            )
            if same is not None:
                what = f"label {label!r}" if same.label == label else f"image {digest}"
                raise Conflict(f"{name} already has a version with {what}: {same.label}")
            if manifest is not None:
                doc: Mapping[str, Any] = manifest_document(manifest)
            else:
                now = await self._current(s, row)
                doc = dict(now.manifest) if now is not None else dict(row.manifest)
            if current:
                policy = row.manifest
                check_policy(
                    name,
                    _resources(policy["default"]),
                    _resources(policy["maximum"]),
                    bool(doc.get("gpu", False)),
                )
            self._add_version(s, row, label, image, digest, doc, current=current)
        info = await self.describe(name)
        assert info is not None
        return info

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
        """Change an environment's policy, teams or current version; ``None`` keeps a field."""
        async with writing(self._sessions) as s:
            row = await s.scalar(select(EnvironmentRow).where(EnvironmentRow.name == name))
            if row is None:
                raise NotFound(f"environment {name!r} is not in the catalog")
            target = await self._current(s, row)
            if version is not None:
                target = await self._find_version(s, row.id, version)
                if target is None:
                    raise NotFound(f"environment {name!r} has no version {shown(version)}")
            policy = row.manifest
            new_default = default or _resources(policy["default"])
            new_maximum = maximum or _resources(policy["maximum"])
            gpu = bool(target.manifest.get("gpu", False)) if target is not None else False
            check_policy(name, new_default, new_maximum, gpu)
            if default is not None or maximum is not None:
                row.manifest = policy_document(new_default, new_maximum)
                row.customized = True
            if description is not None:
                row.description = description
                row.customized = True
            if enabled is not None:
                row.enabled = enabled
            if retired is not None:
                row.retired = retired
            if teams is not None:
                await self._set_teams(s, row.id, teams)
            if version is not None and target is not None:
                row.version, row.image, row.image_digest = target.label, target.image, target.digest
        info = await self.describe(name)
        assert info is not None
        return info

    async def add(self, env: Environment) -> int:
        """Add an environment with one version directly (tests and benchmarks)."""
        label = env.version if VERSION_LABEL.match(env.version) else "1"
        doc = manifest_document(manifest_of(env))
        async with writing(self._sessions) as s:
            row = EnvironmentRow(
                name=env.name,
                description=env.description,
                image=env.image,
                manifest=policy_document(env.default, env.maximum),
                source="admin",
                customized=True,
                enabled=env.enabled,
                retired=env.retired,
                created=datetime.now(UTC),
            )
            s.add(row)
            await s.flush()
            self._add_version(s, row, label, env.image, env.image, doc)
            s.add_all(EnvironmentTeamRow(environment_id=row.id, team_id=t) for t in env.teams)
            return row.id
