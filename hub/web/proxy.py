"""The hub's authenticated reverse proxy: ``/user/<name>/<server>/...`` to the user's container.

    routes, activity, pool = RouteTable(), ActivityTracker(), UpstreamPool()
    app = tornado.web.Application(
        make_routes(deps) + proxy_routes(deps, routes, activity, upstream=pool),
        cookie_secret=secret, xsrf_cookies=True, ...)
    routes.add(Route(user="alice", server="", user_id=7, server_id=42,
                     target="http://172.18.0.5:8888", secret="s"))
    # GET /user/alice/tree  ->  GET http://172.18.0.5:8888/user/alice/tree
    #                           Authorization: token s

Every request, plain or WebSocket, goes through the same steps:

1. The path is made canonical (``canonical_path``) before anything matches it;
   a path that cannot be (encoded slashes, ``;``, backslashes, ``..`` above the
   root) is refused with 400.
2. Who asks: ``BaseHandler.prepare`` sets ``self.user`` from the session cookie
   or an API token. Whether they may: ``hub.domain.access.decide``, the one
   rule every path of the proxy asks (login or 401 for nobody, the same 404 for
   every server one may not open, 503 for one's own stopped server, 403 for a
   token without ``access:servers`` and for cross-site upgrades and cookie
   writes). This handler only carries its answer out.
3. The request goes upstream with the server's secret as its only credential:
   the client's ``Authorization`` is replaced, and the hub's session and XSRF
   cookies are taken out of ``Cookie``, so a server shared with a visitor never
   sees the visitor's hub credentials. Redirects are passed back, never followed.
4. Bodies stream both ways in pieces, with back-pressure, so a 2 GB upload or
   download never sits in the hub's memory.
5. The time is noted for activity tracking (a dict store; the DB is written in
   batches elsewhere).
6. A WebSocket, or a response that streams on, stays in the tunnel registry
   (``hub.proxy.tunnels``) while it is open: it is closed within 2 s of its
   session or token being revoked or its route removed.

A missing route, a stopped server or one that does not answer gives a page that
says so (or JSON ``{"status": 503, "message": ...}`` for API clients); a server
that makes no progress for ``UpstreamPool.idle_timeout`` gives 504.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.client import responses
from typing import Any
from urllib.parse import urlsplit

import tornado.web
from jinja2 import Template
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketHandler

from hub.domain.access import NO_SERVER as NO_SERVER
from hub.domain.access import Refuse, Site, Visit, decide
from hub.domain.activity import ActivityTracker
from hub.domain.errors import InvalidInput, LabdockError, Unauthorized
from hub.domain.routes import Route, RouteTable, canonical_path, upstream_path
from hub.proxy.auth import Subject, hub_token
from hub.proxy.headers import (
    Forwarded,
    connection_tokens,
    request_framing,
    response_headers,
    upstream_headers,
)
from hub.proxy.tunnels import Tunnel, Tunnels
from hub.proxy.upstream import (
    UpstreamError,
    UpstreamExchange,
    UpstreamHead,
    UpstreamPool,
)
from hub.proxy.ws import WebSocketBridge
from hub.web.base import BaseHandler, status_for
from hub.web.deps import WebDeps
from hub.web.pages import safe_next
from hub.web.proxy_front import CSP as _CSP
from hub.web.proxy_front import PAGE as _PAGE
from hub.web.proxy_front import front_proxy as front_proxy  # where hub.app builds it from

Describe = Callable[[str, str], Awaitable[str | None]]
"""``describe(user_name, server_name)``: the server's state in words, or ``None`` if not running."""

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class ProxySettings:
    """What every proxy handler shares; built once by ``proxy_routes``."""

    routes: RouteTable
    activity: ActivityTracker
    upstream: UpstreamPool
    describe: Describe | None
    page: Template
    max_body_size: int
    site: Site  # what ``decide`` knows of the hub: its public origin, user hosts
    public_scheme: str  # "https", or "" when hub.public_url is unset
    hub_cookies: frozenset[str]  # never sent upstream
    ws_handshake_timeout: float
    tunnels: Tunnels


