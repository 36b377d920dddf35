"""Activity tracking: cheap to record, written at most once per server per interval."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hub.domain.activity import ActivityTracker


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
