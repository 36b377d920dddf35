"""The catalog in the database: versions pinned by digest, seeding, team visibility, and the
refusals of a launch, on real SQLite or PostgreSQL (``scripts/with-postgres.sh``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.backends.docker_config import create_args
from hub.backends.fake_ports import FakeImages
from hub.db.engine import make_engine, make_sync_engine
from hub.db.environments import SeedImage, SqlCatalog, tag_label
from hub.db.migrate import _config, upgrade
from hub.db.schema import EnvironmentVersionRow
from hub.db.teams import SqlTeamRepo
from hub.domain.catalog import (
    DEFAULT_SHM_SIZE,
    BuiltImage,
    Environment,
    EnvironmentManifest,
    LaunchRequest,
    check_policy,
    choose_resources,
    launch_target,
    manifest_of,
    seed_catalog,
)
from hub.domain.clock import SystemClock
from hub.domain.errors import BackendUnavailable, Conflict, Forbidden, InvalidInput, NotFound
from hub.domain.manifest import manifest_from_request
from hub.domain.quotas import Limits
from hub.domain.records import ServerRecord
from hub.domain.resources import GiB, MiB, Resources
from hub.domain.routes import RouteTable
from hub.domain.servers import ServerSpec, ServerState
from hub.domain.workspaces import Policy, Workspaces
from hub.images.manifest import load_all

IMAGES = Path(__file__).resolve().parent.parent / "images"

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
DIGEST_C = "sha256:" + "c" * 64


def manifest(name: str = "tiny", **changes: Any) -> EnvironmentManifest:
    values: dict[str, Any] = dict(
        name=name,
        description="a tiny environment",
        version="tiny 1.0",
        port=8080,
        command=("/app/start",),
        prefix="keep",
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
def catalog(sessions: async_sessionmaker[AsyncSession]) -> SqlCatalog:
    return SqlCatalog(sessions)


# --- versions and seeding --------------------------------------------------------------


class UnreachableFor(FakeImages):
    """Images where one environment's lookup fails as a stopped engine's would."""

    def __init__(self, broken: str) -> None:
        super().__init__("t1")
        self.broken = broken

    async def built(self, environment: str) -> BuiltImage | None:
        if environment == self.broken:
            raise BackendUnavailable("the Docker engine is not healthy")
        return await super().built(environment)


async def test_seeding_from_images_records_each_built_image_and_skips_what_cannot_be_looked_up(
    catalog: SqlCatalog,
) -> None:
    images = UnreachableFor("down")
    images.add("labdock/tiny:111111111111", DIGEST_A, built_for="tiny")
    manifests = {"tiny": manifest(), "down": manifest("down"), "unbuilt": manifest("unbuilt")}
    assert await seed_catalog(catalog, images, manifests) == [("tiny", "111111111111")]
    tiny = await catalog.get("tiny")
    assert tiny is not None and tiny.image == DIGEST_A
    assert await catalog.get("down") is None and await catalog.get("unbuilt") is None
    assert await seed_catalog(catalog, images, manifests) == []  # the same image: nothing new


async def test_a_new_build_becomes_the_current_version_and_the_old_one_stays_launchable(
    catalog: SqlCatalog,
) -> None:
    first = SeedImage(manifest(), "labdock/tiny:111111111111", DIGEST_A)
    assert await catalog.seed({"tiny": first}) == [("tiny", "111111111111")]
    assert await catalog.seed({"tiny": first}) == []  # the same image: nothing new

    rebuilt = manifest(version="tiny 2.0", port=9090)
    assert await catalog.seed({"tiny": SeedImage(rebuilt, "labdock/tiny:222222222222", DIGEST_B)})

    current = await catalog.get("tiny")
    assert current is not None
    assert (current.version, current.image, current.port, current.contents) == (
        "222222222222",
        DIGEST_B,
        9090,
        "tiny 2.0",
    )
    old = await catalog.get("tiny", "111111111111")
    assert old is not None and (old.image, old.port, old.current) == (DIGEST_A, 8080, False)
    by_digest = await catalog.get("tiny", DIGEST_A)
    by_short = await catalog.get("tiny", DIGEST_A[:19])
    assert by_digest == old and by_short == old
    info = await catalog.describe("tiny")
    assert info is not None
    assert [(v.label, v.current) for v in info.versions] == [
        ("222222222222", True),
        ("111111111111", False),
    ]


async def test_a_version_that_names_no_shm_size_gets_dockers_64_mib_on_every_path(
    catalog: SqlCatalog, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # One default, in the domain: a manifest, an admin's request, the stored version, an
    # environment made in code and a server spec all agree.
    requested = manifest_from_request(
        {
            "port": 8080,
            "command": ["/app/start"],
            "prefix": "keep",
            "readiness_path": "",
            "description": "tiny",
            "resources": {
                "default": {"cpus": 1, "memory": "128M"},
                "maximum": {"cpus": 1, "memory": "1G"},
            },
        },
        "tiny",
    )
    assert requested.shm_size == manifest().shm_size == DEFAULT_SHM_SIZE == 64 * MiB
    await catalog.seed({"tiny": SeedImage(requested, "labdock/tiny:111111111111", DIGEST_A)})
    stored = await catalog.get("tiny")
    assert stored is not None and stored.shm_size == DEFAULT_SHM_SIZE
    assert manifest_of(stored).shm_size == DEFAULT_SHM_SIZE
    fields = {k: v for k, v in vars(stored).items() if k != "shm_size"}
    assert Environment(**fields).shm_size == DEFAULT_SHM_SIZE
    spec = ServerSpec(
        hub_id="h1",
        user_id=1,
        server_id=1,
        image=DIGEST_A,
        command=(),
        port=1,
        prefix="/",
        secret="s",
        resources=Resources(cpus=1, memory=GiB),
    )
    assert spec.shm_size == DEFAULT_SHM_SIZE
    # A version document without the key (none is written so, but one could be edited).
    async with sessions.begin() as s:
        row = await s.scalar(sa.select(EnvironmentVersionRow))
        assert row is not None
        row.manifest = {k: v for k, v in row.manifest.items() if k != "shm_size"}
    again = await catalog.get("tiny")
    assert again is not None and again.shm_size == DEFAULT_SHM_SIZE


def test_an_environment_gives_back_the_manifest_it_was_made_from() -> None:
    declared = manifest(shm_size=256 * MiB, pids_limit=77, home="/home/me", prefix="strip")
    env = Environment(
        id=1,
        name=declared.name,
        description=declared.description,
        version="1",
        image=DIGEST_A,
        port=declared.port,
        command=declared.command,
        keep_prefix=False,
        readiness_path=declared.readiness_path,
        default=declared.default,
        maximum=declared.maximum,
        pids_limit=77,
        shm_size=256 * MiB,
        home="/home/me",
        contents=declared.version,
    )
    assert manifest_of(env) == declared


async def test_a_server_is_found_at_the_version_it_ran(catalog: SqlCatalog) -> None:
    await catalog.seed({"tiny": SeedImage(manifest(), "labdock/tiny:111111111111", DIGEST_A)})
    await catalog.seed(
        {"tiny": SeedImage(manifest(prefix="strip"), "labdock/tiny:222222222222", DIGEST_B)}
    )
    env = await catalog.get("tiny")
    assert env is not None
    ran = await catalog.by_id(env.id, DIGEST_A)
    assert ran is not None and ran.keep_prefix and ran.image == DIGEST_A
    unknown = await catalog.by_id(env.id, DIGEST_C)  # no such version: the current one
    assert unknown is not None and unknown.image == DIGEST_B and not unknown.keep_prefix


async def test_an_admins_choice_of_version_survives_seeding_until_a_new_build(
    catalog: SqlCatalog,
) -> None:
    a = SeedImage(manifest(), "labdock/tiny:111111111111", DIGEST_A)
    b = SeedImage(manifest(), "labdock/tiny:222222222222", DIGEST_B)
    await catalog.seed({"tiny": a})
    await catalog.seed({"tiny": b})
    await catalog.update("tiny", version="111111111111")
    await catalog.seed({"tiny": b})  # the hub restarts: B is known already
    env = await catalog.get("tiny")
    assert env is not None and env.image == DIGEST_A
    await catalog.seed({"tiny": SeedImage(manifest(), "labdock/tiny:333333333333", DIGEST_C)})
    env = await catalog.get("tiny")
    assert env is not None and env.image == DIGEST_C


async def test_a_forced_rebuild_of_the_same_inputs_gets_its_own_label(
    catalog: SqlCatalog,
) -> None:
    await catalog.seed({"tiny": SeedImage(manifest(), "labdock/tiny:111111111111", DIGEST_A)})
    added = await catalog.seed(
        {"tiny": SeedImage(manifest(), "labdock/tiny:111111111111", DIGEST_B)}
    )
    assert added == [("tiny", "111111111111-bbbbbbbb")]
    old = await catalog.get("tiny", "111111111111")
    assert old is not None and old.image == DIGEST_A


async def test_seeding_follows_the_manifest_until_an_admin_edits_the_environment(
    catalog: SqlCatalog,
) -> None:
    await catalog.seed({"tiny": SeedImage(manifest(), "labdock/tiny:111111111111", DIGEST_A)})
    bigger = manifest(description="bigger", maximum=Resources(cpus=4, memory=2 * GiB))
    await catalog.seed({"tiny": SeedImage(bigger, "labdock/tiny:222222222222", DIGEST_B)})
    env = await catalog.get("tiny")
    assert env is not None and (env.description, env.maximum.cpus) == ("bigger", 4)

    await catalog.update("tiny", description="our tiny one")
    await catalog.seed(
        {"tiny": SeedImage(manifest(description="upstream"), "labdock/tiny:333", DIGEST_C)}
    )
    env = await catalog.get("tiny")
    assert env is not None and env.description == "our tiny one" and env.image == DIGEST_C


async def test_an_environment_created_by_an_admin_is_never_seeded_over(
    catalog: SqlCatalog,
) -> None:
    await catalog.create("tiny", manifest(), label="1.0", image="labdock/tiny:1.0", digest=DIGEST_A)
    assert await catalog.seed({"tiny": SeedImage(manifest(), "labdock/tiny:999", DIGEST_B)}) == []
    env = await catalog.get("tiny")
    assert env is not None and env.image == DIGEST_A
    with pytest.raises(Conflict):
        await catalog.create("tiny", manifest(), label="2", image="x", digest=DIGEST_B)


async def test_a_version_label_or_image_is_recorded_once(catalog: SqlCatalog) -> None:
    await catalog.create("tiny", manifest(), label="1.0", image="labdock/tiny:1.0", digest=DIGEST_A)
    with pytest.raises(Conflict, match=r"label '1\.0'"):
        await catalog.add_version("tiny", label="1.0", image="i", digest=DIGEST_B)
    with pytest.raises(Conflict, match="already has a version with image"):
        await catalog.add_version("tiny", label="2.0", image="i", digest=DIGEST_A)
    info = await catalog.add_version(
        "tiny", label="2.0", image="labdock/tiny:2.0", digest=DIGEST_B, current=False
    )
    assert info.environment.version == "1.0"
    assert [v.label for v in info.versions] == ["2.0", "1.0"]


def test_the_tag_of_a_build_is_its_version_label() -> None:
    assert tag_label("labdock/jupyter:5be0c1d24a7e") == "5be0c1d24a7e"
    assert tag_label("localhost:5000/jupyter") == "1"


async def test_gpus_in_the_policy_need_a_gpu_version(catalog: SqlCatalog) -> None:
    gpu = manifest(gpu=True, default=Resources(1, 128 * MiB, 1), maximum=Resources(2, GiB, 2))
    await catalog.create("cuda", gpu, label="gpu", image="i:gpu", digest=DIGEST_A)
    await catalog.add_version(
        "cuda", label="cpu", image="i:cpu", digest=DIGEST_B, manifest=manifest(), current=False
    )
    with pytest.raises(InvalidInput, match="cannot use GPUs"):
        await catalog.update("cuda", version="cpu")
    env = await catalog.get("cuda")
    assert env is not None and env.version == "gpu"


def test_a_default_below_the_cpu_floor_is_refused_when_the_policy_is_saved() -> None:
    """Less than 0.01 CPU is no limit to the engine: such a default could never launch."""
    with pytest.raises(InvalidInput, match=r"resources.default.cpus: at least 0.01"):
        check_policy("tiny", Resources(0.001, 128 * MiB), Resources(2, GiB), gpu=False)
    check_policy("small", Resources(0.01, 128 * MiB), Resources(2, GiB), gpu=False)


# --- what a launch may name -------------------------------------------------------------


@pytest_asyncio.fixture
async def offered(
    catalog: SqlCatalog, sessions: async_sessionmaker[AsyncSession]
) -> dict[str, int]:
    """Environments in every state, and two teams: risk (offered 'riskonly') and quant."""
    teams = SqlTeamRepo(sessions)
    ids = {"risk": await teams.ensure("risk"), "quant": await teams.ensure("quant")}
    await catalog.create("open", manifest(), label="1", image="i:1", digest=DIGEST_A)
    await catalog.create("other", manifest(), label="1", image="i:2", digest=DIGEST_B)
    await catalog.create(
        "riskonly", manifest(), label="1", image="i:3", digest=DIGEST_C, teams=["risk"]
    )
    await catalog.create("paused", manifest(), label="1", image="i:4", digest=DIGEST_A)
    await catalog.update("paused", enabled=False)
    await catalog.create("old", manifest(), label="1", image="i:5", digest=DIGEST_A)
    await catalog.update("old", retired=True)
    return ids


async def test_users_see_what_is_enabled_not_retired_and_offered_to_their_teams(
    catalog: SqlCatalog, offered: dict[str, int]
) -> None:
    def names(envs: list[Any]) -> list[str]:
        return [e.name for e in envs]

    assert names(await catalog.visible_to(frozenset())) == ["open", "other"]
    assert names(await catalog.visible_to(frozenset({offered["quant"]}))) == ["open", "other"]
    assert names(await catalog.visible_to(frozenset({offered["risk"]}))) == [
        "open",
        "other",
        "riskonly",
    ]
    assert names(await catalog.visible_to(frozenset(), admin=True)) == [
        "open",
        "other",
        "riskonly",
    ]
    assert names(await catalog.all()) == ["old", "open", "other", "paused", "riskonly"]


@pytest.mark.parametrize(
    ("name", "version", "error", "message"),
    [
        ("nope", None, NotFound, "environment 'nope' is not in the catalog"),
        ("riskonly", None, Forbidden, "offered only to certain teams"),
        ("paused", None, InvalidInput, "environment 'paused' is disabled"),
        ("old", None, InvalidInput, "environment 'old' is retired"),
        ("open", "9.9", NotFound, "environment 'open' has no version '9.9'"),
        ("open", "sha256:" + "d" * 64, NotFound, "has no version 'sha256:dddd"),
        # A label and a digest of another environment's version are not this one's.
        ("open", DIGEST_B, NotFound, "environment 'open' has no version"),
        ("riskonly", None, Forbidden, "ask an admin"),
        ("../open", None, InvalidInput, "names are 1 to 63 characters"),
        ("OPEN", None, InvalidInput, "names are 1 to 63 characters"),
        ("\u043epen", None, InvalidInput, "names are 1 to 63 characters"),  # a Cyrillic o
        ("open\x00", None, InvalidInput, "names are 1 to 63 characters"),
        ("open' OR '1'='1", None, InvalidInput, "names are 1 to 63 characters"),
        ("a" * 5000, None, InvalidInput, "..."),
        (["open"], None, InvalidInput, "name the environment"),
        ("open", "../../1", InvalidInput, "labels are 1 to 64 characters"),
        ("open", "sha256:zz", InvalidInput, "a digest is sha256:"),
        ("open", "sha256:aaaa", InvalidInput, "at least 12"),
        ("open", 1, InvalidInput, "expected a version label or an image digest"),
    ],
    ids=lambda v: repr(v)[:24],
)
async def test_launching_anything_not_offered_is_refused_with_a_reason(
    catalog: SqlCatalog,
    offered: dict[str, int],
    name: Any,
    version: Any,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error) as caught:
        await launch_target(catalog, name, version, admin=False, team_ids=frozenset())
    assert message in str(caught.value)
    assert len(str(caught.value)) < 300  # a hostile name is not echoed in full


async def test_team_members_and_admins_may_launch_a_team_environment(
    catalog: SqlCatalog, offered: dict[str, int]
) -> None:
    risk = frozenset({offered["risk"]})
    env = await launch_target(catalog, "riskonly", None, admin=False, team_ids=risk)
    assert env.image == DIGEST_C
    env = await launch_target(catalog, "riskonly", "1", admin=True, team_ids=frozenset())
    assert env.image == DIGEST_C
    await catalog.update("riskonly", teams=[])
    env = await launch_target(catalog, "riskonly", None, admin=False, team_ids=frozenset())
    assert env.teams == frozenset()


async def test_unknown_teams_are_refused_by_name(
    catalog: SqlCatalog, offered: dict[str, int]
) -> None:
    with pytest.raises(InvalidInput, match="no team 'nobody'"):
        await catalog.update("open", teams=["risk", "nobody"])
    env = await catalog.get("open")
    assert env is not None and env.teams == frozenset()


# --- the migration of an existing catalog -----------------------------------------------


def test_migration_0002_gives_existing_environments_a_first_version_and_their_team(
    db_url: str,
) -> None:
    engine = make_sync_engine(db_url)
    try:
        with engine.begin() as conn:
            command.upgrade(_config(conn), "0001")
            now = datetime.now(UTC)
            conn.execute(
                sa.text("INSERT INTO teams (name, created) VALUES ('risk', :c)"), {"c": now}
            )
            team_id = conn.execute(sa.text("SELECT id FROM teams")).scalar_one()
            environments = sa.table(
                "environments",
                *(sa.column(c) for c in ("name", "description", "team_id", "image")),
                *(sa.column(c) for c in ("image_digest", "version", "enabled", "retired")),
                sa.column("manifest", sa.JSON()),
                sa.column("created", sa.DateTime(timezone=True)),
            )
            doc = {
                "port": 8888,
                "command": ["/s"],
                "prefix": "keep",
                "readiness_path": "x",
                "default": {"cpus": 1, "memory": GiB, "gpus": 0},
                "maximum": {"cpus": 2, "memory": 2 * GiB, "gpus": 0},
            }
            for name, team, image in (
                ("python", None, "labdock/python:5be0c1d24a7e"),
                ("risky", team_id, "sha256:" + "e" * 64),
            ):
                conn.execute(
                    environments.insert().values(
                        name=name,
                        description="d",
                        team_id=team,
                        image=image,
                        image_digest=DIGEST_A,
                        version="Python 3.11 · pandas",
                        enabled=True,
                        retired=False,
                        manifest=doc,
                        created=now,
                    )
                )
        upgrade(db_url)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT e.name, e.version, v.label, v.digest, v.manifest, e.source "
                    "FROM environments e JOIN environment_versions v ON v.environment_id = e.id "
                    "ORDER BY e.name"
                )
            ).all()
            assert [(r[0], r[1], r[2], r[3], r[5]) for r in rows] == [
                ("python", "5be0c1d24a7e", "5be0c1d24a7e", DIGEST_A, "manifest"),
                ("risky", "1", "1", DIGEST_A, "manifest"),
            ]
            raw = rows[0][4]
            snapshot = raw if isinstance(raw, dict) else json.loads(raw)
            assert snapshot["contents"] == "Python 3.11 · pandas" and snapshot["port"] == 8888
            teams = (
                conn.execute(
                    sa.text(
                        "SELECT e.name FROM environment_teams t JOIN environments e "
                        "ON e.id = t.environment_id"
                    )
                )
                .scalars()
                .all()
            )
            assert teams == ["risky"]
    finally:
        engine.dispose()


async def test_the_catalog_reads_a_migrated_environment(db_url: str) -> None:
    test_migration_0002_gives_existing_environments_a_first_version_and_their_team(db_url)
    engine = make_engine(db_url)
    try:
        catalog = SqlCatalog(async_sessionmaker(engine, expire_on_commit=False))
        env = await catalog.get("python")
        assert env is not None
        assert (env.version, env.image, env.port, env.default.memory) == (
            "5be0c1d24a7e",
            DIGEST_A,
            8888,
            GiB,
        )
        risky = await catalog.get("risky")
        assert risky is not None and len(risky.teams) == 1
        assert replace(env, teams=frozenset()).offered_to(admin=False, team_ids=frozenset())
    finally:
        await engine.dispose()


# --- tensorflow-gpu: not built here, but its launch configuration is what a GPU host gets ---


async def test_tensorflow_gpu_launches_with_its_gpus_by_id_and_a_large_shm(
    catalog: SqlCatalog,
) -> None:
    shipped = load_all(IMAGES)["tensorflow-gpu"]
    tag = "labdock/tensorflow-gpu:0123456789ab"
    await catalog.seed({"tensorflow-gpu": SeedImage(shipped, tag, DIGEST_A)})
    env = await launch_target(catalog, "tensorflow-gpu", None, admin=False, team_ids=frozenset())
    assert env.gpu and env.image == DIGEST_A
    resources = choose_resources(env, LaunchRequest(env.name, gpus=2))
    record = ServerRecord(
        id=7,
        user_id=3,
        user_name="ada",
        name="gpu",
        environment="tensorflow-gpu",
        environment_id=env.id,
        state=ServerState.STARTING,
        resources=resources,
        gpu_ids=("1", "3"),
        secret="s",
    )
    workspaces = Workspaces(
        repo=None,  # type: ignore[arg-type]  # spec() reads neither
        backend=None,  # type: ignore[arg-type]
        routes=RouteTable(),
        catalog=catalog,
        policy=Policy(hub_id="h", default_quota=Limits(), host_capacity=Limits()),
        clock=SystemClock(),
    )
    args = create_args(workspaces.spec(record, env), network="n", image_user="", init=True)
    [request] = args["device_requests"]
    assert (request["Driver"], request["DeviceIDs"], request["Capabilities"]) == (
        "nvidia",
        ["1", "3"],
        [["gpu"]],
    )
    assert args["shm_size"] == shipped.shm_size == 2 * GiB
    assert args["image"] == DIGEST_A  # pinned by digest, never by tag
    assert args["pids_limit"] == shipped.pids_limit
    with pytest.raises(InvalidInput, match="at most 4 GPUs"):
        choose_resources(env, LaunchRequest(env.name, gpus=5))
    assert choose_resources(env, LaunchRequest(env.name)).gpus == 1  # its default asks for one GPU