def proxy_routes(
    deps: WebDeps,
    routes: RouteTable,
    activity: ActivityTracker,
    *,
    describe: Describe | None = None,
    upstream: UpstreamPool | None = None,
    max_body_size: int = 64 * 1024**3,
    ws_handshake_timeout: float = 30.0,
    tunnels: Tunnels | None = None,
) -> list[tuple[str, type[tornado.web.RequestHandler], dict[str, object]]]:
    """The URL rule of the proxy, to add to ``hub.app.make_routes``.

    ``upstream`` holds the keep-alive connections and the time limits
    (connect 5 s, idle 300 s by default); pass one in so that the hub can close
    it on shutdown. ``max_body_size`` caps one request body (64 GiB).
    ``tunnels`` watches open WebSockets and streams (the front's, so that one
    registry holds both paths'); by default one of its own.
    """
    public = urlsplit(deps.settings.public_url)
    settings = ProxySettings(
        routes=routes,
        activity=activity,
        upstream=upstream if upstream is not None else UpstreamPool(),
        describe=describe,
        page=deps.templates.from_string(_PAGE),
        max_body_size=max_body_size,
        site=Site(
            public_origin=f"{public.scheme}://{public.netloc}".lower() if public.netloc else "",
            public_scheme=public.scheme if public.netloc else "",
        ),
        public_scheme=public.scheme if public.netloc else "",
        hub_cookies=frozenset({deps.session_cookie, "_xsrf"}),
        ws_handshake_timeout=ws_handshake_timeout,
        tunnels=tunnels if tunnels is not None else Tunnels(deps.accounts, routes),
    )
    return [(r"/user/.*", ProxyHandler, {"deps": deps, "proxy": settings})]


