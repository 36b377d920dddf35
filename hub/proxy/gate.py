"""Which requests the front passes on itself, and the head each one sends upstream.

    gate = Gate(config)                                   # one per client connection
    credential = gate.credential(request)                 # ("session", ...) or None
    decided = gate.authorize(request, grant, body=body, peer="10.1.2.3", keep=True)
    # a Pass (route and upstream head), or None: the hub's handlers answer it
    gate.repeat(request)    # the same Pass again for a head repeated byte for byte

Whether a request may pass is ``hub.domain.access.decide``, asked here with
what the head says; every refusal, redirect and doubt goes to the hub's own
handler, which asks the same decision and answers it. What passes goes
upstream with the headers ``hub.proxy.headers`` selects, the server's secret
and ``X-Forwarded-*``.

Keep-alive clients repeat themselves, so the gate remembers per connection:
the header lines of the last request (a browser repeats them whatever the
path) and what they said, what the proxy adds for the last route and host,
and the last pass decided. A head identical in full gets that pass again
without its checks while the grant cache returns the very same grant and the
route table the very same route (both are replaced, never changed, so
anything that would change the answer makes a new decision).
"""

from __future__ import annotations

from hub.domain.access import ALLOW, Visit, decide
from hub.domain.errors import InvalidInput
from hub.domain.routes import Route, canonical_path, upstream_path
from hub.proxy.auth import Credential, Grant, hub_token
from hub.proxy.headers import Forwarded, forwarded_block, upstream_block
from hub.proxy.relay import FrontConfig, Pass
from hub.proxy.wire import BodyScanner, Head, body_length

# ``Connection`` values that name no header to drop beyond the hop-by-hop ones.
_PLAIN_CONNECTION = frozenset({"keep-alive", "close"})


class Gate:
    """One client connection's judge of requests, with what it remembers between them."""

    def __init__(self, config: FrontConfig) -> None:
        self.config = config
        self._forwarded = b""
        self._forwarded_for: Route | None = None
        self._forwarded_host = ""
        # The last pass decided, and what it was decided for.
        self._credential: Credential | None = None
        self._memo_request: Head | None = None
        self._memo_credential: Credential = ("", "")
        self._memo_grant: Grant | None = None
        self._memo_canonical = ""
        self._memo_pass: Pass | None = None
        # What the header lines of the last request said (kept while the next ones
        # repeat them, as a browser's do whatever the path): see ``_read_block``.
        self._block = b""
        self._block_credential: Credential | None = None
        self._block_token = False
        self._block_html = False
        self._block_upstream: bytes | None = None

    def repeat(self, request: Head) -> Pass | None:
        """The last pass again, if ``request`` is the head it was decided for and
        neither its grant nor its route has changed since; else ``None``."""
        if request is not self._memo_request:
            return None
        memo = self._memo_pass
        assert memo is not None
        config = self.config
        grant = config.auth.cached(self._memo_credential)
        if grant is None or grant is not self._memo_grant:
            return None
        found = config.routes.match(self._memo_canonical)
        if found is None or found[0] is not memo.route:
            return None
        config.activity.record(memo.route.server_id)
        return memo

    def credential(self, request: Head) -> Credential | None:
        """What ``request`` presents: a hub token, the hub's session cookie or, on a
        user host, that host's cookie; ``None`` for nothing the front can look up."""
        if request.block is not self._block:
            self._read_block(request)
        credential = self._credential = self._block_credential
        return credential

    def _read_block(self, request: Head) -> None:
        """What the request's header lines say about its credential and what goes upstream."""
        fields = request.fields
        authorization = fields.get("authorization")
        self._block = request.block
        self._block_credential = self.config.auth.credential(
            authorization, fields.get("cookie"), fields.get("host")
        )
        self._block_token = hub_token(authorization) is not None
        self._block_html = "text/html" in (fields.get("accept") or "")
        self._block_upstream = None  # made when first needed

    def authorize(
        self, request: Head, grant: Grant, *, body: BodyScanner, peer: str, keep: bool
    ) -> Pass | None:
        """The pass of ``request`` made with ``grant`` if ``decide`` allows it, with the
        head to send upstream; ``None`` for anything the hub's handler must answer.
        ``keep``: remember the pass for ``repeat``."""
        path, _, query = request.target.partition("?")
        try:
            canonical = canonical_path(path)
        except InvalidInput:
            return None
        if request.block is not self._block:
            self._read_block(request)
        presents_token = self._block_token
        wants_html = not presents_token and self._block_html
        config = self.config
        routes = config.routes
        found = routes.match(canonical)
        method = request.method
        fields = request.fields
        upgrade = (
            method == "GET"
            and (fields.get("upgrade") or "").lower() == "websocket"
            and "upgrade" in request.tokens("connection")
        )
        host = fields.get("host") or "127.0.0.1"
        origin = fields.get("origin")
        visit = Visit(method, canonical, host, origin, upgrade, presents_token, wants_html, "http")
        admin_access = routes.admin_access
        decision = decide(
            visit, grant.user, grant.scopes, found, admin_access=admin_access, site=config.site
        )
        if decision is not ALLOW or found is None or not found[1] or "," in host:
            # The hub's handler answers refusals and redirects, and refuses two Host headers.
            return None
        route, rest = found
        target = upstream_path(path, rest, route)
        if query or request.target.endswith("?"):
            target += "?" + query
        head = self._head(request, route, host, target, upgrade, body, peer)
        config.activity.record(route.server_id)
        decided = Pass(route, head, upgrade, grant, wants_html)
        if keep:
            assert self._credential is not None
            self._memo_request, self._memo_grant = request, grant
            self._memo_credential = self._credential
            self._memo_canonical, self._memo_pass = canonical, decided
        return decided

    def _head(
        self,
        request: Head,
        route: Route,
        host: str,
        target: str,
        upgrade: bool,
        body: BodyScanner,
        peer: str,
    ) -> bytes:
        """The request head that goes to ``route``'s server."""
        config = self.config
        # What the proxy adds depends only on the route and the client: kept per connection.
        if self._forwarded_for is not route or self._forwarded_host != host:
            self._forwarded_for, self._forwarded_host = route, host
            forwarded = Forwarded(
                host=host,
                remote_ip=peer,
                proto=config.public_scheme or "http",
                prefix=route.prefix[:-1],
                secret=route.secret,
                hub_cookies=config.hub_cookies,
            )
            self._forwarded = forwarded_block(forwarded)
        passed = self._block_upstream
        if passed is None:
            connection = request.fields.get("connection")
            if connection is not None and connection.lower() in _PLAIN_CONNECTION:
                connection = None  # names no other header: nothing more to drop
            passed = self._block_upstream = upstream_block(
                request.block,
                connection=connection,
                cookie=request.fields.get("cookie"),
                hub_cookies=config.hub_cookies,
            )
        method = request.method
        parts = [
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n".encode("latin1"),
            passed,
            self._forwarded,
        ]
        if upgrade:
            parts.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
        if body.is_chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        else:
            length = request.fields.get("content-length")
            if length is not None:
                parts.append(b"Content-Length: %d\r\n" % body_length(length))
            elif method in ("POST", "PUT", "PATCH"):
                parts.append(b"Content-Length: 0\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)
