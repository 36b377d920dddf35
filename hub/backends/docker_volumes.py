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
from collections.abc import Mapping

import docker
import docker.errors as derr

from hub.backends.docker_config import HUB_LABEL, run_as, team_volume_labels, volume_labels
from hub.backends.docker_names import home_volume_name, team_volume_name
from hub.backends.engine_calls import REFUSALS, EngineCalls, reason
from hub.domain.errors import BackendUnavailable, Conflict, EngineRefused, LaunchFailed, NotFound
from hub.domain.servers import Mount, ServerSpec


class HubVolumes:
    """Creates, remembers and removes the hub's named volumes, off the event loop."""

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        hub_id: str,
        call: EngineCalls,
        extra_labels: Mapping[str, str],
    ) -> None:
        self._client = client
        self._hub_id = hub_id
        self._call = call
        self._extra_labels = dict(extra_labels)
        self._known: set[str] = set()

    async def ensure_home(self, spec: ServerSpec) -> None:
        """The user's home volume exists, labelled with the hub and the user."""
        name = home_volume_name(spec.hub_id, spec.user_id)
        if name in self._known:
            return
        labels = volume_labels(spec, self._extra_labels)

        def ensure() -> None:
            try:
                self._client.volumes.get(name)
            except derr.NotFound:
                # Creating an existing local volume is a no-op, so a race is harmless.
                self._client.volumes.create(name, driver="local", labels=labels)

        try:
            await self._call(ensure)
        except REFUSALS as exc:
            raise LaunchFailed(f"could not create the home volume: {reason(exc)}") from exc
        self._known.add(name)

    async def ensure_mounts(self, spec: ServerSpec, image_user: str) -> None:
        """Create missing team volumes, labelled, and owned by the server's user."""

        def ensure(mount: Mount, name: str) -> None:
            try:
                self._client.volumes.get(name)
                return
            except derr.NotFound:
                pass
            labels = team_volume_labels(self._hub_id, mount, self._extra_labels)
            self._client.volumes.create(name, driver="local", labels=labels)
            # A fresh volume is root's; the server runs without CAP_CHOWN, so a
            # one-shot container of the same image (no network) hands it over.
            self._client.containers.run(
                spec.image,
                command=["chown", run_as(image_user), "/volume"],
                entrypoint=[],
                user="0",
                network_mode="none",
                volumes={name: {"bind": "/volume", "mode": "rw"}},
                labels={**self._extra_labels, HUB_LABEL: self._hub_id},
                remove=True,
            )

        for mount in spec.mounts:
            name = team_volume_name(self._hub_id, mount.team_id)
            if name in self._known:
                continue
            try:
                await self._call(ensure, mount, name)
            except REFUSALS as exc:
                raise LaunchFailed(f"could not prepare volume {name}: {reason(exc)}") from exc
            self._known.add(name)

    async def remove_home(self, user_id: int) -> None:
        """Delete a user's home volume (an explicit admin action). Missing is fine."""
        name = home_volume_name(self._hub_id, user_id)
        self._known.discard(name)

        def remove() -> None:
            with contextlib.suppress(derr.NotFound):
                self._client.volumes.get(name).remove()

        try:
            await self._call(remove)
        except Conflict as exc:
            raise Conflict(
                f"the home volume of user {user_id} is still used by a container; "
                "stop and remove that user's servers first"
            ) from exc
        except (NotFound, EngineRefused) as exc:
            raise BackendUnavailable(f"could not remove volume {name}: {reason(exc)}") from exc
