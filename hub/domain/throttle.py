"""Login throttling by username and by client address.

    throttle = LoginThrottle(clock)
    throttle.check("alice", "203.0.113.9")      # raises TooManyRequests when locked out
    throttle.failed("alice", "203.0.113.9")
    throttle.succeeded("alice", "203.0.113.9")

Failures are counted in a sliding window. Past the limit, further attempts
are refused without checking the password, so guessing costs the attacker
time, not the hub's CPU (argon2 is deliberately slow).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from hub.domain.clock import Clock
from hub.domain.errors import TooManyRequests


@dataclass(frozen=True)
class ThrottlePolicy:
    """How many failures each key may have within ``window_s`` seconds."""

    per_user: int = 5
    per_address: int = 20
    window_s: float = 900.0


class LoginThrottle:
    """Counts recent failed logins per username and per client address, in memory."""

    def __init__(self, clock: Clock, policy: ThrottlePolicy | None = None) -> None:
        self._clock = clock
        self._policy = policy or ThrottlePolicy()
        self._failures: dict[str, deque[float]] = {}

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and now - times[0] > self._policy.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def check(self, username: str, address: str) -> None:
        """Refuse the attempt if this account or this address failed too often lately."""
        now = self._now()
        for key, limit, what in (
            ("u:" + username, self._policy.per_user, "this account"),
            ("a:" + address, self._policy.per_address, "your address"),
        ):
            times = self._recent(key, now)
            if len(times) >= limit:
                wait = max(1, math.ceil(self._policy.window_s - (now - times[0])))
                minutes = math.ceil(wait / 60)
                raise TooManyRequests(
                    f"too many failed logins for {what}; try again in "
                    f"{minutes} minute{'s' if minutes != 1 else ''}",
                    retry_after=wait,
                )

    def failed(self, username: str, address: str) -> None:
        now = self._now()
        for key in ("u:" + username, "a:" + address):
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, username: str, address: str) -> None:
        """A good password clears the account's count (not the address's)."""
        self._failures.pop("u:" + username, None)
