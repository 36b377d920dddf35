"""Resource amounts and their human spellings.

>>> parse_memory("4G")
4294967296
>>> format_memory(2 * GiB)
'2 GiB'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hub.domain.errors import InvalidInput

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

# The least CPU a server may have. Docker turns cpus into a CFS quota per 100 ms period;
# below 0.01 (1 ms) the kernel refuses the quota, and below 1e-5 it rounds to none at all,
# which is *no* limit: a 1e-9 CPU server would run unbounded while admission counts ~0.
MIN_CPUS = 0.01
# The least memory a server may have: labdock's floor, well above the engine's own (6 MiB),
# under which no environment's app starts.
MIN_MEMORY = 64 * MiB
ENGINE_MIN_MEMORY = 6 * MiB

_UNITS = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}
# The largest size stored anywhere (a signed 64-bit column).
MAX_SIZE = 2**63 - 1
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_memory(text: str | int, *, what: str = "memory") -> int:
    """Parse ``4G``, ``512M``, ``2GiB`` or a byte count into bytes (binary units)."""
    if isinstance(text, bool):
        raise InvalidInput(f"{what}: expected a size such as 4G, got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise InvalidInput(f"{what}: must not be negative")
        if text > MAX_SIZE:
            raise InvalidInput(f"{what}: {text} bytes is more than any machine has")
        return text
    match = _MEMORY.match(str(text))
    if not match:
        raise InvalidInput(f"{what}: expected a size such as 512M or 4G, got {text!r}")
    number, unit = match.groups()
    size = float(number) * _UNITS[unit.upper()]  # inf when the digits run on
    if size > MAX_SIZE:
        raise InvalidInput(f"{what}: {text[:40]!r} is more than any machine has")
    return int(size)


def format_cpus(n: float) -> str:
    """``0.5 CPUs``, ``1 CPU``, ``1e-09 CPUs``."""
    return f"{n:g} CPU{'' if n == 1 else 's'}"


def format_memory(n: int) -> str:
    """The shortest exact-enough binary spelling: ``2 GiB``, ``1.5 GiB``, ``300 MiB``."""
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            value = n / size
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Resources:
    """What one server may use. CPU in cores, memory in bytes."""

    cpus: float
    memory: int
    gpus: int = 0

    def __post_init__(self) -> None:
        if self.cpus <= 0:
            raise InvalidInput("cpus must be greater than 0")
        if self.memory <= 0:
            raise InvalidInput("memory must be greater than 0")
        if self.gpus < 0:
            raise InvalidInput("gpus must not be negative")


def check_floor(
    need: Resources, *, maximum: Resources | None = None, who: str = "a server"
) -> None:
    """Refuse (``InvalidInput``) amounts under the least that limits a server for real.

    The message gives the allowed range: ``cpus: python takes 0.01 to 4 CPUs, got 1e-09``.
    """
    if need.cpus < MIN_CPUS:
        top = f" to {maximum.cpus:g}" if maximum is not None else " or more"
        raise InvalidInput(f"cpus: {who} takes {MIN_CPUS:g}{top} CPUs, got {need.cpus:g}")
    if need.memory < MIN_MEMORY:
        top = f" to {format_memory(maximum.memory)}" if maximum is not None else " or more"
        raise InvalidInput(
            f"memory: {who} takes {format_memory(MIN_MEMORY)}{top}, "
            f"got {format_memory(need.memory)}"
        )
