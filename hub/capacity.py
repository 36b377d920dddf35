"""What this machine offers to servers: CPUs, memory and GPUs.

limits, gpus = host_capacity(settings.capacity)
limits.cpus   # e.g. 2.0 on a 2-core machine with no overcommit
"""

from __future__ import annotations

import logging
import os

from hub.config import CapacitySettings
from hub.domain.quotas import Limits

log = logging.getLogger(__name__)


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def nvml_gpus() -> tuple[str, ...]:
    """GPU indices from NVML, or none when NVML (nvidia-ml-py) or a driver is absent."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except Exception:
        return ()
    try:
        return tuple(str(i) for i in range(int(pynvml.nvmlDeviceGetCount())))
    finally:
        pynvml.nvmlShutdown()


def host_capacity(settings: CapacitySettings) -> tuple[Limits, tuple[str, ...]]:
    """The host's allocatable limits (with overcommit) and its GPU inventory."""
    cpus = settings.cpus or float(os.cpu_count() or 1)
    memory = settings.memory or _total_memory()
    if settings.gpus.strip() == "auto":
        gpus = nvml_gpus()
    else:
        gpus = tuple(g.strip() for g in settings.gpus.split(",") if g.strip())
    limits = Limits(
        cpus=cpus * settings.overcommit,
        memory=int(memory * settings.overcommit) if memory else None,
        gpus=len(gpus),
        servers=None,
    )
    return limits, gpus
