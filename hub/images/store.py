"""The engine's images as the catalog sees them; implements ``hub.domain.catalog.ImageStore``.

    images = EngineImages(docker.from_env(), executor, hub_id="h3f9a2c1")
    digest = await images.resolve("myorg/rstudio:4.3")      # "sha256:..." or None
    tag = await images.pin("rstudio", "4.3", digest)         # "labdock/h3f9a2c1/rstudio:4.3"
    await images.built("python")          # BuiltImage(tag="labdock/python:5be0...", digest=...)

Nothing is ever pulled: an environment can only be made from an image that is
already on the engine. Each version an admin adds is kept tagged, because an
untagged image is what ``docker image prune`` removes. The tag names the hub, as
container and volume names do, so that hubs sharing an engine keep their own pins
(and versions seeded from ``labdock images build`` are kept by their build tags).
"""

from __future__ import annotations

import re
from concurrent.futures import Executor

import docker
import docker.errors

from hub.backends.engine_calls import EngineCalls
from hub.domain.catalog import BuiltImage
from hub.domain.errors import Conflict, InvalidInput
from hub.images.build import latest_tag

# Docker's reference grammar, loosely: [host[:port]/]path[:tag][@digest], or a bare image id.
_REFERENCE = re.compile(
    r"^(sha256:[0-9a-f]{12,64}"
    r"|[a-z0-9][a-z0-9._-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)*(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?"
    r"(@sha256:[0-9a-f]{64})?)$"
)


def check_reference(reference: object) -> str:
    """An image reference as Docker writes it; refused before it reaches the engine."""
    if not isinstance(reference, str) or len(reference) > 255 or not _REFERENCE.match(reference):
        raise InvalidInput(
            "image: expected an image on the engine, like 'myorg/rstudio:4.3' or 'sha256:<id>'"
        )
    return reference


def pin_tag(hub_id: str, environment: str, label: str) -> str:
    """The tag that keeps one version's image: ``labdock/<hub id>/<environment>:<label>``."""
    return f"labdock/{hub_id}/{environment}:{label}"


class EngineImages:
    """Looks images up and tags them, off the event loop."""

    def __init__(self, client: docker.DockerClient, executor: Executor, *, hub_id: str) -> None:
        self._client = client
        self._call = EngineCalls(client, executor)
        self._hub_id = hub_id

    async def resolve(self, reference: str) -> str | None:
        check_reference(reference)

        def look() -> str | None:
            try:
                return str(self._client.images.get(reference).id)
            except docker.errors.ImageNotFound:
                return None

        return await self._call(look)

    async def built(self, environment: str) -> BuiltImage | None:
        def look() -> BuiltImage | None:
            tag = latest_tag(self._client, environment)
            if tag is None:
                return None
            return BuiltImage(tag, str(self._client.images.get(tag).id))

        return await self._call(look)

    async def pin(self, environment: str, label: str, digest: str) -> str:
        tag = pin_tag(self._hub_id, environment, label)

        def tag_it() -> None:
            try:
                existing = str(self._client.images.get(tag).id)
            except docker.errors.ImageNotFound:
                existing = ""
            if existing == digest:
                return
            if existing:
                raise Conflict(
                    f"the tag {tag} already names another image ({existing[:19]}); "
                    "choose another version label"
                )
            try:
                image = self._client.images.get(digest)
            except docker.errors.ImageNotFound:
                raise InvalidInput(f"image {digest} is no longer on the engine") from None
            repository, _, version = tag.rpartition(":")
            image.tag(repository, version)

        await self._call(tag_it)
        return tag
