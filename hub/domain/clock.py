"""Time, behind a port so that rules about expiry can be tested without sleeping.

clock = SystemClock()
clock.now()  # an aware UTC datetime
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Tells the time."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)
