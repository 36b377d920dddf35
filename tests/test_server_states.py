"""Server states: the transitions are written once (``hub.domain.servers.TRANSITIONS``),
and the repository of servers moves a server only along them."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from sqlalchemy import update
from sqlalchemy.ext.asyncio import async_sessionmaker

from hub.db.accounts import SqlAccountRepo
from hub.db.engine import make_engine
from hub.db.environments import SqlCatalog
from hub.db.migrate import upgrade
from hub.db.schema import ServerRow
from hub.db.servers import SqlServerRepo
from hub.domain.records import ACTIVE_STATES, AdmissionView, Claim
from hub.domain.resources import GiB, Resources
from hub.domain.servers import TRANSITIONS, Endpoint, ServerState, allowed_from, can_move
from tests.test_servers_api import busybox_env

S = ServerState
ALL_PAIRS = list(itertools.product(ServerState, ServerState))


def test_every_state_has_its_row_and_staying_put_is_allowed() -> None:
    assert set(TRANSITIONS) == set(ServerState)
    for state in ServerState:
        assert can_move(state, state)
        assert state in allowed_from(state)


def test_the_table_is_the_one_the_hub_follows() -> None:
    # A launch, its outcome, a stop, a crash, an unreachable engine and its return.
    for old, new in [
        (S.STOPPED, S.STARTING),
        (S.FAILED, S.STARTING),
        (S.STARTING, S.RUNNING),
        (S.STARTING, S.FAILED),
        (S.STARTING, S.UNKNOWN),
        (S.RUNNING, S.STOPPED),  # a crash the engine reported
        (S.RUNNING, S.UNKNOWN),
        (S.UNKNOWN, S.RUNNING),
        (S.UNKNOWN, S.STOPPED),
        (S.STOPPING, S.STOPPED),
        (S.STOPPING, S.UNKNOWN),
    ]:
        assert can_move(old, new), (old, new)
    for old in ServerState:  # anything may be stopped (removing a stopped one included)
        assert can_move(old, S.STOPPING), old
    # A server is launched again only once it is stopped or failed: one that may still run
    # (unknown), or is being stopped, is not.
    assert allowed_from(S.STARTING) - {S.STARTING} == frozenset(ServerState) - ACTIVE_STATES
    for old in (S.STOPPED, S.FAILED, S.STOPPING):
        assert not can_move(old, S.RUNNING), old
    assert not can_move(S.STOPPED, S.FAILED)
    assert not can_move(S.UNKNOWN, S.STARTING)


@pytest_asyncio.fixture
async def repo(db_url: str) -> AsyncIterator[tuple[SqlServerRepo, Claim]]:
    """A repository holding one server (launched: ``STARTING``), and the claim that made it."""
    upgrade(db_url)
    engine = make_engine(db_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    env_id = await SqlCatalog(sessions).add(busybox_env("sha256:x"))
    user = await SqlAccountRepo(sessions).add_user("alice", None, is_admin=False, must_change=False)
    claim = Claim(
        user_id=user.id,
        name="lab",
        environment_id=env_id,
        image_digest="sha256:x",
        resources=Resources(1, 1 * GiB),
        secret="s",
    )
    servers = SqlServerRepo(sessions)
    record, fresh = await servers.claim(claim, admit_all)
    assert fresh and record.state == S.STARTING
    yield servers, claim
    await engine.dispose()


def admit_all(view: AdmissionView) -> tuple[str, ...]:
    return ()


async def _id(repo: SqlServerRepo, claim: Claim) -> int:
    record = await repo.get(claim.user_id, claim.name)
    assert record is not None
    return record.id


async def _put(repo: SqlServerRepo, server_id: int, state: ServerState) -> None:
    """Set the state behind the repository's back: the start of each walked transition."""
    async with repo._sessions.begin() as s:
        await s.execute(
            update(ServerRow).where(ServerRow.id == server_id).values(state=state.value)
        )


async def _state(repo: SqlServerRepo, server_id: int) -> ServerState:
    record = await repo.by_id(server_id)
    assert record is not None
    return record.state


async def test_mark_moves_along_every_allowed_transition_and_refuses_every_other(
    repo: tuple[SqlServerRepo, Claim],
) -> None:
    servers, claim = repo
    sid = await _id(servers, claim)
    for old, new in ALL_PAIRS:
        await _put(servers, sid, old)
        moved = await servers.mark(sid, new, reason="walked")
        assert moved == can_move(old, new), (old, new)
        assert await _state(servers, sid) == (new if moved else old), (old, new)


async def test_expect_narrows_the_table_and_never_widens_it(
    repo: tuple[SqlServerRepo, Claim],
) -> None:
    servers, claim = repo
    sid = await _id(servers, claim)
    await _put(servers, sid, S.STARTING)
    assert not await servers.mark(sid, S.STOPPED, expect=frozenset({S.RUNNING}))
    await _put(servers, sid, S.RUNNING)
    assert await servers.mark(sid, S.STOPPED, expect=frozenset({S.RUNNING}))
    await _put(servers, sid, S.STOPPED)  # allowed by expect, refused by the table
    assert not await servers.mark(sid, S.RUNNING, expect=frozenset({S.STOPPED}))
    assert await _state(servers, sid) == S.STOPPED


async def test_mark_running_only_from_states_that_may_become_running(
    repo: tuple[SqlServerRepo, Claim],
) -> None:
    servers, claim = repo
    sid = await _id(servers, claim)
    endpoint = Endpoint("10.0.0.2", 8888, "c1", "labdock-h-s1")
    for old in ServerState:
        await _put(servers, sid, old)
        await servers.mark_running(sid, endpoint, datetime.now(UTC))
        expected = S.RUNNING if can_move(old, S.RUNNING) else old
        assert await _state(servers, sid) == expected, old


async def test_a_claim_relaunches_only_what_the_table_lets_start(
    repo: tuple[SqlServerRepo, Claim],
) -> None:
    servers, claim = repo
    sid = await _id(servers, claim)
    for old in ServerState:
        await _put(servers, sid, old)
        again, fresh = await servers.claim(claim, admit_all)
        assert fresh == (old != S.STARTING and can_move(old, S.STARTING)), old
        assert again.state == (S.STARTING if fresh else old), old


@pytest.mark.parametrize("state", list(ServerState))
def test_allowed_from_is_can_move_read_backwards(state: ServerState) -> None:
    assert allowed_from(state) == {old for old in ServerState if can_move(old, state)}
