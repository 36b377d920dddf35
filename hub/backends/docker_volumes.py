"""The named volumes of one hub: users' homes and shared (team) volumes.

    volumes = HubVolumes(client, hub_id="h1", call=backend_call, extra_labels={})
    await volumes.ensure_home(spec)                   # labelled, created once
    await volumes.ensure_mounts(spec, image_user="")  # team volumes, handed to the server's user
    await volumes.remove_home(user_id=7)              # an explicit admin action

A volume this process made or found is remembered, so a launch asks the engine
about it only the first time; a volume removed through ``remove_home`` is
forgotten. (One removed behind the hub's back would be re-created by the engine
when a container mounts it, without labels: remove volumes through the hub.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import docker
import docker.errors as derr

from hub.backends.docker_config import HUB_LABEL, run_as, volume_labels
from hub.domain.errors import BackendUnavailable, Conflict, LaunchFailed
from hub.domain.servers import Mount, ServerSpec, home_volume_name

Call = Callable[..., Awaitable[Any]]


def _explain(exc: derr.APIError) -> str:
    return str(exc.explanation or exc)


class HubVolumes:
    """Creates, remembers and removes the hub's named volumes, off the event loop."""

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        hub_id: str,
        call: Call,
        extra_labels: Mapping[str, str],
    ) -> None:
        self._client = client
        self._hub_id = hub_id
        self._call = call
        self._extra_labels = dict(extra_labels)
        self._known: set[str] = set()

    async def ensure_home(self, spec: ServerSpec) -> None:
        """The user's home volume exists, labelled with the hub and the user."""
        if spec.home_volume in self._known:
            return
        labels = volume_labels(spec, self._extra_labels)

        def ensure() -> None:
            try:
                self._client.volumes.get(spec.home_volume)
            except derr.NotFound:
                # Creating an existing local volume is a no-op, so a race is harmless.
                self._client.volumes.create(spec.home_volume, driver="local", labels=labels)

        try:
            await self._call(ensure)
        except derr.APIError as exc:
            raise LaunchFailed(f"could not create the home volume: {_explain(exc)}") from exc
        self._known.add(spec.home_volume)

    async def ensure_mounts(self, spec: ServerSpec, image_user: str) -> None:
        """Create missing mounted volumes, labelled, and owned by the server's user."""

        def ensure(mount: Mount) -> None:
            try:
                self._client.volumes.get(mount.volume)
                return
            except derr.NotFound:
                pass
            labels = {**mount.labels, **self._extra_labels, HUB_LABEL: self._hub_id}
            self._client.volumes.create(mount.volume, driver="local", labels=labels)
            # A fresh volume is root's; the server runs without CAP_CHOWN, so a
            # one-shot container of the same image (no network) hands it over.
            self._client.containers.run(
                spec.image,
                command=["chown", run_as(image_user), "/volume"],
                entrypoint=[],
                user="0",
                network_mode="none",
                volumes={mount.volume: {"bind": "/volume", "mode": "rw"}},
                labels={**self._extra_labels, HUB_LABEL: self._hub_id},
                remove=True,
            )

        for mount in spec.mounts:
            if mount.volume in self._known:
                continue
            try:
                await self._call(ensure, mount)
            except derr.DockerException as exc:
                raise LaunchFailed(f"could not prepare volume {mount.volume}: {exc}") from exc
            self._known.add(mount.volume)

    async def remove_home(self, user_id: int) -> None:
        """Delete a user's home volume (an explicit admin action). Missing is fine."""
        name = home_volume_name(self._hub_id, user_id)
        self._known.discard(name)

        def remove() -> None:
            with contextlib.suppress(derr.NotFound):
                self._client.volumes.get(name).remove()

        try:
            await self._call(remove)
        except derr.APIError as exc:
            if exc.status_code == 409:
                raise Conflict(
                    f"the home volume of user {user_id} is still used by a container; "
                    "stop and remove that user's servers first"
                ) from exc
            raise BackendUnavailable(f"could not remove volume {name}: {_explain(exc)}") from exc