@tornado.web.stream_request_body
class ProxyHandler(WebSocketHandler, BaseHandler):
    """``/user/<name>/<server>/...``: plain HTTP and WebSocket upgrades alike.

    One class for both because they share a URL; ``get`` tells them apart by
    the ``Upgrade: websocket`` header, as jupyter-server-proxy does.
    """

    proxy: ProxySettings

    def initialize(self, deps: WebDeps, proxy: ProxySettings) -> None:  # type: ignore[override]
        super().initialize(deps)
        self.proxy = proxy
        self._route: Route | None = None
        self._exchange: UpstreamExchange | None = None
        self._bridge: WebSocketBridge | None = None
        self._rest = ""
        self._websocket = False
        self._streaming = False
        self._client_gone = False
        self._tunnel: Tunnel | None = None
        self._revoked = False
        self._body_pieces = 0

    def set_default_headers(self) -> None:
        # Proxied responses carry the server's headers, not the hub's page
        # headers; _refuse adds those to the hub's own pages.
        pass

    def check_xsrf_cookie(self) -> None:
        # The hub's XSRF token belongs to the hub's forms; user servers have
        # their own. Cross-site writes are stopped by the Origin check in
        # prepare and by the SameSite session cookie.
        pass

    def compute_etag(self) -> str | None:
        return None  # the server's ETag, if any, passes through untouched

    # Who may pass ----------------------------------------------------------

    async def prepare(self) -> None:
        self._transforms = []  # no gzip by the hub: bytes go out as the server sent them
        try:
            await super().prepare()  # who asks: self.user and self.scopes
        except Unauthorized:
            self.user, self.scopes = None, frozenset()  # a bad token: ``decide`` says so
        request = self.request
        try:
            path = canonical_path(request.path)
        except InvalidInput as exc:
            self._refuse(400, exc.message)
            return
        found = self.proxy.routes.match(path)
        headers = request.headers
        by_token = self._presented_token() is not None
        visit = Visit(
            method=request.method or "",
            path=path,
            host=request.host,
            origin=headers.get("Origin"),
            # Without "Connection: upgrade" it is a plain GET; Upgrade is hop-by-hop.
            upgrade=(
                request.method == "GET"
                and headers.get("Upgrade", "").lower() == "websocket"
                and "upgrade" in connection_tokens(headers)
            ),
            by_token=by_token,
            wants_html=not by_token and "text/html" in headers.get("Accept", ""),
            scheme=request.protocol,
        )
        routes = self.proxy.routes
        decision = decide(
            visit,
            self.user,
            self.scopes,
            found,
            admin_access=routes.admin_access,
            site=self.proxy.site,
        )
        if isinstance(decision, Refuse):
            await self._refused(decision, path)
            return
        assert found is not None
        route, rest = found
        if not rest:
            self._add_slash(route)
            return
        self._route = route
        self._rest = rest
        self.proxy.activity.record(route.server_id)
        if visit.upgrade:
            self._websocket = True
            return
        await self._start_upstream(route)

    def _presented_token(self) -> str | None:
        # Only hub tokens count here; see ``hub_token`` for the app's own headers.
        return hub_token(self.request.headers.get("Authorization"))

    @property
    def _wants_html(self) -> bool:
        headers = self.request.headers
        return self._presented_token() is None and "text/html" in headers.get("Accept", "")

    def check_origin(self, origin: str) -> bool:
        # ``decide`` applied the Origin rule in ``prepare``, before any upgrade.
        return True

    # Revocation ---------------------------------------------------------------

    def _subject(self) -> Subject | None:
        """The token or session this request was let through for, as the DB knows it."""
        token = self._presented_token()
        if token is not None:
            return ("token", token)
        raw = self.get_signed_cookie(
            self.deps.session_cookie, max_age_days=self.deps.settings.session_hours / 24 + 1
        )
        return ("session", raw.decode()) if raw else None

    def _watch(self) -> None:
        """Keep this socket or stream in the tunnel registry until it ends."""
        route, user = self._route, self.user
        if self._tunnel is not None or self._revoked or route is None or user is None:
            return
        subject = self._subject()
        if subject is not None:
            self._tunnel = self.proxy.tunnels.open(
                subject, user_id=user.id, route=route, close=self._revoke
            )

    def _unwatch(self) -> None:
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            self.proxy.tunnels.done(tunnel)

    def _revoke(self) -> None:
        """The grant is gone, or the route: end the socket or the stream now."""
        self._tunnel = None
        self._revoked = True
        if self._websocket:
            if self._bridge is not None:
                self._bridge.close()  # nothing more reaches the server
            self.close(1008, "access to this server was revoked")
            return
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange.abort()
        if isinstance(self.request.connection, HTTP1Connection):
            self.request.connection.close()

    def on_finish(self) -> None:
        self._unwatch()

    async def _refused(self, refused: Refuse, path: str) -> None:
        """Answer what ``decide`` refused: a redirect for a browser where it says so."""
        if refused.login:
            self._log_in(path)
        elif refused.password:
            self.redirect("/hub/password")
        elif refused.owner:
            await self._not_running(path, refused)
        else:
            self._refuse(refused.status, refused.reason)

    def _log_in(self, path: str) -> None:
        query = self.request.query
        self.redirect(self.login_url_for(safe_next(path + ("?" + query if query else ""))))

    def _add_slash(self, route: Route) -> None:
        query = self.request.query
        target = route.prefix + ("?" + query if query else "")
        self.redirect(target, status=302 if self.request.method in _SAFE_METHODS else 307)

    async def _not_running(self, path: str, refused: Refuse) -> None:
        """The caller's own server is not running: say in what state it is."""
        owner = refused.owner
        rest = path[len("/user/") + len(owner) + 1 :]
        server, state = rest.split("/", 1)[0], None
        describe = self.proxy.describe
        if describe is None:
            self._refuse(503, refused.reason, start=True)
            return
        if server:
            state = await describe(owner, server)
        if state is None:
            # /user/alice/lab/ may be the named server "lab" or a path on the default one.
            server = ""
            state = await describe(owner, "")
        what = f"{owner}'s server {server!r}" if server else f"{owner}'s server"
        self._refuse(503, f"{what} is {state or 'not running'}.", start=True)

    def _refuse(self, status: int, message: str, *, start: bool = False) -> None:
        """Answer from the hub itself: a page for browsers, JSON for API clients."""
        BaseHandler.set_default_headers(self)
        self.set_status(status)
        if not self._wants_html:
            self.write_json({"status": status, "message": message}, status)
            return
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Content-Security-Policy", _CSP)
        title = "Server not running" if start else f"{status} {responses.get(status, '')}"
        self.finish(
            self.proxy.page.render(
                title=title,
                message=message,
                start=start,
                user=self.user,
                xsrf_form_html=self.xsrf_form_html() if self.user else "",
                static_url=self.static_url,
            )
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = "labdock hit an internal error; the hub's log has the details"
        if isinstance(exc, LabdockError):
            status_code, message = status_for(exc), exc.message
        elif isinstance(exc, tornado.web.HTTPError) and status_code < 500:
            message = exc.log_message % exc.args if exc.log_message else self._reason
        self._refuse(status_code, message)

    # Plain HTTP -------------------------------------------------------------

    def _forwarded(self, route: Route) -> Forwarded:
        request = self.request
        return Forwarded(
            host=request.host,
            remote_ip=request.remote_ip or "",
            proto=self.proxy.public_scheme or request.protocol,
            prefix=route.prefix[:-1],
            secret=route.secret,
            hub_cookies=self.proxy.hub_cookies,
        )

    async def _start_upstream(self, route: Route) -> None:
        request = self.request
        body = request_framing(request.headers)
        if body is None:
            return  # tornado too refuses it (400, then closes) when it reads the body
        if isinstance(request.connection, HTTP1Connection):
            request.connection.set_max_body_size(self.proxy.max_body_size)
        target = upstream_path(request.path, self._rest, route)
        if request.query:
            target += "?" + request.query
        headers = upstream_headers(request.headers, self._forwarded(route))
        if body == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        elif body or request.method in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(body)))
        lines = [f"{request.method} {target} HTTP/1.1"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin1")
        try:
            self._exchange = await self.proxy.upstream.start(route.target, head, body=body)
        except UpstreamError as exc:
            self._upstream_failed(exc)

    async def data_received(self, chunk: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        if self._body_pieces < 2:
            self._body_pieces += 1
            if self._body_pieces == 2:
                self._watch()  # an upload that streams on: ended if the grant goes
        try:
            await exchange.send(chunk)
        except UpstreamError as exc:
            self._exchange = None
            self._upstream_failed(exc)

    def _upstream_failed(self, exc: UpstreamError) -> None:
        if self._finished:
            return
        route = self._route
        who = f"{route.user}'s server" if route else "The server"
        if exc.status == 503:
            self._refuse(503, f"{who} is not answering; it may be stopped.", start=True)
        elif exc.status == 504:
            self._refuse(504, f"{who} took too long to answer: {exc.message}.")
        else:
            self._refuse(exc.status, f"{who} answered badly: {exc.message}.")

    async def _relay(self) -> None:
        exchange = self._exchange
        if exchange is None:
            if not self._finished:
                self._refuse(400, "the request's body framing is ambiguous")
            return
        try:
            await exchange.end()
            head = await exchange.head()
        except UpstreamError as exc:
            self._exchange = None
            self._upstream_failed(exc)
            return
        try:
            self._copy_head(head)
        except ValueError:
            exchange.abort()
            self._exchange = None
            self._clear_proxied_headers()
            self._refuse(502, "the server sent a header the hub cannot pass on")
            return
        try:
            await self._copy_body(exchange)
        except UpstreamError as exc:
            self._exchange = None
            if self._streaming:
                # The status is already out; cutting the connection is the
                # only way left to tell the client the body is incomplete.
                if isinstance(self.request.connection, HTTP1Connection):
                    self.request.connection.close()
                self.finish()
            else:
                self._clear_proxied_headers()
                self._upstream_failed(exc)
        except StreamClosedError:
            exchange.abort()  # the client left
            self._exchange = None

    def _clear_proxied_headers(self) -> None:
        self.clear()
        self._transforms = []

    def _copy_head(self, head: UpstreamHead) -> None:
        self.set_status(head.code, head.reason)
        for name in ("Content-Type", "Server", "Date"):
            self.clear_header(name)  # tornado's defaults; the server's own come next
        for name, value in response_headers(head.headers, self.proxy.hub_cookies):
            self.add_header(name, value)

    async def _copy_body(self, exchange: UpstreamExchange) -> None:
        while not exchange.done():
            chunk = await exchange.read()
            if exchange.done():
                # The last piece goes out with finish(), in the same write as
                # the headers when the body is small.
                if chunk:
                    self.write(chunk)
                break
            self.write(chunk)
            if not self._streaming:
                self._streaming = True
                self._watch()  # the body streams on: ended if the grant goes
            await self.flush()
            if self._revoked:
                raise StreamClosedError()
            exchange.touch()
        exchange.release()
        self._exchange = None
        self.finish()

    async def head(self, *args: Any, **kwargs: Any) -> None:
        await self._relay()

    async def post(self, *args: Any, **kwargs: Any) -> None:
        await self._relay()

    async def put(self, *args: Any, **kwargs: Any) -> None:
        await self._relay()

    async def patch(self, *args: Any, **kwargs: Any) -> None:
        await self._relay()

    async def delete(self, *args: Any, **kwargs: Any) -> None:
        await self._relay()

    async def options(self, *args: Any, **kwargs: Any) -> None:
        await self._relay()

    # WebSocket --------------------------------------------------------------

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if not self._websocket:
            await self._relay()
            return
        route = self._route
        assert route is not None
        target = "ws" + route.target[len("http") :] if route.target.startswith("http") else ""
        path = upstream_path(self.request.path, self._rest, route)
        query = self.request.query
        url = target + path + ("?" + query if query else "")
        protocols = self.request.headers.get("Sec-WebSocket-Protocol", "")
        server_id = route.server_id
        activity = self.proxy.activity
        try:
            self._bridge = await WebSocketBridge.connect(
                url,
                headers=dict(
                    upstream_headers(self.request.headers, self._forwarded(route), websocket=True)
                ),
                subprotocols=[p.strip() for p in protocols.split(",") if p.strip()],
                connect_timeout=self.proxy.upstream.connect_timeout,
                handshake_timeout=self.proxy.ws_handshake_timeout,
                max_message_size=self.max_message_size,
                on_activity=lambda: activity.record(server_id),
            )
        except UpstreamError as exc:
            self._upstream_failed(exc)
            return
        if self._client_gone:
            self._bridge.close()  # the client left while the upstream was connecting
            return
        await super().get(*args, **kwargs)
        if self.get_status() != 101 and self._bridge is not None:
            self._bridge.close()

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        chosen = self._bridge.subprotocol if self._bridge else None
        return chosen if chosen in subprotocols else None

    def open(self, *args: str, **kwargs: str) -> None:
        assert self._bridge is not None
        self._watch()
        self._bridge.start(self)

    async def on_message(self, message: str | bytes) -> None:
        if self._bridge is not None and not self._revoked:
            await self._bridge.to_upstream(message)

    def on_close(self) -> None:
        self._unwatch()
        if self._bridge is not None:
            self._bridge.client_closed(self.close_code, self.close_reason)

    def on_connection_close(self) -> None:
        self._client_gone = True
        self._unwatch()
        if self._websocket:
            super().on_connection_close()
            return
        # The client left mid-request: stop the upstream exchange, and let
        # tornado release a handler waiting for the rest of a streamed body.
        if self._exchange is not None:
            self._exchange.abort()
            self._exchange = None
        tornado.web.RequestHandler.on_connection_close(self)
