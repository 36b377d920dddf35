"""The hub's services: started in order, closed in reverse order, once each."""

from __future__ import annotations

import asyncio

import pytest

from hub.domain.services import Loop, Services, Step


def recorder(log: list[str], name: str) -> Step:
    async def begin() -> None:
        log.append(f"start {name}")

    async def end() -> None:
        log.append(f"close {name}")

    return Step(name, begin=begin, end=end)


async def test_services_start_in_order_and_close_in_reverse_order() -> None:
    log: list[str] = []
    services = Services([recorder(log, "database"), recorder(log, "engine")])
    services.add(recorder(log, "web"))
    assert services.names == ["database", "engine", "web"]
    await services.start()
    assert services.running == ["database", "engine", "web"]
    await services.close()
    assert log == [
        "start database", "start engine", "start web", "close web", "close engine", "close database"
    ]  # fmt: skip
    assert services.running == []
    await services.close()  # a second close closes nothing twice
    assert len(log) == 6


async def test_a_service_that_fails_to_start_closes_those_started_before_it() -> None:
    log: list[str] = []

    async def broken() -> None:
        raise RuntimeError("no engine")

    services = Services([recorder(log, "database"), Step("seed", begin=broken), recorder(log, "x")])
    with pytest.raises(RuntimeError, match="no engine"):
        await services.start()
    assert log == ["start database", "close database"]
    assert services.running == []


async def test_a_service_that_fails_to_close_does_not_keep_the_others_open() -> None:
    log: list[str] = []

    async def broken() -> None:
        raise RuntimeError("stuck")

    services = Services([recorder(log, "database"), Step("firewall", end=broken)])
    await services.start()
    await services.close()
    assert log == ["start database", "close database"]


async def test_a_loop_runs_from_start_until_close_cancels_it_then_runs_after() -> None:
    ticks: list[str] = []

    async def work() -> None:
        try:
            while True:
                ticks.append("tick")
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            ticks.append("flushed")
            raise

    async def after() -> None:
        ticks.append("after")

    loop = Loop("activity", work, after=after)
    await loop.start()
    assert loop.task is not None and loop.task.get_name() == "activity"
    await asyncio.sleep(0.035)
    await loop.close()
    assert loop.task.cancelled()
    assert ticks[-2:] == ["flushed", "after"] and ticks.count("tick") >= 2
