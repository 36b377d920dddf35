"""Wiring: the one place that builds engines, repositories, services and handlers.

    async with build_hub(settings) as built:      # what `labdock serve` does (hub.serve)
        await built.listen(8000, "127.0.0.1")

Nothing else in labdock constructs a collaborator; everything is handed down.
The engine comes from ``open_backend`` (``backend.kind``); background work is a
list of services, started in order and closed in reverse order (``services``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import tornado.web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hub.backends.bundle import BackendBundle, open_backend
from hub.backends.firewall import HostFirewall
from hub.capacity import host_capacity
from hub.config import Settings
from hub.db.accounts import SqlAccountRepo
from hub.db.audit import SqlAuditLog
from hub.db.engine import make_engine, ping
from hub.db.environments import SqlCatalog
from hub.db.meta import hub_identity
from hub.db.migrate import upgrade
from hub.db.oidc import SqlIdentityRepo
from hub.db.quotas import SqlQuotaRepo
from hub.db.servers import SqlServerRepo
from hub.db.teams import SqlTeamRepo
from hub.domain.accounts import Accounts
from hub.domain.activity import ActivityTracker
from hub.domain.catalog_admin import CatalogAdmin
from hub.domain.clock import SystemClock
from hub.domain.launch_limits import LaunchLimits
from hub.domain.oidc import OidcIdentities
from hub.domain.quota_admin import QuotaAdmin
from hub.domain.routes import Route, RouteTable
from hub.domain.servers import Backend
from hub.domain.services import Services
from hub.domain.storage import StorageMeter, StorageQuota
from hub.domain.throttle import LoginThrottle
from hub.domain.workspaces import Policy, Workspaces
from hub.keys import cookie_secret
from hub.passwords import Argon2Hasher
from hub.proxy.fast import FrontProxy
from hub.proxy.upstream import UpstreamPool
from hub.proxy.user_hosts import UserHosts
from hub.services import hub_services
from hub.web.application import make_app, resource_dir, templates
from hub.web.application import make_routes as make_routes
from hub.web.deps import WebDeps, WebSettings
from hub.web.listener import WebFront
from hub.web.metrics import HubMetrics
from hub.web.oidc_login import OidcLogin
from hub.web.proxy import front_proxy, proxy_routes
from hub.web.user_host_pages import hub_host_routes, user_host_rules


@dataclass
class Hub:
    """A wired hub: its app, its parts, and its services (``close`` closes them, in reverse)."""

    settings: Settings
    app: tornado.web.Application
    deps: WebDeps
    engine: AsyncEngine
    bundle: BackendBundle
    hub_id: str
    admin_password: str | None
    routes: RouteTable
    workspaces: Workspaces
    activity: ActivityTracker
    upstream: UpstreamPool
    # The public listener's fast path; the tornado app listens behind it (``web``).
    front: FrontProxy
    web: WebFront
    services: Services = field(default_factory=Services)

    @property
    def backend(self) -> Backend:
        """The engine's ``Backend`` port."""
        return self.bundle.backend

    @property
    def firewall(self) -> HostFirewall | None:
        """The host firewall's rules, where this engine has them."""
        return self.bundle.firewall

    async def listen(self, port: int, address: str) -> int:
        """Serve on ``address:port`` (0: a free port): the front there, tornado behind it."""
        return await self.web.listen(port, address)

    async def close(self) -> None:
        """Close every service, the last started first."""
        await self.services.close()


def user_hosts(settings: Settings, secret: bytes) -> UserHosts | None:
    """Subdomain mode's user hosts (``hub.user_domain``), or ``None`` in path mode."""
    hub = settings.hub
    if not hub.user_domain:
        return None
    return UserHosts(
        domain=hub.user_domain,
        hub_url=hub.public_url,
        secret=secret,
        max_age_days=hub.session_hours / 24 + 1,
    )


