"""Login throttling: an attacker's failures back off the attacker, never lock out the owner.

The attack this closes: five wrong passwords from anywhere locked the account from
every address for 15 minutes, so anyone could lock out a known user.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import tornado.httpclient

from hub.app import build_hub
from hub.config import Settings
from hub.domain.errors import TooManyRequests
from hub.domain.throttle import LoginThrottle, ThrottlePolicy
from tests.conftest import RunningHub
from tests.test_web import Browser

PASSWORD = "correct horse"


class StepClock:
    def __init__(self) -> None:
        self.at = datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.at

    def wait(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


def retry_after(throttle: LoginThrottle, name: str, address: str) -> int:
    with pytest.raises(TooManyRequests) as refused:
        throttle.check(name, address)
    return refused.value.retry_after


def test_failures_of_one_name_from_one_address_back_off_exponentially() -> None:
    clock = StepClock()
    throttle = LoginThrottle(clock)
    waits = []
    for _ in range(3):  # the first few are free: people mistype
        assert throttle.check("alice", "10.0.0.66") == 0.0
        throttle.failed("alice", "10.0.0.66")
    for _ in range(12):
        wait = retry_after(throttle, "alice", "10.0.0.66")
        waits.append(wait)
        clock.wait(wait)
        throttle.check("alice", "10.0.0.66")
        throttle.failed("alice", "10.0.0.66")
    assert waits[:6] == [2, 4, 8, 16, 32, 64]
    assert waits[-1] == 900  # capped at 15 minutes


def test_the_owner_from_another_address_is_never_refused_for_someone_elses_failures() -> None:
    clock = StepClock()
    throttle = LoginThrottle(clock)
    for _ in range(10):
        throttle.failed("alice", "10.0.0.66")
    assert retry_after(throttle, "alice", "10.0.0.66") > 0
    assert throttle.check("alice", "192.0.2.7") == 0.0
    throttle.failed("alice", "192.0.2.7")  # a typo of the owner's own counts only for them
    assert throttle.check("alice", "192.0.2.7") == 0.0


def test_an_address_spraying_many_names_waits_out_the_window() -> None:
    clock = StepClock()
    throttle = LoginThrottle(clock, ThrottlePolicy(per_address=30))
    for n in range(30):
        throttle.check(f"user{n}", "10.0.0.66")
        throttle.failed(f"user{n}", "10.0.0.66")
    with pytest.raises(TooManyRequests, match="from your address; try again in 15 minutes"):
        throttle.check("someone", "10.0.0.66")
    assert throttle.check("someone", "10.0.0.67") == 0.0
    clock.wait(901)
    assert throttle.check("someone", "10.0.0.66") == 0.0


def test_a_name_failing_from_many_addresses_is_slowed_never_refused() -> None:
    clock = StepClock()
    throttle = LoginThrottle(clock, ThrottlePolicy(slow_per_name=100, slow_s=1.0))
    throttle.succeeded("alice", "192.0.2.7")  # the owner's usual address
    for n in range(100):
        throttle.failed("alice", f"10.0.{n // 250}.{n % 250}")
    assert throttle.check("alice", "198.51.100.1") == 1.0  # a new address: slowed, not refused
    assert throttle.check("alice", "192.0.2.7") == 0.0  # the owner's known address: not slowed
    assert throttle.check("bob", "198.51.100.1") == 0.0


def test_a_good_password_clears_only_its_own_pair() -> None:
    clock = StepClock()
    throttle = LoginThrottle(clock)
    for _ in range(4):
        throttle.failed("alice", "10.0.0.66")
    throttle.succeeded("alice", "10.0.0.66")
    assert throttle.check("alice", "10.0.0.66") == 0.0


class From:
    """The hub as seen from one loopback address (Linux routes all of 127/8 locally)."""

    def __init__(self, url: str, address: str) -> None:
        self.url, self.address = url, address

    async def fetch(self, path: str, **kwargs: Any) -> tornado.httpclient.HTTPResponse:
        kwargs.setdefault("follow_redirects", False)
        kwargs.setdefault("raise_error", False)
        kwargs["network_interface"] = self.address
        client = tornado.httpclient.AsyncHTTPClient()
        return await client.fetch(self.url + path, **kwargs)


async def attack_and_log_in(
    url: str, throttle: LoginThrottle, *, spoof: dict[str, str] | None = None
) -> None:
    """An attacker at 127.0.0.2 fails ten times; the owner at 127.0.0.1 then logs in."""
    clock = StepClock()
    # The throttle's clock only: ten rounds of backoff must not take real minutes.
    throttle._clock = clock
    attacker = Browser(From(url, "127.0.0.2"))  # type: ignore[arg-type]
    if spoof:
        plain = attacker._headers
        attacker._headers = lambda: {**plain(), **spoof}  # type: ignore[method-assign]
    failures, waits = 0, []
    while failures < 10:
        answer = await attacker.login("alice", "wrong guess")
        if answer.code == 429:
            assert b"from your address" in answer.body
            waits.append(int(answer.headers["Retry-After"]))
            clock.wait(waits[-1])
            continue
        assert answer.code == 401, answer.code
        failures += 1
    # Backed off, even with the right password, for longer after each failure.
    stopped = await attacker.login("alice", PASSWORD)
    assert stopped.code == 429
    waits.append(int(stopped.headers["Retry-After"]))
    assert waits == sorted(waits) and len(set(waits)) == len(waits) and waits[-1] >= 128
    owner = Browser(From(url, "127.0.0.1"))  # type: ignore[arg-type]
    assert (await owner.login("alice", PASSWORD)).code == 302  # at once, and unslowed


async def test_an_attacker_cannot_lock_the_owner_out(hub_server: RunningHub) -> None:
    await hub_server.hub.deps.accounts.create_user("alice", PASSWORD)
    await attack_and_log_in(hub_server.url, hub_server.hub.deps.throttle)


async def test_behind_the_front_a_forged_real_ip_header_is_not_believed(
    settings: Settings,
) -> None:
    async with build_hub(settings) as built:
        await built.deps.accounts.create_user("alice", PASSWORD)
        port = await built.listen(0, "127.0.0.1")
        # The attacker claims to be the owner's address: the front replaces the claim.
        await attack_and_log_in(
            f"http://127.0.0.1:{port}",
            built.deps.throttle,
            spoof={"X-Real-Ip": "127.0.0.1", "X-Forwarded-For": "127.0.0.1"},
        )
