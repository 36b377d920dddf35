"""Wiring: the one place that builds engines, repositories, services and handlers.

    settings = load_settings(...)
    asyncio.run(serve(settings))          # what `labdock serve` does

Nothing else in labdock constructs a collaborator; everything is handed down.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import tornado.web
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import hub
from hub.backends.docker import DockerBackend
from hub.capacity import host_capacity
from hub.config import Settings
from hub.db.accounts import SqlAccountRepo
from hub.db.audit import SqlAuditLog
from hub.db.engine import make_engine
from hub.db.environments import SqlCatalog
from hub.db.meta import hub_identity
from hub.db.migrate import upgrade
from hub.db.quotas import SqlQuotaRepo
from hub.db.servers import SqlServerRepo
from hub.db.teams import SqlTeamRepo
from hub.domain.accounts import Accounts
from hub.domain.activity import ActivityTracker
from hub.domain.clock import SystemClock
from hub.domain.errors import ConfigError, LabdockError
from hub.domain.quotas import Limits
from hub.domain.routes import RouteTable
from hub.domain.throttle import LoginThrottle
from hub.domain.workspaces import Policy, Workspaces
from hub.images.build import latest_tag
from hub.images.manifest import EnvironmentManifest, images_dir, load_all
from hub.passwords import Argon2Hasher
from hub.web import admin_api, api, pages, servers_api
from hub.web.deps import WebDeps
from hub.web.proxy import proxy_routes
from hub.web.proxy_upstream import UpstreamPool

log = logging.getLogger(__name__)


def resource_dir(name: str) -> Path:
    """``templates`` or ``static``: inside the wheel, or beside ``hub/`` in a checkout."""
    package = Path(hub.__file__).parent
    for candidate in (package / f"_{name}", package.parent / name):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"labdock is installed without its {name}/ folder")


def cookie_secret(settings: Settings) -> bytes:
    """The configured secret, or one generated once and kept with mode 0600."""
    if settings.hub.cookie_secret:
        return settings.hub.cookie_secret.encode()
    path = settings.hub.data_dir / "cookie_secret"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(value)
    return value


# Used only when the engine is down at start, so that the hub still starts and
# reports the engine as down; 1.41 is Docker 20.10's API, the oldest we support.
FALLBACK_API_VERSION = "1.41"


def docker_client(settings: Settings) -> docker.DockerClient:
    """A client for the configured engine; never fails because the engine is down."""
    base_url = settings.backend.docker_host or None
    try:
        if base_url:
            return docker.DockerClient(base_url=base_url, version="auto")
        return docker.DockerClient.from_env(version="auto")
    except docker.errors.DockerException:
        if base_url:
            return docker.DockerClient(base_url=base_url, version=FALLBACK_API_VERSION)
        return docker.DockerClient.from_env(version=FALLBACK_API_VERSION)


# Path segments for user and server names; the handlers validate them fully.
NAME = r"[^/]+"


def make_routes(
    deps: WebDeps,
) -> list[tuple[str, type[tornado.web.RequestHandler], dict[str, object]]]:
    """The URL map of the hub."""
    d: dict[str, object] = {"deps": deps}
    return [
        (r"/", pages.RootHandler, d),
        (r"/hub/?", pages.RootHandler, d),
        (r"/hub/login", pages.LoginHandler, d),
        (r"/hub/logout", pages.LogoutHandler, d),
        (r"/hub/password", pages.PasswordHandler, d),
        (r"/hub/home", pages.HomeHandler, d),
        (r"/hub/health", api.HealthHandler, d),
        (r"/hub/api/?", api.VersionHandler, d),
        (r"/hub/api/users", servers_api.UsersHandler, d),
        (rf"/hub/api/users/({NAME})", admin_api.UserHandler, d),
        (rf"/hub/api/users/({NAME})/server", servers_api.ServerHandler, d),
        (rf"/hub/api/users/({NAME})/server/progress", servers_api.ProgressHandler, d),
        (rf"/hub/api/users/({NAME})/server/restart", servers_api.RestartHandler, d),
        (rf"/hub/api/users/({NAME})/servers/({NAME})", servers_api.ServerHandler, d),
        (rf"/hub/api/users/({NAME})/servers/({NAME})/progress", servers_api.ProgressHandler, d),
        (rf"/hub/api/users/({NAME})/servers/({NAME})/restart", servers_api.RestartHandler, d),
        (r"/hub/api/environments", servers_api.EnvironmentsHandler, d),
        (r"/hub/api/quotas", admin_api.QuotasHandler, d),
        (rf"/hub/api/quotas/(users|teams)/({NAME})", admin_api.QuotaHandler, d),
    ]


def make_app(
    deps: WebDeps, secret: bytes, extra: list[Any] | None = None
) -> tornado.web.Application:
    """A tornado application over the given collaborators (plus ``extra`` routes)."""
    return tornado.web.Application(
        make_routes(deps) + list(extra or []),
        cookie_secret=secret,
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": False, "samesite": "Strict", "secure": deps.secure_cookies},
        static_path=str(deps.static_dir),
        static_url_prefix="/hub/static/",
        default_handler_class=pages.NotFoundHandler,
        default_handler_args={"deps": deps},
        compress_response=True,
    )


@dataclass
class Hub:
    """A wired hub: its app plus what must be closed when it stops."""

    app: tornado.web.Application
    deps: WebDeps
    engine: AsyncEngine
    executor: ThreadPoolExecutor
    docker_client: docker.DockerClient
    hub_id: str
    admin_password: str | None
    routes: RouteTable
    workspaces: Workspaces

    async def close(self) -> None:
        await self.engine.dispose()
        self.docker_client.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


def templates() -> Environment:
    """The jinja2 environment over ``templates/``, autoescaping HTML."""
    return Environment(
        loader=FileSystemLoader(str(resource_dir("templates"))),
        autoescape=select_autoescape(["html"]),
        enable_async=False,
    )


@contextlib.asynccontextmanager
async def build_hub(settings: Settings) -> AsyncIterator[Hub]:
    """Migrate, then build every collaborator; close them all on exit."""
    await asyncio.get_running_loop().run_in_executor(None, upgrade, settings.db_url)
    engine = make_engine(settings.db_url, echo=settings.db.echo)
    sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(engine, expire_on_commit=False)
    executor = ThreadPoolExecutor(max_workers=settings.backend.threads, thread_name_prefix="engine")
    client = docker_client(settings)
    accounts = Accounts(SqlAccountRepo(sessions), Argon2Hasher(), SystemClock())
    hub_id = settings.hub.id or await hub_identity(sessions)
    admin_password = await accounts.ensure_admin(settings.hub.admin_user)
    backend = DockerBackend(client, hub_id=hub_id, executor=executor, extra_labels=settings.labels)
    catalog = SqlCatalog(sessions)
    await seed_catalog(catalog, client, executor)
    servers = SqlServerRepo(sessions)
    routes = RouteTable()
    capacity, gpus = host_capacity(settings.capacity)
    quota = settings.quota
    teams = SqlTeamRepo(sessions)
    audit = SqlAuditLog(sessions)
    workspaces = Workspaces(
        repo=servers,
        teams=teams,
        audit=audit,
        backend=backend,
        routes=routes,
        catalog=catalog,
        clock=SystemClock(),
        policy=Policy(
            hub_id=hub_id,
            default_quota=Limits(
                cpus=quota.cpus, memory=quota.memory, gpus=quota.gpus, servers=quota.servers
            ),
            host_capacity=capacity,
            gpu_inventory=gpus,
            max_concurrent_launches=settings.hub.max_concurrent_launches,
            launch_timeout=settings.hub.launch_timeout,
            stop_grace=settings.backend.stop_grace,
            labels=settings.labels,
        ),
    )

    async def check_db() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    deps = WebDeps(
        settings=settings,
        accounts=accounts,
        templates=templates(),
        static_dir=resource_dir("static"),
        check_db=check_db,
        check_backend=backend.ping,
        workspaces=workspaces,
        servers=servers,
        catalog=catalog,
        teams=teams,
        throttle=LoginThrottle(SystemClock()),
        quotas=SqlQuotaRepo(sessions),
        audit=audit,
    )
    await workspaces.reconcile()
    watcher = asyncio.create_task(watch_engine(workspaces, backend), name="engine-events")
    built = Hub(
        app=make_app(
            deps,
            cookie_secret(settings),
            proxy_routes(deps, routes, ActivityTracker(), upstream=UpstreamPool()),
        ),
        deps=deps,
        engine=engine,
        executor=executor,
        docker_client=client,
        hub_id=hub_id,
        admin_password=admin_password,
        routes=routes,
        workspaces=workspaces,
    )
    try:
        yield built
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await workspaces.close()
        await built.close()


async def watch_engine(workspaces: Workspaces, backend: DockerBackend) -> None:
    """Follow the engine's events for ever; after a break, re-list and follow again."""
    delay = 1.0
    while True:
        try:
            await workspaces.follow_engine(backend.events())
            delay = 1.0
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("engine event stream broke (%s); retrying in %.0f s", exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)
        with contextlib.suppress(Exception):
            await workspaces.reconcile()


