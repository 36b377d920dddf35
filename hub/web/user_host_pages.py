"""The handlers of subdomain mode (see ``hub.proxy.user_hosts`` for the flow).

    hosts = UserHosts(domain=..., hub_url=..., secret=secret, max_age_days=1.5)
    app = make_app(deps, secret, hub_host_routes(deps, hosts, routes))
    app.add_handlers(*user_host_rules(deps, hosts, routes, activity, upstream, tunnels))

On the hub's host:
    GET  /hub/user-auth?next=URL&state=S   mints a code, sends the browser to the user host
    ANY  /user/<name>/...                  302 (307 for writes) to the same path on <name>'s host

On a user's host ``<name>.<user_domain>``, and nothing else there:
    GET  /_labdock/auth?code=C             the code becomes the host's own cookie
    ANY  /user/<name>/...                  the proxy, authenticated by that cookie or a token
    GET  /hub/static/...                   the stylesheet of the pages below
    anything else, another user's path     404
"""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import urlencode

import tornado.web

from hub.domain.access import Site, may_enter_host
from hub.domain.accounts import User, check_username
from hub.domain.activity import ActivityTracker
from hub.domain.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from hub.domain.routes import RouteTable, canonical_path
from hub.proxy.tunnels import Tunnels
from hub.proxy.upstream import UpstreamPool
from hub.proxy.user_hosts import (
    AUTH_PATH,
    CALLBACK_PATH,
    STATE_SECONDS,
    UserHosts,
    host_name,
)
from hub.web.base import BaseHandler, authenticated_page
from hub.web.deps import WebDeps
from hub.web.proxy import ProxyHandler, ProxySettings

Rules = list[tuple[str, type[tornado.web.RequestHandler], dict[str, object]]]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PRINTABLE = re.compile(r"[\x21-\x7e]*\Z")
# The pages a user host shows itself: no script, and links that lead back to the hub.
_CSP = "default-src 'none'; style-src 'self'; frame-ancestors 'none'"
_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{{ title }} · labdock</title>
  <link rel="stylesheet" href="/hub/static/labdock.css">
</head>
<body>
  <header class="bar"><a class="brand" href="{{ hub }}/hub/home">labdock</a></header>
  <main id="main">
    <section class="card narrow">
      <h1>{{ title }}</h1>
      <p>{{ message }}</p>
      {% if start %}
      <p><a class="button" href="{{ hub }}/hub/home">Start it from your home page</a></p>
      {% elif again %}<p><a class="button" href="{{ again }}">Open it again</a></p>
      {% else %}<p><a href="{{ hub }}/hub/home">Back to labdock</a></p>{% endif %}
    </section>
  </main>
</body>
</html>
"""


# On the hub's host ----------------------------------------------------------------


class UserAuthHandler(BaseHandler):
    """``GET /hub/user-auth``: the hub session, turned into a code for one user host."""

    def initialize(self, deps: WebDeps, hosts: UserHosts, routes: RouteTable) -> None:  # type: ignore[override]
        super().initialize(deps)
        self.hosts = hosts
        self.routes = routes

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")

    @authenticated_page
    async def get(self) -> None:
        user = self.user
        assert user is not None
        next_url = self.get_argument("next", "")
        owner, host = self.hosts.check_next(next_url)
        state = self.get_argument("state", "")
        if not self.hosts.valid_state(state):
            raise InvalidInput("state: missing or malformed; open the server's address again")
        raw = self.get_signed_cookie(
            self.deps.session_cookie, max_age_days=self.deps.settings.session_hours / 24 + 1
        )
        session_user = await self.deps.accounts.session_user(raw.decode()) if raw else None
        if raw is None or session_user is None or session_user.id != user.id:
            # A token (with or without someone's cookie beside it) opens no user host.
            raise Unauthorized("sign in with a browser: an API token opens no user host")
        routes = self.routes
        if not may_enter_host(user, owner, routes, admin_access=routes.admin_access):
            raise Forbidden(
                f"{user.name} may not use {owner}'s servers: they are not shared with them."
            )
        code = self.hosts.codes.mint(
            session=raw.decode(), host=host, state=state, next_url=next_url
        )
        self.redirect(self.hosts.origin_of(owner) + CALLBACK_PATH + "?" + urlencode({"code": code}))


class ToUserHostHandler(BaseHandler):
    """``/user/<name>/...`` on the hub's host: the same path on ``<name>``'s own host."""

    def initialize(self, deps: WebDeps, hosts: UserHosts) -> None:  # type: ignore[override]
        super().initialize(deps)
        self.hosts = hosts

    def check_xsrf_cookie(self) -> None:
        pass  # nothing is done here but a redirect, which carries no credential

    async def prepare(self) -> None:
        # No credential is looked at: the user host asks for its own.
        request = self.request
        try:
            path = canonical_path(request.path)
        except InvalidInput as exc:
            raise InvalidInput(exc.message) from None
        owner = path[len("/user/") :].split("/", 1)[0]
        try:
            check_username(owner)
        except InvalidInput:
            raise NotFound("There is nothing at this address.") from None
        if not _PRINTABLE.match(request.query):
            raise InvalidInput("the query string holds characters that are not percent-encoded")
        target = self.hosts.origin_of(owner) + request.path
        if request.query:
            target += "?" + request.query
        self.redirect(target, status=302 if request.method in _SAFE_METHODS else 307)


def hub_host_routes(deps: WebDeps, hosts: UserHosts, routes: RouteTable) -> Rules:
    """The hub host's part of subdomain mode, in place of ``proxy_routes``."""
    return [
        (re.escape(AUTH_PATH), UserAuthHandler, {"deps": deps, "hosts": hosts, "routes": routes}),
        (r"/user/.*", ToUserHostHandler, {"deps": deps, "hosts": hosts}),
    ]


