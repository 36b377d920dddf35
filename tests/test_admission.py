"""Admission under races: concurrent claims never overrun a quota, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from hub.capacity import host_capacity, nvml_gpus
from hub.config import CapacitySettings
from hub.db.accounts import SqlAccountRepo
from hub.db.engine import make_engine
from hub.db.environments import SqlCatalog
from hub.db.migrate import upgrade
from hub.db.schema import QuotaRow
from hub.db.servers import SqlServerRepo
from hub.db.teams import SqlTeamRepo
from hub.domain.catalog import Environment
from hub.domain.errors import QuotaExceeded
from hub.domain.gpus import allocate
from hub.domain.quotas import Limits, Scope, Usage, admit, headroom
from hub.domain.records import AdmissionView, Claim
from hub.domain.resources import GiB, MiB, Resources


def scope(label: str, limits: Limits, usage: Usage | None = None) -> Scope:
    return Scope(label, limits, usage or Usage())


def test_team_quota_refusal_names_the_team_and_the_numbers() -> None:
    team = scope(
        "team 'risk' quota", Limits(memory=8 * GiB), Usage(memory=int(5.5 * GiB), servers=3)
    )
    with pytest.raises(QuotaExceeded) as caught:
        admit(
            Resources(1, 4 * GiB),
            user=scope("your quota", Limits()),
            teams=[team],
            host=scope("this host's capacity", Limits()),
        )
    assert caught.value.message == (
        "needs 4 GiB; 2.5 GiB left in team 'risk' quota (5.5 GiB of 8 GiB used by 3 servers)"
    )


def test_cpu_and_host_refusals_say_whose_limit() -> None:
    with pytest.raises(QuotaExceeded, match=r"needs 3 CPUs; 2 left in this host's capacity"):
        admit(
            Resources(3, GiB),
            user=scope("your quota", Limits()),
            teams=[],
            host=scope("this host's capacity", Limits(cpus=2)),
        )


def test_headroom_is_the_tightest_gap() -> None:
    room = headroom(
        [
            scope("your quota", Limits(cpus=4, memory=8 * GiB), Usage(cpus=1, memory=2 * GiB)),
            scope("team", Limits(memory=4 * GiB), Usage(memory=3 * GiB)),
        ]
    )
    assert room.cpus == 3 and room.memory == 1 * GiB and room.gpus is None


def test_gpus_are_exclusive_unless_shareable() -> None:
    assert allocate(("0", "1"), {"0": 1}, 1, shareable=False) == ("1",)
    with pytest.raises(QuotaExceeded, match="needs 2 GPUs; 1 of 2 free"):
        allocate(("0", "1"), {"0": 1}, 2, shareable=False)
    assert allocate(("0", "1"), {"0": 2, "1": 1}, 1, shareable=True) == ("1",)
    with pytest.raises(QuotaExceeded, match="this hub has no GPUs"):
        allocate((), {}, 1, shareable=False)


class FakeNvml(types.ModuleType):
    """``pynvml`` (from nvidia-ml-py) as a machine with ``count`` GPUs presents it."""

    def __init__(self, count: int, *, driver: bool = True) -> None:
        super().__init__("pynvml")
        self.count, self.driver, self.calls = count, driver, [] if driver else ["init"]

    def nvmlInit(self) -> None:
        if not self.driver:
            raise RuntimeError("NVML Shared Library Not Found")
        self.calls.append("init")

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")


def test_gpu_inventory_comes_from_nvml_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml(2)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)

    limits, inventory = host_capacity(CapacitySettings(cpus=8, memory=GiB, gpus="auto"))

    assert inventory == ("0", "1") and limits.gpus == 2
    assert nvml.calls == ["init", "shutdown"]
    # Configuration wins over NVML: an admin may keep GPUs out of the hub's hands.
    assert host_capacity(CapacitySettings(cpus=8, memory=GiB, gpus="1"))[1] == ("1",)


def test_without_nvidia_ml_py_or_a_driver_there_are_no_gpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: the import fails
    assert nvml_gpus() == ()
    assert host_capacity(CapacitySettings(cpus=8, memory=GiB, gpus="auto"))[0].gpus == 0
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(4, driver=False))
    assert nvml_gpus() == ()


@pytest_asyncio.fixture
async def store(db_url: str) -> AsyncIterator[tuple[AsyncEngine, SqlServerRepo, int]]:
    upgrade(db_url)
    engine = make_engine(db_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    env = Environment(
        id=0,
        name="e",
        description="",
        version="1",
        image="sha256:x",
        port=1,
        command=(),
        keep_prefix=True,
        readiness_path="",
        default=Resources(1, GiB),
        maximum=Resources(4, 8 * GiB),
    )
    env_id = await SqlCatalog(sessions).add(env)
    yield engine, SqlServerRepo(sessions), env_id
    await engine.dispose()


async def race(
    repo: SqlServerRepo,
    env_id: int,
    user_ids: list[int],
    limits: Limits,
    team_limits: Limits | None = None,
) -> tuple[int, int]:
    def decide(view: AdmissionView) -> tuple[str, ...]:
        teams = (
            [Scope(f"team '{t.name}' quota", team_limits, t.usage) for t in view.teams]
            if team_limits
            else []
        )
        admit(
            Resources(1, 1 * GiB),
            user=Scope("your quota", limits, view.user_usage),
            teams=teams,
            host=Scope("this host's capacity", Limits(), view.host_usage),
        )
        return ()

    async def one(i: int) -> bool:
        claim = Claim(
            user_id=user_ids[i % len(user_ids)],
            name=f"s{i}",
            environment_id=env_id,
            image_digest="sha256:x",
            resources=Resources(1, 1 * GiB),
            secret="s",
        )
        try:
            await repo.claim(claim, decide)
        except QuotaExceeded:
            return False
        return True

    results = await asyncio.gather(*(one(i) for i in range(20)))
    return sum(results), results.count(False)


async def test_twenty_parallel_launches_with_room_for_three_admit_exactly_three(store) -> None:  # type: ignore[no-untyped-def]
    engine, repo, env_id = store
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    user, _ = (
        await SqlAccountRepo(sessions).add_user("alice", None, is_admin=False, must_change=False),
        None,
    )
    admitted, refused = await race(repo, env_id, [user.id], Limits(servers=3))
    assert (admitted, refused) == (3, 17)
    assert len([r for r in await repo.of_user(user.id) if r.state.value == "starting"]) == 3


async def test_team_quota_holds_across_racing_members(store) -> None:  # type: ignore[no-untyped-def]
    engine, repo, env_id = store
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    accounts, teams = SqlAccountRepo(sessions), SqlTeamRepo(sessions)
    ids = []
    for name in ("ann", "bob", "cid", "dee"):
        user = await accounts.add_user(name, None, is_admin=False, must_change=False)
        await teams.join(user.id, "risk")
        ids.append(user.id)
    async with engine.begin() as conn:
        team_id = await teams.ensure("risk")
        await conn.execute(insert(QuotaRow).values(team_id=team_id, memory=3 * GiB))
    admitted, refused = await race(repo, env_id, ids, Limits(), team_limits=Limits(memory=3 * GiB))
    assert (admitted, refused) == (3, 17)


async def test_a_second_claim_of_an_active_server_admits_nothing_new(store) -> None:  # type: ignore[no-untyped-def]
    engine, repo, env_id = store
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    user = await SqlAccountRepo(sessions).add_user("alice", None, is_admin=False, must_change=False)
    claim = Claim(
        user_id=user.id,
        name="lab",
        environment_id=env_id,
        image_digest="sha256:x",
        resources=Resources(1, 512 * MiB),
        secret="s",
    )
    first, fresh = await repo.claim(claim, lambda view: ())
    again, fresh_again = await repo.claim(claim, lambda view: ())
    assert fresh and not fresh_again and first.id == again.id
