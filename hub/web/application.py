"""The hub's web application: its URL map and the tornado settings it runs with.

    app = make_app(deps, secret, extra=proxy_rules, metrics=metrics)

``hub.app`` builds the collaborators (``WebDeps``) and calls this; nothing here
constructs a service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tornado.web
from jinja2 import Environment, FileSystemLoader, select_autoescape

import hub
from hub.domain.errors import ConfigError
from hub.domain.quotas import Limits
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


def resource_dir(name: str) -> Path:
    """``templates`` or ``static``: inside the wheel, or beside ``hub/`` in a checkout."""
    package = Path(hub.__file__).parent
    for candidate in (package / f"_{name}", package.parent / name):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"labdock is installed without its {name}/ folder")


def templates() -> Environment:
    """The jinja2 environment over ``templates/``, autoescaping HTML."""
    return Environment(
        loader=FileSystemLoader(str(resource_dir("templates"))),
        autoescape=select_autoescape(["html"]),
        enable_async=False,
    )


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
