"""The environment catalog in the database; implements ``hub.domain.catalog.Catalog``.

    catalog = SqlCatalog(sessions)
    await catalog.seed({"python": (manifest, "sha256:3f2a...")})
    env = await catalog.get("python")     # pinned to that image id

The catalog is seeded from ``images/<name>/manifest.toml`` and the images that
``labdock images build`` produced; each row pins its image by content digest.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.db.schema import EnvironmentRow
from hub.domain.catalog import Environment
from hub.domain.resources import Resources
from hub.images.manifest import EnvironmentManifest


def manifest_document(manifest: EnvironmentManifest) -> dict[str, Any]:
    """The manifest as stored in the row: plain JSON."""

    def res(r: Resources) -> dict[str, Any]:
        return {"cpus": r.cpus, "memory": r.memory, "gpus": r.gpus}

    return {
        "port": manifest.port,
        "command": list(manifest.command),
        "prefix": manifest.prefix,
        "readiness_path": manifest.readiness_path,
        "default": res(manifest.default),
        "maximum": res(manifest.maximum),
        "gpu": manifest.gpu,
        "gpu_shareable": manifest.gpu_shareable,
        "pids_limit": manifest.pids_limit,
        "shm_size": manifest.shm_size,
        "home": manifest.home,
    }


def _environment(row: EnvironmentRow) -> Environment:
    doc = row.manifest

    def res(d: Mapping[str, Any]) -> Resources:
        return Resources(cpus=float(d["cpus"]), memory=int(d["memory"]), gpus=int(d.get("gpus", 0)))

    return Environment(
        id=row.id,
        name=row.name,
        description=row.description,
        version=row.version,
        image=row.image_digest or row.image,
        port=int(doc["port"]),
        command=tuple(doc["command"]),
        keep_prefix=doc.get("prefix", "keep") == "keep",
        readiness_path=str(doc["readiness_path"]),
        default=res(doc["default"]),
        maximum=res(doc["maximum"]),
        gpu=bool(doc.get("gpu", False)),
        gpu_shareable=bool(doc.get("gpu_shareable", False)),
        pids_limit=int(doc.get("pids_limit", 1024)),
        shm_size=int(doc.get("shm_size", 1024**3)),
        home=str(doc.get("home", "/home/analyst")),
        team_id=row.team_id,
        enabled=row.enabled,
        retired=row.retired,
    )


class SqlCatalog:
    """Environments stored as rows, with their manifests as JSON."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def seed(self, built: Mapping[str, tuple[EnvironmentManifest, str]]) -> None:
        """Insert or update each built environment, pinned to its image id."""
        async with self._sessions.begin() as s:
            for name, (manifest, image_id) in built.items():
                row = await s.scalar(select(EnvironmentRow).where(EnvironmentRow.name == name))
                if row is None:
                    row = EnvironmentRow(name=name, created=datetime.now(UTC))
                    s.add(row)
                row.description = manifest.description
                row.version = manifest.version
                row.image = image_id
                row.image_digest = image_id
                row.manifest = manifest_document(manifest)

    async def get(self, name: str) -> Environment | None:
        async with self._sessions() as s:
            row = await s.scalar(select(EnvironmentRow).where(EnvironmentRow.name == name))
            return _environment(row) if row else None

    async def by_id(self, environment_id: int) -> Environment | None:
        async with self._sessions() as s:
            row = await s.get(EnvironmentRow, environment_id)
            return _environment(row) if row else None

    async def visible_to(self, team_ids: frozenset[int]) -> list[Environment]:
        async with self._sessions() as s:
            rows = await s.scalars(
                select(EnvironmentRow)
                .where(
                    EnvironmentRow.enabled.is_(True),
                    EnvironmentRow.retired.is_(False),
                    or_(EnvironmentRow.team_id.is_(None), EnvironmentRow.team_id.in_(team_ids)),
                )
                .order_by(EnvironmentRow.name)
            )
            return [_environment(r) for r in rows]

    async def add(self, env: Environment) -> int:
        """Add an environment directly (tests, and team-defined environments later)."""
        manifest = {
            "port": env.port,
            "command": list(env.command),
            "prefix": "keep" if env.keep_prefix else "strip",
            "readiness_path": env.readiness_path,
            "default": {
                "cpus": env.default.cpus,
                "memory": env.default.memory,
                "gpus": env.default.gpus,
            },
            "maximum": {
                "cpus": env.maximum.cpus,
                "memory": env.maximum.memory,
                "gpus": env.maximum.gpus,
            },
            "gpu": env.gpu,
            "gpu_shareable": env.gpu_shareable,
            "pids_limit": env.pids_limit,
            "shm_size": env.shm_size,
            "home": env.home,
        }
        async with self._sessions.begin() as s:
            row = EnvironmentRow(
                name=env.name,
                description=env.description,
                version=env.version,
                image=env.image,
                image_digest=env.image,
                manifest=manifest,
                team_id=env.team_id,
                enabled=env.enabled,
                retired=env.retired,
                created=datetime.now(UTC),
            )
            s.add(row)
            await s.flush()
            return row.id
