"""Login throttling per (username, client address), with exponential backoff.

    throttle = LoginThrottle(clock)
    delay = throttle.check("alice", "203.0.113.9")   # raises TooManyRequests while backed off
    await asyncio.sleep(delay)                        # > 0 only for a name under wide attack
    throttle.failed("alice", "203.0.113.9")
    throttle.succeeded("alice", "203.0.113.9")

Failures count against the pair of the name tried and the address trying it:
after a few free ones, each further failure doubles the wait before that address
may try that name again. Guessing from one address thus costs hours, while the
owner, from any other address, is never refused because of someone else's
failures (a lock on the name alone would let anyone lock out a known user).

Two safety nets stay: an address failing across many names (password spraying)
waits out the window; and a name failing from very many addresses is slowed,
never refused, except from addresses it has logged in from before.
Refused attempts never reach the password check, so guessing costs the
attacker time, not the hub's CPU (argon2 is deliberately slow).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from hub.domain.clock import Clock
from hub.domain.errors import TooManyRequests

# Past this many keys, the next failure sweeps the ones with nothing recent.
_SWEEP_AT = 10_000


@dataclass(frozen=True)
class ThrottlePolicy:
    """Limits on failed logins within sliding windows.

    ``free_per_pair`` failures of one name from one address within
    ``pair_window_s`` pass; the next waits ``backoff_s``, doubling with each
    further failure up to ``max_backoff_s``. The other counts use ``window_s``.
    ``per_address`` failures from one address (any names) refuse it until the
    window slides. ``slow_per_name`` failures of one name (any addresses) make
    each attempt on it wait ``slow_s`` first, unless its address logged in before.
    """

    free_per_pair: int = 3
    backoff_s: float = 2.0
    max_backoff_s: float = 900.0
    per_address: int = 30
    slow_per_name: int = 100
    slow_s: float = 1.0
    window_s: float = 900.0
    pair_window_s: float = 86400.0


def _wait_words(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


class LoginThrottle:
    """Counts recent failed logins in memory, per pair, per address and per name."""

    def __init__(self, clock: Clock, policy: ThrottlePolicy | None = None) -> None:
        self._clock = clock
        self.policy = policy or ThrottlePolicy()
        self._failures: dict[str, deque[float]] = {}
        # Addresses each name logged in from lately: spared the per-name slowing.
        self._known: dict[str, dict[str, float]] = {}

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        window = self.policy.pair_window_s if key.startswith("p:") else self.policy.window_s
        while times and now - times[0] > window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` recent failures of one name from one address."""
        over = failures - self.policy.free_per_pair
        if over < 0:
            return 0.0
        return min(self.policy.max_backoff_s, self.policy.backoff_s * 2.0 ** min(over, 40))

    def check(self, username: str, address: str) -> float:
        """Refuse an attempt from a backed-off pair or a spraying address; else return the
        seconds to hold it before checking the password (0 unless the name is under a
        wide attack and this address is new to it)."""
        now = self._now()
        pair = self._recent(f"p:{address}\x00{username}", now)
        if pair:
            wait = math.ceil(pair[-1] + self.backoff(len(pair)) - now)
            if wait > 0:
                raise TooManyRequests(
                    "too many failed logins for this account from your address; "
                    f"try again in {_wait_words(wait)}",
                    retry_after=wait,
                )
        spray = self._recent("a:" + address, now)
        if len(spray) >= self.policy.per_address:
            wait = max(1, math.ceil(self.policy.window_s - (now - spray[0])))
            raise TooManyRequests(
                f"too many failed logins from your address; try again in {_wait_words(wait)}",
                retry_after=wait,
            )
        known = self._known.get(username, {})
        seen = known.get(address)
        if seen is not None and now - seen <= self.policy.pair_window_s * 30:
            return 0.0
        if len(self._recent("u:" + username, now)) >= self.policy.slow_per_name:
            return self.policy.slow_s
        return 0.0

    def failed(self, username: str, address: str) -> None:
        """Count a wrong password (or unknown name) against the pair, address and name."""
        now = self._now()
        if len(self._failures) > _SWEEP_AT:
            for key in list(self._failures):
                self._recent(key, now)
        for key in (f"p:{address}\x00{username}", "a:" + address, "u:" + username):
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, username: str, address: str) -> None:
        """A good password clears this pair's count and marks the address as the owner's."""
        self._failures.pop(f"p:{address}\x00{username}", None)
        known = self._known.setdefault(username, {})
        known[address] = self._now()
        if len(known) > 32:  # the oldest go; only recent addresses are worth sparing
            for old in sorted(known, key=known.__getitem__)[:-32]:
                del known[old]