async def seed_catalog(
    catalog: SqlCatalog, client: docker.DockerClient, executor: Executor
) -> None:
    """Put every environment whose image is built into the catalog, pinned by image id."""

    def find() -> dict[str, tuple[EnvironmentManifest, str]]:
        found: dict[str, tuple[EnvironmentManifest, str]] = {}
        try:
            manifests = load_all(images_dir())
        except LabdockError as exc:
            log.warning("environment manifests unreadable: %s", exc.message)
            return found
        for name, manifest in manifests.items():
            try:
                tag = latest_tag(client, name)
                if tag is not None:
                    found[name] = (manifest, str(client.images.get(tag).id))
            except Exception as exc:  # engine down or image gone: the catalog keeps its rows
                log.warning("cannot look up the image of %s: %s", name, exc)
        return found

    built = await asyncio.get_running_loop().run_in_executor(executor, find)
    if built:
        await catalog.seed(built)


def announce_admin(name: str, password: str) -> None:
    """Print the first admin's one-time password, once, where a person will see it."""
    line = "=" * 64
    print(
        f"\n{line}\n  labdock created the first admin account.\n"
        f"    username: {name}\n    password: {password}\n"
        "  This is shown only once. You will choose a new password at first login.\n"
        f"{line}\n",
        flush=True,
    )


async def serve(settings: Settings) -> None:
    """Run the hub until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with build_hub(settings) as built:
        if built.admin_password:
            announce_admin(settings.hub.admin_user, built.admin_password)
        try:
            server = built.app.listen(settings.hub.port, address=settings.hub.ip, xheaders=False)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"hub.port: {settings.hub.ip}:{settings.hub.port} is already in use"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(
                    f"hub.ip: {settings.hub.ip} is not an address of this machine"
                ) from None
            raise
        print(
            f"labdock {hub.__version__} serving on http://{settings.hub.ip}:{settings.hub.port}/",
            flush=True,
        )
        await stop.wait()
        print("labdock: shutting down", file=sys.stderr, flush=True)
        server.stop()
        await server.close_all_connections()
