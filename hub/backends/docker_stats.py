"""Live CPU and memory of containers, cheaply: from cgroup files, else the engine's stats API.

    stats = DockerStats(client, executor)
    usage = await stats.read(container_id)    # LiveUsage(cpu_cores=0.37, memory_bytes=...)

Why not just ``container.stats(stream=False)``: the engine answers it after its
next collection tick, so each call takes 1 to 2 s (``one_shot`` too, measured on
Docker 20.10). When the hub runs on the engine's machine it can read the
container's cgroup instead, in microseconds: the container's main process
names its cgroup in ``/proc/<pid>/cgroup``, which is accepted only if it holds
the container's id (a hub in its own PID namespace would otherwise read some
other process). Both cgroup v1 (``memory.usage_in_bytes``, ``cpuacct.usage``)
and v2 (``memory.current``, ``cpu.stat``) are read. Where the files cannot be
seen (remote engine, hub in a container), the stats API is the fallback.

Memory is the working set, as ``docker stats`` shows it: usage less inactive
file cache, which the kernel reclaims before it OOM-kills. CPU is the rate of
the cumulative CPU time between two samples; the first read of a container
takes two samples 0.2 s apart, later reads use the previous one.

Blocking work (file reads, SDK calls) runs on the bounded executor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import docker

from hub.backends.engine_calls import EngineCalls
from hub.domain.errors import Conflict, NotFound
from hub.domain.stats import LiveUsage

T = TypeVar("T")

FIRST_WINDOW_S = 0.2  # between the two samples of a container's first read
MIN_WINDOW_S = 0.05  # closer samples than this reuse the previous rate
FORGET_AFTER_S = 600.0  # containers not read for this long leave the cache
NOT_RUNNING = "the server is not running"


@dataclass(frozen=True)
class Sample:
    """Cumulative CPU time (ns) and working-set memory at a moment (monotonic seconds)."""

    cpu_ns: int
    memory: int
    memory_limit: int | None
    at: float


@dataclass(frozen=True)
class CgroupFiles:
    """Where one container's figures live: cgroup v1 (two controllers) or v2 (one dir)."""

    version: int
    memory_dir: Path
    cpu_dir: Path


# -- parsing (pure) ------------------------------------------------------------------------


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as ``{controller: path}``; v2's unified line is key ``""``."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            found[""] = path
        for name in controllers.split(","):
            if name:
                found[name] = path
    return found


