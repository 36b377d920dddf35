"""Activity tracking: cheap to record, written at most once per server per interval."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from hub.app import build_hub
from hub.config import Settings
from hub.db.schema import ServerRow
from hub.domain.activity import ActivityTracker, flush, flush_forever
from hub.domain.routes import Route
from hub.proxy.pool import UpstreamConnection


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def at(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


def test_recorded_activity_is_due_once_with_its_time() -> None:
    clock = FakeClock()
    tracker = ActivityTracker(every=30, clock=clock)
    tracker.record(42)
    assert tracker.due(clock.at()) == {42: clock.at()}
    assert tracker.due(clock.at()) == {}


def test_a_busy_server_is_written_at_most_once_per_interval_with_its_latest_time() -> None:
    clock = FakeClock()
    tracker = ActivityTracker(every=30, clock=clock)
    tracker.record(1)
    assert 1 in tracker.due(clock.at())
    for _ in range(10):
        clock.now += 2
        tracker.record(1)
        assert tracker.due(clock.at()) == {}
    clock.now += 11  # 31 s after the first write
    batch = tracker.due(clock.at())
    assert batch == {1: datetime.fromtimestamp(clock.now - 11, UTC)}


def test_an_idle_server_is_not_written_again() -> None:
    clock = FakeClock()
    tracker = ActivityTracker(every=30, clock=clock)
    tracker.record(1)
    tracker.due(clock.at())
    clock.now += 3600
    assert tracker.due(clock.at()) == {}


def test_servers_are_throttled_independently() -> None:
    clock = FakeClock()
    tracker = ActivityTracker(every=30, clock=clock)
    tracker.record(1)
    tracker.due(clock.at())
    clock.now += 5
    tracker.record(2)
    tracker.record(1)
    assert set(tracker.due(clock.at())) == {2}


def test_a_failed_write_is_put_back_and_returned_by_the_next_due() -> None:
    clock = FakeClock()
    tracker = ActivityTracker(every=30, clock=clock)
    tracker.record(1)
    batch = tracker.due(clock.at())
    tracker.put_back(batch)
    assert tracker.due(clock.at()) == batch


def test_forgotten_servers_leave_no_trace() -> None:
    clock = FakeClock()
    tracker = ActivityTracker(every=30, clock=clock)
    tracker.record(1)
    tracker.forget(1)
    assert len(tracker) == 0 and tracker.last_seen(1) is None
    assert tracker.due(clock.at()) == {}


def test_last_seen_reads_without_writing() -> None:
    clock = FakeClock()
    tracker = ActivityTracker(every=30, clock=clock)
    assert tracker.last_seen(3) is None
    tracker.record(3)
    assert tracker.last_seen(3) == clock.at()
    assert tracker.due(clock.at()) == {3: clock.at()}


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="every"):
        ActivityTracker(every=-1)


# Flushing to the store ---------------------------------------------------------------------


class FakeStore:
    def __init__(self) -> None:
        self.writes: list[dict[int, datetime]] = []
        self.fail = False

    async def record_activity(self, seen: Mapping[int, datetime]) -> None:
        if self.fail:
            raise ConnectionError("database is down")
        self.writes.append(dict(seen))


async def test_flush_writes_what_is_due_in_one_batch() -> None:
    tracker, store = ActivityTracker(every=30), FakeStore()
    tracker.record(1)
    tracker.record(2)
    assert set(await flush(tracker, store)) == {1, 2}
    assert len(store.writes) == 1 and set(store.writes[0]) == {1, 2}
    tracker.record(1)
    assert await flush(tracker, store) == {}  # within 30 s of the last write
    assert len(store.writes) == 1


async def test_a_failed_flush_keeps_the_times_for_the_next_one() -> None:
    tracker, store = ActivityTracker(every=30), FakeStore()
    tracker.record(1)
    store.fail = True
    with pytest.raises(ConnectionError):
        await flush(tracker, store)
    store.fail = False
    assert set(await flush(tracker, store)) == {1}


async def test_the_flush_loop_writes_every_tick_and_everything_pending_when_stopped() -> None:
    tracker, store = ActivityTracker(every=30), FakeStore()
    task = asyncio.create_task(flush_forever(tracker, store, tick=0.02))
    tracker.record(1)
    await asyncio.sleep(0.1)
    assert store.writes and set(store.writes[0]) == {1}
    tracker.record(1)  # due only in 30 s, but the hub is stopping: written anyway
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(store.writes) == 2 and set(store.writes[1]) == {1}


async def test_the_flush_loop_survives_a_database_outage() -> None:
    tracker, store = ActivityTracker(every=0), FakeStore()
    store.fail = True
    task = asyncio.create_task(flush_forever(tracker, store, tick=0.02))
    tracker.record(1)
    await asyncio.sleep(0.08)
    store.fail = False
    await asyncio.sleep(0.08)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert store.writes and set(store.writes[0]) == {1}


# The wired hub -------------------------------------------------------------------------------


async def test_the_hub_writes_activity_to_the_db_when_it_stops(settings: Settings) -> None:
    async with build_hub(settings) as built:
        user, _ = await built.deps.accounts.create_user("ada", "correct horse")
        sessions = async_sessionmaker(built.engine, expire_on_commit=False)
        async with sessions.begin() as s:
            row = ServerRow(user_id=user.id, name="", created=datetime.now(UTC))
            s.add(row)
        server_id = row.id
        built.activity.record(server_id)
        seen = built.activity.last_seen(server_id)
        assert seen is not None
        # The loop runs on its own; stopping the hub writes what is still pending.
        assert "activity" in built.services.running
    async with build_hub(settings) as again:
        sessions = async_sessionmaker(again.engine, expire_on_commit=False)
        async with sessions() as s:
            stored = (await s.execute(select(ServerRow.last_activity))).scalar_one()
    assert stored is not None
    if stored.tzinfo is None:  # SQLite keeps no zone; the hub writes UTC
        stored = stored.replace(tzinfo=UTC)
    assert abs(stored.timestamp() - seen.timestamp()) < 1e-3


async def test_removing_a_route_drops_its_connections_and_activity(settings: Settings) -> None:
    async with build_hub(settings) as built:
        assert built.front is not None and built.upstream is not None
        # A listening socket stands in for the server: connections to it are real.
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            target = f"http://127.0.0.1:{server.getsockname()[1]}"
            route = Route(user="ada", server="", user_id=1, server_id=5, target=target, secret="s")
            built.routes.add(route)
            conn = await built.front.pool.connect(target)
            built.front.pool.checkin(target, conn)
            assert built.front.pool.idle_connections(target) == 1
            built.activity.record(5)
            built.routes.remove(5)
            assert built.front.pool.idle_connections(target) == 0
            assert conn.closed
            assert built.activity.last_seen(5) is None


async def test_closing_the_hub_closes_its_pools_and_listeners(settings: Settings) -> None:
    async with build_hub(settings) as built:
        assert built.front is not None
        port = await built.listen(0, "127.0.0.1")
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            target = f"http://127.0.0.1:{server.getsockname()[1]}"
            conn: UpstreamConnection = await built.front.pool.connect(target)
            built.front.pool.checkin(target, conn)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /hub/health HTTP/1.1\r\nHost: hub\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 ")
    assert conn.closed
    # The rest of the response, then the end: the hub closed the client's connection.
    await asyncio.wait_for(reader.read(), 5)
    assert reader.at_eof()
    writer.close()
