"""Volume sizes on one Docker engine, measured by a one-shot ``du`` helper container.

    meter = DockerVolumeMeter(docker.from_env(), hub_id="h1", executor=pool)
    await meter.measure()   # [VolumeUse("labdock-h1-u7-home", 52428800, user_id=7), ...]

Why a helper and not the engine's ``df`` API: ``df`` walks every image, every
container's writable layer and every volume of the whole engine, other hubs'
included, and Docker 20.10 refuses a second ``df`` while one runs ("a disk usage
operation is already running"), so an admin's ``docker system df`` would make a
measurement fail. The helper walks only this hub's volumes, mounted read-only,
in one container per batch, with no network, every capability dropped but
``DAC_READ_SEARCH`` (to read files of any owner), and a timeout. It reports
allocated blocks (``du -k``), what the disk actually holds. It works the same
on a remote engine, where the hub cannot read volume folders itself.

The helper needs an image with ``du``: the configured one, else the newest
``labdock/base`` (every environment image is built on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Executor

import docker
import docker.errors as derr
import requests
from docker.types import LogConfig, Mount

from hub.backends.docker_config import HUB_LABEL, ROLE_LABEL, TEAM_LABEL, USER_LABEL
from hub.backends.engine_calls import EngineCalls
from hub.domain.errors import BackendUnavailable, ConfigError
from hub.domain.storage import VolumeUse

log = logging.getLogger(__name__)

BASE_REPOSITORY = "labdock/base"
# Volumes per helper container: keeps the command line and the mount table small.
BATCH = 64


def _label_id(labels: Mapping[str, str], key: str) -> int | None:
    value = labels.get(key, "")
    return int(value) if value.isdigit() else None


def parse_du(output: str, names: Mapping[str, str]) -> dict[str, int]:
    """``du -sk`` lines (``<KiB>\\t<path>``) as bytes per volume name; others are skipped."""
    sizes: dict[str, int] = {}
    for line in output.splitlines():
        kib, _, path = line.partition("\t")
        name = names.get(path.strip())
        if name is not None and kib.strip().isdigit():
            sizes[name] = int(kib) * 1024
    return sizes


class DockerVolumeMeter:
    """The ``VolumeMeter`` port on one engine: every volume labelled with this hub's id."""

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        hub_id: str,
        executor: Executor,
        image: str = "",
        extra_labels: Mapping[str, str] | None = None,
        timeout: float = 600.0,
    ) -> None:
        self._client = client
        self._hub_id = hub_id
        self._call = EngineCalls(client, executor)
        self._image = image
        self._extra_labels = dict(extra_labels or {})
        self._timeout = timeout
        # Helpers now running, so that closing the hub can end them at once.
        self._running: set[str] = set()
        self._closed = False
        self._lock = threading.Lock()

    async def measure(self) -> list[VolumeUse]:
        """Every volume of this hub with its size; raises when the engine cannot tell."""
        return await self._call(self._measure)

    async def close(self) -> None:
        """Remove any helper still measuring, and start no more.

        A cancelled measurement goes on in its executor thread; without this, a helper
        would outlive the hub and hold its volumes open. The removal runs on the
        loop's default executor: the hub's own may be busy with that measurement.
        """
        await asyncio.get_running_loop().run_in_executor(None, self._close)

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            running = list(self._running)
        for cid in running:
            with contextlib.suppress(derr.APIError, requests.exceptions.RequestException):
                self._client.api.remove_container(cid, force=True)

    def helper_image(self) -> str:
        """The configured image, or the newest ``labdock/base`` (blocking)."""
        if self._image:
            return self._image
        images = self._client.images.list(name=BASE_REPOSITORY)
        if not images:
            raise ConfigError(
                "quota.storage_image: no image to measure volumes with; run "
                "`labdock images build` or name an image that has `du`"
            )
        newest = max(images, key=lambda i: str(i.attrs.get("Created", "")))
        return str(newest.tags[0] if newest.tags else newest.id)

    def _measure(self) -> list[VolumeUse]:
        listed = self._client.volumes.list(filters={"label": f"{HUB_LABEL}={self._hub_id}"})
        # Homes and team volumes; not the runtime copies of images (docker_runtime.py).
        volumes = [v for v in listed if ROLE_LABEL not in (v.attrs.get("Labels") or {})]
        if not volumes:
            return []
        image = self.helper_image()
        found: list[VolumeUse] = []
        for start in range(0, len(volumes), BATCH):
            batch = volumes[start : start + BATCH]
            sizes = self._du(image, [str(v.name) for v in batch])
            for volume in batch:
                if volume.name not in sizes:
                    continue  # removed meanwhile, or unreadable: no figure rather than 0
                labels = volume.attrs.get("Labels") or {}
                found.append(
                    VolumeUse(
                        name=str(volume.name),
                        used=sizes[volume.name],
                        user_id=_label_id(labels, USER_LABEL),
                        team_id=_label_id(labels, TEAM_LABEL),
                    )
                )
        return found

    def _du(self, image: str, names: list[str]) -> dict[str, int]:
        """Run one helper over ``names`` and return their sizes (blocking)."""
        paths = {f"/v/{name}": name for name in names}
        api = self._client.api
        host_config = api.create_host_config(
            mounts=[
                Mount(target=p, source=n, type="volume", read_only=True) for p, n in paths.items()
            ],
            network_mode="none",
            cap_drop=["ALL"],
            cap_add=["DAC_READ_SEARCH"],
            security_opt=["no-new-privileges:true"],
            read_only=True,
            mem_limit="256m",
            pids_limit=16,
            log_config=LogConfig(type="json-file", config={"max-size": "1m"}),
        )
        created = api.create_container(
            image,
            entrypoint=["du"],
            command=["-s", "-k", "-x", *paths],
            user="0",
            network_disabled=True,
            labels={**self._extra_labels, HUB_LABEL: self._hub_id, ROLE_LABEL: "storage-meter"},
            host_config=host_config,
        )
        cid = created["Id"]
        with self._lock:
            closed = self._closed
            if not closed:
                self._running.add(cid)
        if closed:
            with contextlib.suppress(derr.NotFound):
                api.remove_container(cid, force=True)
            raise BackendUnavailable("the hub is stopping; storage was not measured")
        try:
            api.start(cid)
            try:
                api.wait(cid, timeout=max(1, round(self._timeout)))
            except requests.exceptions.ReadTimeout:
                raise BackendUnavailable(
                    f"measuring {len(names)} volumes took longer than {self._timeout:.0f} s"
                ) from None
            output = api.logs(cid, stdout=True, stderr=False).decode(errors="replace")
            errors = api.logs(cid, stdout=False, stderr=True).decode(errors="replace").strip()
        except derr.NotFound:
            raise BackendUnavailable("the storage helper was removed before it finished") from None
        finally:
            with self._lock:
                self._running.discard(cid)
            with contextlib.suppress(derr.NotFound):
                api.remove_container(cid, force=True)
        sizes = parse_du(output, paths)
        if errors:
            # du goes on after an unreadable file and reports the rest; say so once.
            log.warning("du reported: %s", errors.splitlines()[-1][:200])
        if not sizes and names:
            raise BackendUnavailable(f"the storage helper reported nothing: {errors[-200:]}")
        return sizes
