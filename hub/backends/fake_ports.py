"""The engine's other ports in memory, beside ``FakeBackend``: statistics, storage, images.

    stats, volumes, images = FakeStats(), FakeVolumes(), FakeImages()
    await volumes.measure()                       # [] : nothing on a fake engine takes space
    images.add("labdock/python:3f2a", "sha256:" + "a" * 64)
    await images.resolve("labdock/python:3f2a")   # "sha256:aaaa..."

What a fake engine cannot tell is answered as "not available", as a real
engine that cannot be asked would answer: live statistics raise
``BackendUnavailable``. Images live in a dict; nothing is ever built, so the
catalog is seeded with nothing.
"""

from __future__ import annotations

from hub.domain.catalog import BuiltImage
from hub.domain.errors import BackendUnavailable, Conflict, InvalidInput
from hub.domain.stats import LiveUsage
from hub.domain.storage import VolumeUse


class FakeStats:
    """``StatsReader`` of a fake engine: live statistics are not available."""

    async def read(self, container_id: str) -> LiveUsage:
        raise BackendUnavailable("the fake engine reports no live statistics")


class FakeVolumes:
    """``VolumeMeter`` of a fake engine: its volumes hold nothing."""

    async def measure(self) -> list[VolumeUse]:
        return []

    async def close(self) -> None:
        return None


class FakeImages:
    """``ImageStore`` over a dict of references to digests; ``add`` puts an image there."""

    def __init__(self, hub_id: str = "fake") -> None:
        self._hub_id = hub_id
        self._digests: dict[str, str] = {}
        self._built: dict[str, BuiltImage] = {}

    def add(self, reference: str, digest: str, *, built_for: str = "") -> None:
        """An image on the fake engine; ``built_for``: as ``labdock images build`` made it."""
        self._digests[reference] = self._digests[digest] = digest
        if built_for:
            self._built[built_for] = BuiltImage(reference, digest)

    async def built(self, environment: str) -> BuiltImage | None:
        return self._built.get(environment)

    async def resolve(self, reference: str) -> str | None:
        return self._digests.get(reference)

    async def pin(self, environment: str, label: str, digest: str) -> str:
        tag = f"labdock/{self._hub_id}/{environment}:{label}"
        existing = self._digests.get(tag)
        if existing is not None and existing != digest:
            raise Conflict(f"the tag {tag} already names another image; choose another label")
        if digest not in self._digests:
            raise InvalidInput(f"image {digest} is no longer on the engine")
        self._digests[tag] = digest
        return tag
