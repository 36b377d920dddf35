"""What the web handlers need, handed to them by ``hub.app`` through ``initialize``.

app = Application([(r"/hub/login", LoginHandler, {"deps": deps})])
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment

from hub.domain.accounts import Accounts, TeamDirectory
from hub.domain.audit import AuditLog, RefusalDigest
from hub.domain.catalog import Catalog
from hub.domain.catalog_admin import CatalogAdmin
from hub.domain.launch_limits import LaunchLimits
from hub.domain.quota_admin import QuotaAdmin, QuotaStore
from hub.domain.quotas import Limits
from hub.domain.records import WorkspaceRepo
from hub.domain.stats import StatsReader
from hub.domain.storage import StorageQuota
from hub.domain.throttle import LoginThrottle
from hub.domain.workspaces import Workspaces
from hub.web.oidc_login import OidcLogin

HealthCheck = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class WebSettings:
    """What the handlers read of the hub's settings (``hub.app`` copies them from ``[hub]``)."""

    # The hub's public URL (``https://...`` behind TLS: Secure ``__Host-`` cookies).
    public_url: str = ""
    # How long a browser session lasts.
    session_hours: float = 12.0
    # How long a launch request waits for readiness before answering 202.
    launch_wait: float = 30.0
    # Seconds a client may take to send one request head, and connections per address.
    request_head_timeout: float = 30.0
    max_connections_per_client: int = 256


@dataclass(frozen=True)
class WebDeps:
    """The collaborators of every handler, built once in ``hub.app``."""

    settings: WebSettings
    accounts: Accounts
    templates: Environment
    static_dir: Path
    check_db: HealthCheck
    check_backend: HealthCheck
    workspaces: Workspaces
    servers: WorkspaceRepo
    catalog: Catalog
    teams: TeamDirectory
    throttle: LoginThrottle
    quotas: QuotaStore
    quota_admin: QuotaAdmin
    audit: AuditLog
    # What admission would grant now: the launch form's bounds and GET .../limits.
    launch_limits: LaunchLimits
    storage: StorageQuota | None = field(default=None)
    oidc: OidcLogin | None = field(default=None)
    stats: StatsReader | None = field(default=None)
    # What admission checks launches against: the host's capacity and its GPU ids.
    host_capacity: Limits = field(default_factory=Limits)
    gpu_inventory: tuple[str, ...] = field(default=())
    # Admins' changes to the environment catalog, made from the engine's images.
    catalog_admin: CatalogAdmin | None = field(default=None)
    # Refusals written to the audit log at most once a minute per address and kind.
    refusals: RefusalDigest = field(default_factory=RefusalDigest)

    @property
    def secure_cookies(self) -> bool:
        return self.settings.public_url.startswith("https://")

    @property
    def session_cookie(self) -> str:
        # __Host- binds the cookie to this exact origin, which browsers allow only over HTTPS.
        return "__Host-labdock-session" if self.secure_cookies else "labdock-session"
