"""Shared fixtures: a real database per test (SQLite, or PostgreSQL when
``LABDOCK_TEST_DB_URL`` names a server), and a real hub on a free port.

    async def test_something(hub_server):
        response = await hub_server.fetch("/hub/health")
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest
import pytest_asyncio
import tornado.httpclient
import tornado.httpserver
import tornado.testing
from sqlalchemy.engine import make_url

from hub.app import Hub, build_hub
from hub.config import BackendSettings, CapacitySettings, DbSettings, HubSettings, Settings

PG_ENV = "LABDOCK_TEST_DB_URL"


def _pg_admin_dsn(url: str) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


@contextlib.contextmanager
def fresh_database(folder: Path) -> Iterator[str]:
    """A fresh, empty database: SQLite in ``folder``, or PostgreSQL when ``LABDOCK_TEST_DB_URL``
    names a server (a database of its own there, dropped at the end)."""
    server = os.environ.get(PG_ENV)
    if not server:
        yield f"sqlite:///{folder / 'labdock.sqlite'}"
        return
    name = "labdock_t_" + secrets.token_hex(6)
    admin = _pg_admin_dsn(server)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on the engine under test."""
    with fresh_database(tmp_path) as url:
        yield url


def clean_engine(client: docker.DockerClient, hub_id: str) -> None:
    """Remove every container, volume and network a test hub left on the engine."""
    label = {"label": [f"labdock.hub={hub_id}", "labdock.test=1"]}
    # sparse: no inspect per container, which fails on one the hub removes meanwhile.
    for container in client.containers.list(all=True, filters=label, sparse=True):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=False)
    for volume in client.volumes.list(filters=label):
        with contextlib.suppress(docker.errors.NotFound):
            volume.remove(force=True)
    for network in client.networks.list(filters=label):
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()
    # Tags that keep the images of the test hub's catalog versions (hub.images.store.pin_tag).
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(f"labdock/{hub_id}/"):
                client.images.remove(tag)


# Every hub id handed out in this session, for the sweep at its end.
SESSION_HUBS: set[str] = set()


@pytest.fixture
def hub_id() -> str:
    made = "t" + secrets.token_hex(5)
    SESSION_HUBS.add(made)
    return made


def sweep_session_hubs(client: docker.DockerClient) -> None:
    """Remove anything a hub of this session left on the engine (each test cleans its
    own; this catches what a late engine call created after that), and say so, so
    that a leak is seen rather than silently absorbed."""
    leftovers = []
    test = {"label": ["labdock.test=1"]}
    kinds: list[tuple[str, Any, Any]] = [
        # sparse: no inspect per container, which fails for one removed meanwhile
        # (by its own hub, or by another session sharing the engine).
        ("container", client.containers.list(all=True, filters=test, sparse=True),
         lambda c: c.remove(force=True)),
        ("volume", client.volumes.list(filters=test), lambda v: v.remove(force=True)),
        ("network", client.networks.list(filters=test), lambda n: n.remove()),
    ]
    for kind, found, remove in kinds:
        for thing in found:
            labels = thing.attrs.get("Labels") or thing.attrs.get("Config", {}).get("Labels") or {}
            if labels.get("labdock.hub") in SESSION_HUBS:
                leftovers.append(f"{kind} {thing.name}")
                with contextlib.suppress(docker.errors.APIError):
                    remove(thing)
    if leftovers:
        print(f"\nswept {len(leftovers)} leftovers of this session: {', '.join(leftovers)}")


@pytest.fixture
def settings(
    tmp_path: Path, db_url: str, hub_id: str, docker_client: docker.DockerClient
) -> Iterator[Settings]:
    """Settings of a test hub: its own id, database and data folder, and the test label."""
    yield Settings(
        hub=HubSettings(data_dir=tmp_path / "data", cookie_secret="test-" + "x" * 40, id=hub_id),
        db=DbSettings(url=db_url),
        # Runtime volumes copy whole environments: tests/test_runtime_volumes.py and the
        # environment tests turn them on, and wait for the copies before they end.
        backend=BackendSettings(labels="labdock.test=1", stop_grace=2.0, runtime_volumes="off"),
        capacity=CapacitySettings(gpus=""),
    )
    clean_engine(docker_client, hub_id)


@dataclass
class RunningHub:
    """A hub listening on a free port, with a client that keeps no cookies of its own."""

    hub: Hub
    url: str

    async def fetch(self, path: str, **kwargs: Any) -> tornado.httpclient.HTTPResponse:
        kwargs.setdefault("follow_redirects", False)
        kwargs.setdefault("raise_error", False)
        client = tornado.httpclient.AsyncHTTPClient()
        return await client.fetch(self.url + path, **kwargs)


@contextlib.asynccontextmanager
async def listening(built: Hub) -> AsyncIterator[RunningHub]:
    """Serve a built hub's app on a free loopback port for the length of the block."""
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(built.app)
    server.add_sockets([sock])
    try:
        yield RunningHub(hub=built, url=f"http://127.0.0.1:{port}")
    finally:
        server.stop()
        await server.close_all_connections()


@pytest_asyncio.fixture
async def hub_server(settings: Settings) -> AsyncIterator[RunningHub]:
    async with build_hub(settings) as built, listening(built) as running:
        yield running


@pytest.fixture
def with_settings(settings: Settings) -> Any:
    """Change one section of the test settings: ``with_settings(hub={'admin_user': 'root'})``."""

    def make(**sections: dict[str, Any]) -> Settings:
        changed = {
            name: replace(getattr(settings, name), **values) for name, values in sections.items()
        }
        return replace(settings, **changed)

    return make


# Fixtures that reach the real engine; a test using any of them (directly or through
# another fixture) is marked ``docker``, so that `pytest -m "not docker"` runs without one.
ENGINE_FIXTURES = frozenset({"docker_client"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the real engine with ``docker``."""
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The real engine. A test that needs it fails (never skips) when it is missing.

    Made on first use only, so that a session of tests that need no engine never
    asks for one; the sweep of this session's leftovers runs at its end, only then.
    """
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # the SDK raises several kinds for "no engine here"
        pytest.fail(
            f"this test needs the Docker engine, which cannot be reached ({exc}); start it, "
            "or run only the tests that need none: pytest -m 'not docker'",
            pytrace=False,
        )
    yield client
    sweep_session_hubs(client)
    client.close()