# On a user's host -----------------------------------------------------------------


class _UserHostPage(tornado.web.RequestHandler):
    """A page the user host answers itself: no hub cookie is read, set or shown."""

    hosts: UserHosts
    deps: WebDeps

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    def show(self, status: int, title: str, message: str, again: str = "") -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Content-Security-Policy", _CSP)
        page = self.deps.templates.from_string(_PAGE, globals={"hub": self.hosts.hub_origin})
        self.finish(page.render(title=title, message=message, start=False, again=again))


class AuthCallbackHandler(_UserHostPage):
    """``GET /_labdock/auth?code=...`` on a user host: the host's cookie, then ``next``."""

    def initialize(self, deps: WebDeps, hosts: UserHosts) -> None:
        self.deps = deps
        self.hosts = hosts

    async def get(self) -> None:
        hosts = self.hosts
        host = self.request.host
        if hosts.owner_of(host) is None:
            self.show(404, "404 Not Found", "There is nothing at this address.")
            return
        try:
            pending = hosts.codes.redeem(self.get_argument("code", ""), host=host_name(host))
        except InvalidInput as exc:
            self.show(400, "Sign-in link not valid", exc.message + ".")
            return
        cookie = self.request.headers.get("Cookie")
        if not hosts.same_state(pending.state, hosts.state_in(cookie)):
            # Started in another browser (or a planted link): this one signs in itself.
            self.show(
                400,
                "Sign-in link not valid",
                "This sign-in was started elsewhere or has been replaced by a newer one.",
                again=pending.next_url,
            )
            return
        self.clear_cookie(hosts.state_cookie, path="/", secure=hosts.secure)
        if await self.deps.accounts.session_user(pending.session) is None:
            self.redirect(pending.next_url)  # logged out meanwhile: the flow starts again
            return
        self.set_cookie(
            hosts.cookie,
            hosts.sign(host, pending.session),
            path="/",
            httponly=True,
            samesite="Lax",
            secure=hosts.secure,
        )
        self.redirect(pending.next_url)


class UserHostNotFound(_UserHostPage):
    """Anything on a user host that is not its owner's servers: the hub is not here."""

    def initialize(self, deps: WebDeps, hosts: UserHosts) -> None:
        self.deps = deps
        self.hosts = hosts

    def check_xsrf_cookie(self) -> None:
        pass

    async def prepare(self) -> None:
        self.show(404, "404 Not Found", "There is nothing at this address.")


@tornado.web.stream_request_body
class UserHostProxyHandler(ProxyHandler):
    """``/user/<name>/...`` on ``<name>``'s host, signed in by that host's own cookie."""

    def initialize(  # type: ignore[override]
        self, deps: WebDeps, proxy: ProxySettings, hosts: UserHosts
    ) -> None:
        super().initialize(deps, proxy)
        self.hosts = hosts

    async def _user_from_cookie(self) -> User | None:
        # Only this host's cookie counts here; the hub's own is never sent to it.
        session = self.hosts.session_in(self.request.host, self.request.headers.get("Cookie"))
        if session is None:
            return None
        return await self.deps.accounts.session_user(session)

    def _log_in(self, path: str) -> None:
        """Send the browser through the hub's sign-in for this host (``decide`` said so)."""
        hosts = self.hosts
        owner = hosts.owner_of(self.request.host)
        assert owner is not None  # ``decide`` answers 404 on any other host
        state = secrets.token_urlsafe(24)
        self.set_cookie(
            hosts.state_cookie,
            state,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=hosts.secure,
            max_age=STATE_SECONDS,
        )
        next_url = hosts.origin_of(owner) + (self.request.uri or path)
        query = urlencode({"next": next_url, "state": state})
        self.redirect(f"{hosts.hub_origin}{AUTH_PATH}?{query}")

    def xsrf_form_html(self) -> str:
        return ""  # no hub form on a user host: and no hub XSRF cookie set here either


def user_host_rules(
    deps: WebDeps,
    hosts: UserHosts,
    routes: RouteTable,
    activity: ActivityTracker,
    upstream: UpstreamPool,
    tunnels: Tunnels | None = None,
    *,
    max_body_size: int = 64 * 1024**3,
    ws_handshake_timeout: float = 30.0,
) -> tuple[str, Rules]:
    """``(host pattern, handlers)`` for ``Application.add_handlers``: everything under the
    user domain is answered by these, and never by the hub's own handlers."""
    proxy = ProxySettings(
        routes=routes,
        activity=activity,
        upstream=upstream,
        describe=None,
        page=deps.templates.from_string(_PAGE, globals={"hub": hosts.hub_origin}),
        max_body_size=max_body_size,
        site=Site(public_origin="", public_scheme=hosts.scheme, hosts=hosts),
        public_scheme=hosts.scheme,
        hub_cookies=frozenset({deps.session_cookie, "_xsrf", hosts.cookie, hosts.state_cookie}),
        ws_handshake_timeout=ws_handshake_timeout,
        tunnels=tunnels if tunnels is not None else Tunnels(deps.accounts, routes),
    )
    args: dict[str, Any] = {"deps": deps, "hosts": hosts}
    return hosts.host_pattern, [
        (re.escape(CALLBACK_PATH), AuthCallbackHandler, args),
        (r"/hub/static/(.*)", tornado.web.StaticFileHandler, {"path": str(deps.static_dir)}),
        (r"/user/.*", UserHostProxyHandler, {**args, "proxy": proxy}),
        (r".*", UserHostNotFound, args),
    ]
