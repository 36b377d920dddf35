"""The catalog service (``hub.domain.catalog_admin.CatalogAdmin``) on the real catalog tables,
SQLite or PostgreSQL (``scripts/with-postgres.sh``); the engine's images are a small
stand-in here (``tests/test_catalog_api.py`` runs the same use cases on the real engine)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.db.engine import make_engine
from hub.db.environments import SqlCatalog
from hub.db.migrate import upgrade
from hub.db.teams import SqlTeamRepo
from hub.domain.accounts import User
from hub.domain.catalog import EnvironmentManifest, ResourcesChange
from hub.domain.catalog_admin import CatalogAdmin, CatalogChange, NewEnvironment, NewVersion
from hub.domain.errors import Conflict, InvalidInput, NotFound
from hub.domain.resources import GiB, MiB, Resources

ROOT = User(id=1, name="root", is_admin=True)
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


@dataclass
class EngineImages:
    """Images on a pretend engine: a reference resolves to a digest; pins are remembered."""

    known: dict[str, str]
    pinned: list[tuple[str, str, str]] = field(default_factory=list)

    async def resolve(self, reference: str) -> str | None:
        return self.known.get(reference)

    async def pin(self, environment: str, label: str, digest: str) -> str:
        self.pinned.append((environment, label, digest))
        return f"labdock/test/{environment}:{label}"


@dataclass
class Audit:
    entries: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)

    async def record(
        self,
        *,
        actor_id: int | None,
        action: str,
        target: str = "",
        outcome: str = "ok",
        detail: Mapping[str, object] | None = None,
    ) -> None:
        self.entries.append((action, target, dict(detail or {})))

    async def recent(self, limit: int = 100) -> list[Any]:
        return []

    async def page(self, **filters: Any) -> list[Any]:
        return []

    async def actions(self) -> list[str]:
        return []


def manifest(name: str = "rstudio", **changes: Any) -> EnvironmentManifest:
    values: dict[str, Any] = dict(
        name=name,
        description="R",
        version="-",
        port=8787,
        command=("rserver",),
        prefix="strip",
        readiness_path="",
        default=Resources(cpus=0.5, memory=128 * MiB),
        maximum=Resources(cpus=2, memory=1 * GiB),
    )
    values.update(changes)
    return EnvironmentManifest(**values)


@pytest_asyncio.fixture
async def sessions(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


@pytest.fixture
def images() -> EngineImages:
    return EngineImages({"myorg/rstudio:4.3": DIGEST_A, "myorg/rstudio:4.4": DIGEST_B})


@pytest.fixture
def audit() -> Audit:
    return Audit()


@pytest.fixture
def admin(
    sessions: async_sessionmaker[AsyncSession], images: EngineImages, audit: Audit
) -> CatalogAdmin:
    return CatalogAdmin(
        store=SqlCatalog(sessions), images=images, teams=SqlTeamRepo(sessions), audit=audit
    )


async def test_a_refused_environment_pins_no_image_and_is_not_audited(
    admin: CatalogAdmin, images: EngineImages, audit: Audit
) -> None:
    too_big = manifest(default=Resources(cpus=4, memory=128 * MiB))
    with pytest.raises(InvalidInput, match=r"resources\.default\.cpus: must not exceed"):
        await admin.create(ROOT, "rstudio", NewEnvironment(too_big, "myorg/rstudio:4.3"))
    with pytest.raises(InvalidInput, match="teams: no team 'nobody'"):
        await admin.create(
            ROOT, "rstudio", NewEnvironment(manifest(), "myorg/rstudio:4.3", teams=("nobody",))
        )
    with pytest.raises(InvalidInput, match="is not on the engine; labdock never pulls"):
        await admin.create(ROOT, "rstudio", NewEnvironment(manifest(), "myorg/other:1"))
    with pytest.raises(InvalidInput, match="image: name an image already on the engine"):
        await admin.create(ROOT, "rstudio", NewEnvironment(manifest(), ""))
    assert images.pinned == [] and audit.entries == []
    assert await admin.store.describe("rstudio") is None


async def test_versions_are_pinned_audited_and_a_rollback_makes_the_old_one_current(
    admin: CatalogAdmin, images: EngineImages, audit: Audit
) -> None:
    made = await admin.create(ROOT, "rstudio", NewEnvironment(manifest(), "myorg/rstudio:4.3"))
    assert made.environment.version == "4.3"  # the image's tag names the version
    newer = await admin.add_version(
        ROOT, "rstudio", NewVersion("myorg/rstudio:4.4", runtime={"port": 8888})
    )
    assert (newer.environment.version, newer.environment.port) == ("4.4", 8888)
    assert newer.environment.command == ("rserver",)  # the rest stays the current version's
    with pytest.raises(Conflict, match="already has this image or label"):
        await admin.add_version(ROOT, "rstudio", NewVersion("myorg/rstudio:4.4", label="again"))
    rolled = await admin.update(
        ROOT,
        "rstudio",
        CatalogChange(version="4.3", maximum=ResourcesChange(memory=2 * GiB)),
    )
    assert (rolled.environment.version, rolled.environment.port) == ("4.3", 8787)
    assert rolled.environment.maximum == Resources(cpus=2, memory=2 * GiB)
    assert images.pinned == [("rstudio", "4.3", DIGEST_A), ("rstudio", "4.4", DIGEST_B)]
    assert [(action, target) for action, target, _ in audit.entries] == [
        ("environment.create", "environment:rstudio"),
        ("environment.version", "environment:rstudio"),
        ("environment.update", "environment:rstudio"),
    ]
    assert audit.entries[0][2] == {
        "image": "myorg/rstudio:4.3",
        "digest": DIGEST_A,
        "version": "4.3",
        "teams": [],
    }
    assert audit.entries[2][2] == {
        "version": "4.3",
        "resources": {
            "default": {"cpus": 0.5, "memory": 128 * MiB, "gpus": 0},
            "maximum": {"cpus": 2.0, "memory": 2 * GiB, "gpus": 0},
        },
    }


async def test_retired_environments_are_hidden_from_users_but_not_from_admins(
    admin: CatalogAdmin,
) -> None:
    await admin.create(ROOT, "rstudio", NewEnvironment(manifest(), "myorg/rstudio:4.3"))
    await admin.update(ROOT, "rstudio", CatalogChange(retired=True))
    ann = User(id=2, name="ann")
    with pytest.raises(NotFound, match="'rstudio' is not in the catalog"):
        await admin.detail(ann, "rstudio", admin=False)
    info = await admin.detail(ROOT, "rstudio", admin=True)
    assert info.environment.retired
