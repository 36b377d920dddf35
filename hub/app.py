"""Wiring: the one place that builds engines, repositories, services and handlers.

    settings = load_settings(...)
    asyncio.run(serve(settings))          # what `labdock serve` does

Nothing else in labdock constructs a collaborator; everything is handed down.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import tornado.httpserver
import tornado.netutil
import tornado.web
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import hub
from hub.backends.docker import DockerBackend
from hub.backends.docker_events import CGROUP_ROOT, OomCounters, oom_counter_events
from hub.backends.docker_network import bridge_name
from hub.backends.docker_stats import DockerStats
from hub.backends.docker_storage import DockerVolumeMeter
from hub.backends.firewall import HostFirewall
from hub.capacity import host_capacity
from hub.config import Settings
from hub.db.accounts import SqlAccountRepo
from hub.db.audit import SqlAuditLog
from hub.db.engine import make_engine
from hub.db.environments import SeedImage, SqlCatalog
from hub.db.meta import hub_identity
from hub.db.migrate import upgrade
from hub.db.oidc import SqlIdentityRepo
from hub.db.quotas import SqlQuotaRepo
from hub.db.servers import SqlServerRepo
from hub.db.teams import SqlTeamRepo
from hub.domain.accounts import Accounts
from hub.domain.activity import ActivityTracker, flush_forever
from hub.domain.catalog_admin import CatalogAdmin
from hub.domain.clock import SystemClock
from hub.domain.errors import ConfigError, LabdockError
from hub.domain.launch_limits import LaunchLimits
from hub.domain.oidc import OidcIdentities
from hub.domain.quota_admin import QuotaAdmin, QuotaAmounts
from hub.domain.quotas import Limits
from hub.domain.routes import Route, RouteTable
from hub.domain.storage import StorageMeter, StorageQuota
from hub.domain.throttle import LoginThrottle
from hub.domain.workspaces import Policy, Workspaces
from hub.images.build import latest_tag
from hub.images.manifest import images_dir, load_all
from hub.images.store import EngineImages
from hub.passwords import Argon2Hasher
from hub.proxy.fast import FrontProxy
from hub.proxy.upstream import UpstreamPool
from hub.proxy.user_hosts import UserHosts
from hub.web import (
    admin_api,
    admin_pages,
    api,
    catalog_api,
    limits_api,
    oidc,
    openapi,
    pages,
    servers_api,
    stats_api,
    storage_api,
    tokens_api,
    ui,
)
from hub.web.deps import WebDeps
from hub.web.metrics import HubMetrics, MetricsHandler
from hub.web.oidc_login import OidcLogin
from hub.web.proxy import front_proxy, proxy_routes
from hub.web.user_host_pages import hub_host_routes, user_host_rules

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
    # A connection per executor thread, plus the two event streams: none is thrown away.
    pool = settings.backend.threads + 2
    try:
        if base_url:
            return docker.DockerClient(base_url=base_url, version="auto", max_pool_size=pool)
        return docker.DockerClient.from_env(version="auto", max_pool_size=pool)
    except docker.errors.DockerException:
        if base_url:
            return docker.DockerClient(
                base_url=base_url, version=FALLBACK_API_VERSION, max_pool_size=pool
            )
        return docker.DockerClient.from_env(version=FALLBACK_API_VERSION, max_pool_size=pool)


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
        (r"/hub/oauth_login", oidc.OidcLoginHandler, d),
        (r"/hub/oauth_callback", oidc.OidcCallbackHandler, d),
        (r"/hub/password", pages.PasswordHandler, d),
        (r"/hub/home", ui.HomeHandler, d),
        (r"/hub/launch", ui.LaunchHandler, d),
        (r"/hub/progress/([^/]*)", ui.ProgressPageHandler, d),
        (r"/hub/health", api.HealthHandler, d),
        (r"/hub/api/?", api.VersionHandler, d),
        (r"/hub/api/openapi.json", openapi.OpenApiHandler, d),
        (r"/hub/api/users", servers_api.UsersHandler, d),
        (rf"/hub/api/users/({NAME})", admin_api.UserHandler, d),
        (rf"/hub/api/users/({NAME})/server", servers_api.ServerHandler, d),
        (rf"/hub/api/users/({NAME})/server/progress", servers_api.ProgressHandler, d),
        (rf"/hub/api/users/({NAME})/server/restart", servers_api.RestartHandler, d),
        (rf"/hub/api/users/({NAME})/servers/({NAME})", servers_api.ServerHandler, d),
        (rf"/hub/api/users/({NAME})/servers/({NAME})/progress", servers_api.ProgressHandler, d),
        (rf"/hub/api/users/({NAME})/servers/({NAME})/restart", servers_api.RestartHandler, d),
        (r"/hub/api/environments", catalog_api.EnvironmentsHandler, d),
        (rf"/hub/api/environments/({NAME})", catalog_api.EnvironmentHandler, d),
        (rf"/hub/api/environments/({NAME})/versions", catalog_api.VersionsHandler, d),
        (rf"/hub/api/users/({NAME})/storage", storage_api.StorageHandler, d),
        (rf"/hub/api/users/({NAME})/oidc", oidc.OidcLinkHandler, d),
        (rf"/hub/api/users/({NAME})/limits", limits_api.LimitsHandler, d),
        (rf"/hub/api/users/({NAME})/tokens", tokens_api.TokensHandler, d),
        (rf"/hub/api/users/({NAME})/tokens/({NAME})", tokens_api.TokenHandler, d),
        (rf"/hub/api/users/({NAME})/server/stats", stats_api.ServerStatsHandler, d),
        (rf"/hub/api/users/({NAME})/servers/({NAME})/stats", stats_api.ServerStatsHandler, d),
        (r"/hub/api/stats", stats_api.AllStatsHandler, d),
        (r"/hub/api/quotas", admin_api.QuotasHandler, d),
        (rf"/hub/api/quotas/(users|teams)/({NAME})", admin_api.QuotaHandler, d),
        *admin_pages.admin_routes(deps),
    ]


def make_app(
    deps: WebDeps,
    secret: bytes,
    extra: list[Any] | None = None,
    metrics: HubMetrics | None = None,
) -> tornado.web.Application:
    """A tornado application over the given collaborators (plus ``extra`` routes)."""
    metrics = metrics or HubMetrics(capacity=Limits())
    return tornado.web.Application(
        [
            (r"/hub/metrics", MetricsHandler, {"deps": deps, "metrics": metrics}),
            *make_routes(deps),
            *(extra or []),
        ],
        log_function=metrics.log_request,
        cookie_secret=secret,
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": False, "samesite": "Strict", "secure": deps.secure_cookies},
        static_path=str(deps.static_dir),
        static_url_prefix="/hub/static/",
        default_handler_class=pages.NotFoundHandler,
        default_handler_args={"deps": deps},
        compress_response=True,
    )


# How long closing the hub waits for engine calls already under way.
ENGINE_DRAIN_SECONDS = 30.0


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
    activity: ActivityTracker = field(default_factory=ActivityTracker)
    upstream: UpstreamPool | None = None
    # The public listener's fast path; the tornado app listens behind it on hub_socket.
    front: FrontProxy | None = None
    hub_socket: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    listeners: list[tornado.httpserver.HTTPServer] = field(default_factory=list)
    backend: DockerBackend | None = None
    firewall: HostFirewall | None = None

    async def listen(self, port: int, address: str) -> int:
        """Serve on ``address:port`` (0: a free port): the front there, tornado behind it."""
        assert self.front is not None and self.hub_socket
        if not self.listeners:
            # A private directory: only the front may reach the handlers, which
            # trust X-Real-Ip. Made here, so that a hub that never listens leaves none.
            Path(self.hub_socket).parent.mkdir(mode=0o700)
            sock = tornado.netutil.bind_unix_socket(self.hub_socket, mode=0o600)
            server = tornado.httpserver.HTTPServer(self.app, xheaders=True)
            server.add_socket(sock)
            self.listeners.append(server)
        return await self.front.listen(address, port)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.front is not None:
            await self.front.close()
        for server in self.listeners:
            server.stop()
            await server.close_all_connections()
        if self.upstream is not None:
            self.upstream.close()
        if self.listeners:
            shutil.rmtree(Path(self.hub_socket).parent, ignore_errors=True)
        await self.engine.dispose()
        # Engine calls already running (a container being created for a launch that was
        # just cancelled) finish first: whatever they leave behind is then on the engine
        # for the next start's reconcile, not created after the hub has gone.
        drain = functools.partial(self.executor.shutdown, wait=True, cancel_futures=True)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(None, drain), ENGINE_DRAIN_SECONDS
            )
        except TimeoutError:
            log.warning("engine calls still running after %.0f s", ENGINE_DRAIN_SECONDS)
        self.docker_client.close()


def templates() -> Environment:
    """The jinja2 environment over ``templates/``, autoescaping HTML."""
    return Environment(
        loader=FileSystemLoader(str(resource_dir("templates"))),
        autoescape=select_autoescape(["html"]),
        enable_async=False,
    )


def oidc_login(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], accounts: Accounts
) -> OidcLogin | None:
    """Sign-in through the configured OpenID Connect provider, or ``None`` when off."""
    if not settings.oidc.issuer:
        return None
    identities = OidcIdentities(SqlIdentityRepo(sessions), accounts, SystemClock())
    return OidcLogin(settings.oidc, identities)


@contextlib.asynccontextmanager
async def build_hub(settings: Settings) -> AsyncIterator[Hub]:
    """Migrate, then build every collaborator; close them all on exit."""
    await asyncio.get_running_loop().run_in_executor(None, upgrade, settings.db_url)
    engine = make_engine(settings.db_url, echo=settings.db.echo)
    sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(engine, expire_on_commit=False)
    executor = ThreadPoolExecutor(max_workers=settings.backend.threads, thread_name_prefix="engine")
    client = docker_client(settings)
    accounts = Accounts(
        SqlAccountRepo(sessions),
        Argon2Hasher(),
        SystemClock(),
        token_expiry_days=settings.hub.token_expiry_days,
    )
    hub_id = settings.hub.id or await hub_identity(sessions)
    admin_password = await accounts.ensure_admin(settings.hub.admin_user)
    backend = DockerBackend(
        client,
        hub_id=hub_id,
        executor=executor,
        extra_labels=settings.labels,
        runtime_volumes=settings.backend.runtime_volumes,
    )
    firewall = await guard_host(settings, hub_id, executor)
    catalog = SqlCatalog(sessions)
    await seed_catalog(catalog, client, executor)
    servers = SqlServerRepo(sessions)
    routes = RouteTable(admin_access=settings.hub.admin_access)
    capacity, gpus = host_capacity(settings.capacity)
    quota = settings.quota
    teams = SqlTeamRepo(sessions)
    audit = SqlAuditLog(sessions)
    volume_meter = DockerVolumeMeter(
        client,
        hub_id=hub_id,
        executor=executor,
        image=quota.storage_image,
        extra_labels=settings.labels,
    )
    meter = StorageMeter(volume_meter, clock=SystemClock())
    quotas = SqlQuotaRepo(sessions, storage=meter)
    storage = StorageQuota(meter, limits=quotas, default_limit=quota.storage)
    policy = Policy(
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
    )
    workspaces = Workspaces(
        repo=servers,
        teams=teams,
        audit=audit,
        storage=storage,
        backend=backend,
        routes=routes,
        catalog=catalog,
        clock=SystemClock(),
        policy=policy,
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
        quotas=quotas,
        quota_admin=QuotaAdmin(
            store=quotas,
            accounts=accounts,
            teams=teams,
            audit=audit,
            user_default=QuotaAmounts(
                cpus=quota.cpus,
                memory=quota.memory,
                gpus=quota.gpus,
                servers=quota.servers,
                storage=quota.storage,
            ),
        ),
        audit=audit,
        launch_limits=LaunchLimits(
            repo=servers, catalog=catalog, teams=teams, policy=policy, storage=storage
        ),
        storage=storage,
        oidc=oidc_login(settings, sessions, accounts),
        stats=DockerStats(client, executor),
        host_capacity=capacity,
        gpu_inventory=gpus,
        catalog_admin=CatalogAdmin(
            store=catalog,
            images=EngineImages(client, executor, hub_id=hub_id),
            teams=teams,
            audit=audit,
        ),
    )
    activity, upstream = ActivityTracker(every=30.0), UpstreamPool()
    secret = cookie_secret(settings)
    hub_socket = str(Path(tempfile.gettempdir()) / f"labdock-{secrets.token_hex(8)}" / "hub.sock")
    # Subdomain mode: users' servers on hosts of their own (None: under the hub's own host).
    hosts = UserHosts.from_settings(settings, secret=secret)
    front = front_proxy(
        deps, routes, activity, hub=f"unix:{hub_socket}", cookie_secret=secret, hosts=hosts
    )

    def forget(route: Route) -> None:
        upstream.discard(route.target)
        front.pool.discard(route.target)
        activity.forget(route.server_id)

    routes.on_remove(forget)
    await workspaces.reconcile()
    watcher = asyncio.create_task(watch_engine(workspaces, backend), name="engine-events")
    measuring = asyncio.create_task(meter.run(quota.storage_interval), name="storage-meter")
    app = make_app(
        deps,
        secret,
        proxy_routes(deps, routes, activity, upstream=upstream, tunnels=front.config.tunnels)
        if hosts is None
        else hub_host_routes(deps, hosts, routes),
        metrics=HubMetrics(capacity=capacity, relayed=lambda: front.relayed),
    )
    if hosts is not None:
        # Before the hub's own handlers: nothing of the hub answers on a user's host.
        app.add_handlers(
            *user_host_rules(deps, hosts, routes, activity, upstream, front.config.tunnels)
        )
    built = Hub(
        app=app,
        deps=deps,
        engine=engine,
        executor=executor,
        docker_client=client,
        hub_id=hub_id,
        admin_password=admin_password,
        routes=routes,
        workspaces=workspaces,
        activity=activity,
        upstream=upstream,
        front=front,
        hub_socket=hub_socket,
        backend=backend,
        firewall=firewall,
    )
    built.tasks.append(
        asyncio.create_task(flush_forever(activity, servers, tick=5.0), name="activity")
    )
    if engine_is_local(settings) and CGROUP_ROOT.is_dir():
        # Children OOM-killed where the engine sends no oom event (cgroup v2 engines).
        counters = oom_counter_events(OomCounters(client, hub_id=hub_id), executor)
        following = workspaces.follow_engine(counters)
        built.tasks.append(asyncio.create_task(following, name="oom-counters"))
    offered = [env.image for env in await catalog.all() if env.launchable]
    checking = backend.prepare_runtime(offered, only_copied=True)
    built.tasks.append(asyncio.create_task(checking, name="runtime-volumes"))
    try:
        yield built
    finally:
        watcher.cancel()
        measuring.cancel()
        await asyncio.gather(watcher, measuring, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, volume_meter.close)
        await workspaces.close()
        await backend.close()
        await built.close()
        if firewall is not None:
            await asyncio.get_running_loop().run_in_executor(None, firewall.remove)


def engine_is_local(settings: Settings) -> bool:
    """Whether the engine runs on this machine (its socket, not TCP or SSH)."""
    host = settings.backend.docker_host
    return not host or host.startswith("unix://")


async def guard_host(settings: Settings, hub_id: str, executor: Executor) -> HostFirewall | None:
    """Install the rules that keep workspaces off host services (``backend.host_firewall``);
    warn, and run on, when that cannot be done."""
    if not settings.backend.host_firewall:
        log.warning("backend.host_firewall is off: workspaces can reach host services on 0.0.0.0")
        return None
    if not engine_is_local(settings):
        log.warning(
            "backend.host_firewall: the engine (%s) may run on another machine; install its "
            "rules there: workspaces can reach that machine's services on 0.0.0.0",
            settings.backend.docker_host,
        )
        return None
    firewall = HostFirewall(hub_id=hub_id, interface=bridge_name(hub_id))
    state = await asyncio.get_running_loop().run_in_executor(executor, firewall.install)
    if state == "on":
        log.info("host firewall on: chain %s", firewall.chain)
    else:
        log.warning(
            "host firewall %s; workspaces can reach host services listening on 0.0.0.0 "
            "(run the hub as root with iptables, or set backend.host_firewall = false)",
            state,
        )
    return firewall


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
    """Record every built environment image in the catalog, pinned by image id.

    A new image becomes a new version; earlier versions stay (``SqlCatalog.seed``).
    """

    def find() -> dict[str, SeedImage]:
        found: dict[str, SeedImage] = {}
        try:
            manifests = load_all(images_dir())
        except LabdockError as exc:
            log.warning("environment manifests unreadable: %s", exc.message)
            return found
        for name, manifest in manifests.items():
            try:
                tag = latest_tag(client, name)
                if tag is not None:
                    found[name] = SeedImage(manifest, tag, str(client.images.get(tag).id))
            except Exception as exc:  # engine down or image gone: the catalog keeps its rows
                log.warning("cannot look up the image of %s: %s", name, exc)
        return found

    built = await asyncio.get_running_loop().run_in_executor(executor, find)
    if built:
        for name, label in await catalog.seed(built):
            log.info("environment %s: new version %s is now current", name, label)


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
            await built.listen(settings.hub.port, settings.hub.ip)
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
        if settings.hub.user_domain:
            print(
                f"users' servers answer on their own hosts: <name>.{settings.hub.user_domain}",
                flush=True,
            )
        await stop.wait()
        print("labdock: shutting down", file=sys.stderr, flush=True)