@contextlib.asynccontextmanager
async def build_hub(settings: Settings) -> AsyncIterator[Hub]:
    """Migrate, build every collaborator, start the services; close them all on exit."""
    await asyncio.get_running_loop().run_in_executor(None, upgrade, settings.db_url)
    engine = make_engine(settings.db_url, echo=settings.db.echo)
    sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(engine, expire_on_commit=False)
    executor = ThreadPoolExecutor(max_workers=settings.backend.threads, thread_name_prefix="engine")
    accounts = Accounts(
        SqlAccountRepo(sessions),
        Argon2Hasher(),
        SystemClock(),
        token_expiry_days=settings.hub.token_expiry_days,
    )
    hub_id = settings.hub.id or await hub_identity(sessions)
    admin_password = await accounts.ensure_admin(settings.hub.admin_user)
    bundle = open_backend(settings, hub_id=hub_id, executor=executor)
    routes = RouteTable(admin_access=settings.hub.admin_access)
    meter = StorageMeter(bundle.volumes, clock=SystemClock())
    catalog = SqlCatalog(sessions)
    deps = web_deps(settings, engine, accounts, bundle, catalog, routes, meter, hub_id)
    activity, upstream = ActivityTracker(every=30.0), UpstreamPool()
    secret = cookie_secret(settings)
    hub_socket = str(Path(tempfile.gettempdir()) / f"labdock-{secrets.token_hex(8)}" / "hub.sock")
    # Subdomain mode: users' servers on hosts of their own (None: under the hub's own host).
    hosts = user_hosts(settings, secret)
    front = front_proxy(
        deps, routes, activity, hub=f"unix:{hub_socket}", cookie_secret=secret, hosts=hosts
    )

    def forget(route: Route) -> None:
        upstream.discard(route.target)
        front.pool.discard(route.target)
        activity.forget(route.server_id)

    routes.on_remove(forget)
    app = make_app(
        deps,
        secret,
        proxy_routes(deps, routes, activity, upstream=upstream, tunnels=front.config.tunnels)
        if hosts is None
        else hub_host_routes(deps, hosts, routes),
        metrics=HubMetrics(capacity=deps.host_capacity, relayed=lambda: front.relayed),
    )
    if hosts is not None:
        # Before the hub's own handlers: nothing of the hub answers on a user's host.
        app.add_handlers(
            *user_host_rules(deps, hosts, routes, activity, upstream, front.config.tunnels)
        )
    web = WebFront(app, front, upstream, hub_socket)
    services = hub_services(
        settings,
        database=engine,
        executor=executor,
        bundle=bundle,
        workspaces=deps.workspaces,
        catalog=catalog,
        meter=meter,
        activity=activity,
        activity_store=deps.servers,
        web=web,
    )
    built = Hub(
        settings=settings,
        app=app,
        deps=deps,
        engine=engine,
        bundle=bundle,
        hub_id=hub_id,
        admin_password=admin_password,
        routes=routes,
        workspaces=deps.workspaces,
        activity=activity,
        upstream=upstream,
        front=front,
        web=web,
        services=Services(services),
    )
    try:
        await built.services.start()
        yield built
    finally:
        await built.close()


def web_deps(
    settings: Settings,
    engine: AsyncEngine,
    accounts: Accounts,
    bundle: BackendBundle,
    catalog: SqlCatalog,
    routes: RouteTable,
    meter: StorageMeter,
    hub_id: str,
) -> WebDeps:
    """The repositories and domain services, as the handlers receive them."""
    sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(engine, expire_on_commit=False)
    servers, teams = SqlServerRepo(sessions), SqlTeamRepo(sessions)
    audit, quota = SqlAuditLog(sessions), settings.quota
    capacity, gpus = host_capacity(settings.capacity)
    quotas = SqlQuotaRepo(sessions, storage=meter)
    storage = StorageQuota(meter, limits=quotas, default_limit=quota.storage)
    policy = Policy(
        hub_id=hub_id,
        default_quota=quota.user_limits(),
        host_capacity=capacity,
        gpu_inventory=gpus,
        max_concurrent_launches=settings.hub.max_concurrent_launches,
        launch_timeout=settings.hub.launch_timeout,
        stop_grace=settings.backend.stop_grace,
        labels=settings.labels,
    )
    identities = OidcIdentities(SqlIdentityRepo(sessions), accounts, SystemClock())
    workspaces = Workspaces(
        repo=servers,
        teams=teams,
        audit=audit,
        storage=storage,
        backend=bundle.backend,
        routes=routes,
        catalog=catalog,
        clock=SystemClock(),
        policy=policy,
    )
    return WebDeps(
        settings=WebSettings(
            public_url=settings.hub.public_url,
            session_hours=settings.hub.session_hours,
            launch_wait=settings.hub.launch_wait,
            request_head_timeout=settings.hub.request_head_timeout,
            max_connections_per_client=settings.hub.max_connections_per_client,
        ),
        accounts=accounts,
        templates=templates(),
        static_dir=resource_dir("static"),
        check_db=functools.partial(ping, engine),
        check_backend=bundle.backend.ping,
        workspaces=workspaces,
        servers=servers,
        catalog=catalog,
        teams=teams,
        throttle=LoginThrottle(SystemClock()),
        quotas=quotas,
        quota_admin=QuotaAdmin(
            store=quotas, accounts=accounts, teams=teams, audit=audit, user_default=quota.amounts()
        ),
        audit=audit,
        launch_limits=LaunchLimits(
            repo=servers, catalog=catalog, teams=teams, policy=policy, storage=storage
        ),
        storage=storage,
        oidc=OidcLogin(settings.oidc, identities) if settings.oidc.issuer else None,
        stats=bundle.stats,
        host_capacity=capacity,
        gpu_inventory=gpus,
        catalog_admin=CatalogAdmin(store=catalog, images=bundle.images, teams=teams, audit=audit),
    )
