"""A whole hub on the fake backend (``backend.kind = "fake"``): the wiring, its services
and the web API, with no Docker engine at all (DOCKER_HOST points at nothing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.app import build_hub
from hub.backends.fake import FakeBackend
from hub.config import BackendSettings, CapacitySettings, DbSettings, HubSettings, Settings
from tests.conftest import listening
from tests.test_servers_api import busybox_env, user_api


@pytest.fixture
def fake_settings(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent")
    yield Settings(
        hub=HubSettings(
            data_dir=tmp_path / "data", cookie_secret="test-" + "x" * 40, id="tfakehub"
        ),
        db=DbSettings(url=db_url),
        backend=BackendSettings(kind="fake", labels="labdock.test=1", stop_grace=0.1),
        capacity=CapacitySettings(cpus=8, memory=8 * 1024**3, gpus=""),
    )


async def test_a_fake_backend_hub_starts_its_services_in_order_and_closes_them_all(
    fake_settings: Settings,
) -> None:
    async with build_hub(fake_settings) as built:
        assert isinstance(built.backend, FakeBackend)
        assert built.firewall is None
        # No host firewall and no OOM counters: those belong to a local Docker engine.
        assert built.services.running == [
            "database",
            "engine-calls",
            "catalog-seed",
            "backend",
            "workspaces",
            "engine-events",
            "storage-meter",
            "activity",
            "runtime-volumes",
            "web",
        ]
        services = built.services
    assert services.running == []


async def test_a_fake_backend_hub_answers_health_and_launches_and_stops_a_server(
    fake_settings: Settings,
) -> None:
    async with build_hub(fake_settings) as built, listening(built) as running:
        health = await running.fetch("/hub/health")
        assert health.code == 200 and json.loads(health.body) == {"db": "ok", "backend": "ok"}
        await built.deps.catalog.add(busybox_env("example/app:1"))  # type: ignore[attr-defined]
        alice = await user_api(running, "alice")
        launched = await alice.call("POST", "/users/alice/server", {"environment": "busybox"})
        assert launched.code == 201, launched.body
        assert json.loads(launched.body)["state"] == "running"
        backend = built.backend
        assert isinstance(backend, FakeBackend)
        stats = await alice.call("GET", "/users/alice/server/stats")
        assert stats.code == 503, stats.body  # the fake engine reads no live statistics
        assert "no live statistics" in json.loads(stats.body)["message"]
        stopped = await alice.call("DELETE", "/users/alice/server")
        assert stopped.code in (202, 204), stopped.body
        assert [call for call, _ in backend.calls] == ["start", "stop"]