def _stat_file(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    return values


def working_set(usage: int, stat: Mapping[str, int], *, v2: bool) -> int:
    """Usage less inactive file pages, as ``docker stats`` computes it."""
    inactive = stat.get("inactive_file" if v2 else "total_inactive_file", 0)
    return usage - inactive if 0 < inactive < usage else usage


def _limit(text: str) -> int | None:
    value = text.strip()
    if not value.isdigit():
        return None  # "max" on v2
    limit = int(value)
    return None if limit >= 2**62 else limit  # v1's "no limit" is a page-rounded 2**63


def locate(container_id: str, pid: int, *, proc: Path, cgroup_root: Path) -> CgroupFiles | None:
    """The cgroup directories of a container's main process, if readable from here."""
    try:
        paths = parse_proc_cgroup((proc / str(pid) / "cgroup").read_text())
    except OSError:
        return None
    v1_memory, v1_cpu = paths.get("memory"), paths.get("cpuacct")
    if v1_memory and v1_cpu and container_id in v1_memory and container_id in v1_cpu:
        memory_dir = cgroup_root / "memory" / v1_memory.lstrip("/")
        for mount in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"):
            cpu_dir = cgroup_root / mount / v1_cpu.lstrip("/")
            if (cpu_dir / "cpuacct.usage").is_file():
                break
        if (memory_dir / "memory.usage_in_bytes").is_file() and (
            cpu_dir / "cpuacct.usage"
        ).is_file():
            return CgroupFiles(1, memory_dir, cpu_dir)
    unified = paths.get("")
    if unified and container_id in unified:
        folder = cgroup_root / unified.lstrip("/")
        if (folder / "memory.current").is_file() and (folder / "cpu.stat").is_file():
            return CgroupFiles(2, folder, folder)
    return None


def read_cgroup(files: CgroupFiles, now: float) -> Sample:
    """One sample from the cgroup files; ``OSError`` once the cgroup is gone."""
    if files.version == 1:
        usage = int((files.memory_dir / "memory.usage_in_bytes").read_text())
        stat = _stat_file((files.memory_dir / "memory.stat").read_text())
        limit = _limit((files.memory_dir / "memory.limit_in_bytes").read_text())
        cpu_ns = int((files.cpu_dir / "cpuacct.usage").read_text())
        return Sample(cpu_ns, working_set(usage, stat, v2=False), limit, now)
    usage = int((files.memory_dir / "memory.current").read_text())
    stat = _stat_file((files.memory_dir / "memory.stat").read_text())
    limit = _limit((files.memory_dir / "memory.max").read_text())
    cpu_ns = _stat_file((files.cpu_dir / "cpu.stat").read_text()).get("usage_usec", 0) * 1000
    return Sample(cpu_ns, working_set(usage, stat, v2=True), limit, now)


def _read_time(raw: str) -> float | None:
    """The engine's RFC 3339 timestamp (nanoseconds) as POSIX seconds."""
    if not raw or raw.startswith("0001-"):
        return None
    head, _, frac = raw.rstrip("Z").partition(".")
    try:
        whole = datetime.fromisoformat(head + "+00:00").timestamp()
    except ValueError:
        return None
    return whole + (float("0." + frac) if frac.isdigit() else 0.0)


def api_sample(stats: Mapping[str, Any]) -> tuple[Sample, Sample | None]:
    """A sample from the stats API's JSON, and its ``precpu`` sample when it has one.

    Times are the engine's own clock, so the rate between them is exact.
    """
    memory = stats.get("memory_stats") or {}
    stat = {k: int(v) for k, v in (memory.get("stats") or {}).items() if isinstance(v, int)}
    v2 = "total_inactive_file" not in stat and "cache" not in stat
    used = working_set(int(memory.get("usage") or 0), stat, v2=v2)
    limit = memory.get("limit")
    limit = int(limit) if isinstance(limit, int) and 0 < limit < 2**62 else None
    cpu = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0
    at = _read_time(str(stats.get("read") or "")) or time.time()
    now = Sample(int(cpu), used, limit, at)
    pre_cpu = ((stats.get("precpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
    pre_at = _read_time(str(stats.get("preread") or ""))
    before = Sample(int(pre_cpu), used, limit, pre_at) if pre_cpu and pre_at else None
    return now, before


def cpu_rate(before: Sample, after: Sample) -> float | None:
    """Cores used between two samples; ``None`` when they are too close to tell."""
    window = after.at - before.at
    if window < MIN_WINDOW_S:
        return None
    return max(0.0, (after.cpu_ns - before.cpu_ns) / 1e9 / window)


# -- the reader ----------------------------------------------------------------------------


@dataclass
class _Known:
    files: CgroupFiles | None  # None: read through the stats API
    last: Sample | None = None
    cores: float = 0.0
    read_at: float = 0.0


class DockerStats:
    """``StatsReader`` over one Docker engine; keeps the previous sample per container."""

    def __init__(
        self,
        client: docker.DockerClient,
        executor: Executor,
        *,
        proc: Path = Path("/proc"),
        cgroup_root: Path = Path("/sys/fs/cgroup"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._call = EngineCalls(client, executor)
        self._proc = proc
        self._cgroup_root = cgroup_root
        self._clock = clock
        self._known: dict[str, _Known] = {}

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` on the executor; a container the engine does not know is not running."""
        try:
            return await self._call(fn, *args)
        except NotFound:
            raise Conflict(NOT_RUNNING) from None

    def _find(self, container_id: str) -> CgroupFiles | None:
        state = self._client.api.inspect_container(container_id).get("State") or {}
        if not state.get("Running"):
            raise Conflict(NOT_RUNNING)
        pid = int(state.get("Pid") or 0)
        if pid <= 0:
            return None
        return locate(container_id, pid, proc=self._proc, cgroup_root=self._cgroup_root)

    def _sample_files(self, files: CgroupFiles) -> Sample | None:
        try:
            return read_cgroup(files, self._clock())
        except (OSError, ValueError):
            return None  # the cgroup went away with its container

    def _sample_api(self, container_id: str, first: bool) -> tuple[Sample, Sample | None]:
        # The first read waits for two engine samples (precpu included); later reads one.
        raw = self._client.api.stats(container_id, stream=False, one_shot=not first)
        # A stopped container's stats carry the zero time.
        if not isinstance(raw, Mapping) or _read_time(str(raw.get("read") or "")) is None:
            raise Conflict(NOT_RUNNING)
        return api_sample(raw)

    async def read(self, container_id: str) -> LiveUsage:
        """CPU cores and working-set memory of a running container."""
        try:
            return await self._read(container_id)
        except Conflict:
            self._known.pop(container_id, None)
            raise

    async def _read(self, container_id: str) -> LiveUsage:
        known = self._known.get(container_id)
        if known is None:
            known = _Known(files=await self._run(self._find, container_id))
            self._known[container_id] = known
        self._forget_stale()
        if known.files is not None:
            sample = await self._files_sample(known)
        else:
            sample, before = await self._run(self._sample_api, container_id, known.last is None)
            if known.last is None and before is not None:
                known.last = before
        if known.last is not None:
            rate = cpu_rate(known.last, sample)
            if rate is not None:
                known.cores, known.last = rate, sample
        else:
            known.last = sample
        known.read_at = self._clock()
        return LiveUsage(
            cpu_cores=known.cores, memory_bytes=sample.memory, memory_limit=sample.memory_limit
        )

    async def _files_sample(self, known: _Known) -> Sample:
        assert known.files is not None
        sample = await self._run(self._sample_files, known.files)
        if sample is not None and known.last is None:
            known.last = sample
            await asyncio.sleep(FIRST_WINDOW_S)
            sample = await self._run(self._sample_files, known.files)
        if sample is None:
            raise Conflict(NOT_RUNNING)
        return sample

    async def read_many(self, container_ids: list[str]) -> dict[str, LiveUsage | None]:
        """Use of several containers at once; ``None`` for those not running."""

        async def one(cid: str) -> LiveUsage | None:
            try:
                return await self.read(cid)
            except Conflict:
                return None

        results = await asyncio.gather(*(one(cid) for cid in container_ids))
        return dict(zip(container_ids, results, strict=True))

    def _forget_stale(self) -> None:
        cutoff = self._clock() - FORGET_AFTER_S
        for cid in [c for c, k in self._known.items() if k.read_at and k.read_at < cutoff]:
            del self._known[cid]

    @property
    def uses_cgroups(self) -> dict[str, bool]:
        """For each container read so far: whether its cgroup files are read directly."""
        return {cid: k.files is not None for cid, k in self._known.items()}
