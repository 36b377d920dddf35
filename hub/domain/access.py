"""Who may reach a user's server through the proxy: one decision that every path asks.

    site = Site(public_origin="", public_scheme="")
    visit = Visit(method="GET", path="/user/alice/lab/tree", host="hub:8000", origin=None,
                  upgrade=False, by_token=False, wants_html=True, scheme="http")
    decide(visit, alice, role_scopes(alice), table.match(visit.path),
           admin_access=table.admin_access, site=site)          # ALLOW
    decide(visit, None, frozenset(), None, admin_access=False, site=site)
    # Refuse(401, "log in, ...", login=True): send the browser to the login page

The fast front (``hub.proxy.fast``), the hub's own ``/user/`` handler
(``hub.web.proxy.ProxyHandler``) and its user-host variant all call ``decide``
with what they know of the request, and act on the answer: the front passes an
``ALLOW`` on and hands every ``Refuse`` to the hub's handler, which answers it.
The answers, in the order they are asked:

- subdomain mode (``Site.hosts``): ``/user/<name>/`` only on ``<name>``'s own
  host; anywhere else 404 "There is nothing at this address.";
- nobody: 401, and a browser asking for a page is sent to log in; a hub API
  token that is unknown, revoked or expired: 401, saying so;
- a browser session that must change its password: to ``/hub/password``
  (a browser asking for a page) or 403;
- no route: 404 for an address that names no user; for another user's
  server (running, stopped or missing) the one 404 ``NO_SERVER``, so nobody
  learns which of others' servers run; 503 for the caller's own stopped server
  (``Refuse.owner`` says whose, for the page that offers to start it);
- a route the caller may not use (``Route.may_access``: the owner, users it is
  shared with, admins only with ``admin_access``): the same 404 ``NO_SERVER``;
- no ``access:servers`` scope: 403;
- a WebSocket upgrade, or a write that rides on a cookie, whose ``Origin`` is
  not the hub's own (scheme, host and port), or on a user host not that host's
  own: 403.

Cheap enough for every request of the fast front: no I/O, and nothing
allocated on the way to ``ALLOW``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit

from hub.domain.accounts import User
from hub.domain.routes import Route

# The scope a token needs to reach user servers; every user's session holds it.
ACCESS_SCOPE = "access:servers"
# One answer, whatever the reason, to whoever may not open a server at an address:
# another user's running or stopped server, or none at all.
NO_SERVER = "There is no server you may open at this address."
NOTHING_HERE = "There is nothing at this address."
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class UserHostRules(Protocol):
    """What the decision asks of subdomain mode (``hub.proxy.user_hosts.UserHosts``)."""

    def owner_of(self, host: str) -> str | None:
        """The user whose host ``host`` (a ``Host`` header) is; ``None`` for any other."""
        ...

    def origin_allowed(self, origin: str | None, host: str) -> bool:
        """Whether ``origin`` is the user host ``host``'s own (or absent)."""
        ...


@dataclass(frozen=True)
class Site:
    """What the decision knows of the hub itself; built once per proxy path.

    ``public_origin`` (``"https://hub.example.org"``) and ``public_scheme`` come
    from ``hub.public_url``; both empty when it is unset. ``hosts`` is set in
    subdomain mode only.
    """

    public_origin: str
    public_scheme: str
    hosts: UserHostRules | None = None


class Visit(NamedTuple):
    """The facts of one request that the decision reads (a tuple: cheap to make)."""

    method: str
    path: str  # canonical (``hub.domain.routes.canonical_path``), no query
    host: str  # the ``Host`` header
    origin: str | None  # the ``Origin`` header, if any
    upgrade: bool  # a WebSocket upgrade
    by_token: bool  # a hub API token came in ``Authorization`` (else a cookie, or nothing)
    wants_html: bool  # a browser asking for a page (``Accept: text/html``, no token)
    scheme: str  # the scheme this request came by, when ``Site.public_scheme`` is unset


class Allow:
    """Let the request through (``ALLOW``, the one instance)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ALLOW"


ALLOW = Allow()


@dataclass(frozen=True)
class Refuse:
    """Answer the request from the hub: ``status`` with ``reason`` (a sentence a person can
    act on). ``login``: send a browser to log in rather than answer 401. ``password``:
    send it to change its password rather than answer 403. ``owner``: on a 503, whose
    server is not running (the page offers to start it).
    """

    status: int
    reason: str
    login: bool = False
    password: bool = False
    owner: str = ""


Decision = Allow | Refuse

_NOTHING = Refuse(404, NOTHING_HERE)
_NOT_YOURS = Refuse(404, NO_SERVER)
_NO_SCOPE = Refuse(403, f"this token lacks the {ACCESS_SCOPE!r} scope")
_CROSS_SITE = Refuse(403, "requests from another site are not allowed here")
_BAD_TOKEN = Refuse(401, "the API token is unknown, revoked or expired")
_LOG_IN = "log in, or send an API token in the Authorization header"
_SIGN_IN = "sign in through the hub first, or send an API token"
_MUST_CHANGE = (
    "this session must change its password before anything else: open /hub/password in the browser"
)


def decide(
    visit: Visit,
    user: User | None,
    scopes: frozenset[str],
    found: tuple[Route, str] | None,
    *,
    admin_access: bool,
    site: Site,
) -> Decision:
    """Whether ``user`` (``None``: nobody) holding ``scopes`` may make ``visit``.

    ``found`` is the route table's match for ``visit.path`` (the route and the
    rest of the path after its prefix), ``admin_access`` the table's
    ``hub.admin_access`` rule. A bare prefix (``/user/alice``, rest ``""``) is
    allowed without the Origin rule: it is only redirected to the slash form,
    and nothing reaches the server.
    """
    hosts = site.hosts
    if hosts is not None:
        owner = hosts.owner_of(visit.host)
        if owner is None or _owner_in(visit.path) != owner:
            return _NOTHING
    if user is None:
        if visit.by_token:
            return _BAD_TOKEN
        login = visit.wants_html and visit.method in ("GET", "HEAD")
        return Refuse(401, _SIGN_IN if hosts is not None else _LOG_IN, login=login)
    if user.must_change_password and not visit.by_token:
        return Refuse(403, _MUST_CHANGE, password=visit.wants_html)
    if found is None:
        return _not_running(visit.path, user, admin_access)
    route, rest = found
    refused = route_refusal(route, user, scopes, admin_access=admin_access)
    if refused is not None:
        return refused
    if not rest:
        return ALLOW
    if visit.upgrade or (visit.method not in _SAFE_METHODS and not visit.by_token):
        # Cookies ride along on cross-site requests; tokens in a header do not.
        if hosts is not None:
            same_site = hosts.origin_allowed(visit.origin, visit.host)
        else:
            same_site = origin_allowed(
                visit.origin,
                host=visit.host,
                scheme=site.public_scheme or visit.scheme,
                public_origin=site.public_origin,
            )
        if not same_site:
            return _CROSS_SITE
    return ALLOW


def route_refusal(
    route: Route, user: User, scopes: frozenset[str], *, admin_access: bool
) -> Refuse | None:
    """Why ``user`` holding ``scopes`` may not use ``route``'s server, or ``None``.

    Asked by ``decide`` for each request, and by the tunnel registry again while
    a WebSocket or a stream stays open.
    """
    if not route.may_access(user.id, is_admin=user.is_admin, admin_access=admin_access):
        return _NOT_YOURS
    if ACCESS_SCOPE not in scopes:
        return _NO_SCOPE
    return None


def may_enter_host(user: User, owner: str, routes: Iterable[Route], *, admin_access: bool) -> bool:
    """Whether ``user`` may be let onto ``owner``'s host at all (subdomain mode): the
    owner, anyone a running server of the owner's is shared with, and admins when
    admin access is on (``Route.may_access``, the rule ``decide`` applies)."""
    if user.name == owner:
        return True
    return any(
        r.user == owner and r.may_access(user.id, is_admin=user.is_admin, admin_access=admin_access)
        for r in routes
    )


def _owner_in(path: str) -> str:
    """``alice`` for ``/user/alice/...``; ``""`` for a path outside ``/user/``."""
    if not path.startswith("/user/"):
        return ""
    return path[len("/user/") :].split("/", 1)[0]


def _not_running(path: str, user: User, admin_access: bool) -> Refuse:
    """No route matches ``path``: say so to its owner only."""
    owner = _owner_in(path)
    if not owner:
        return _NOTHING
    if user.name != owner and not (user.is_admin and admin_access):
        # Say nothing about other people's servers: the answer of a running one.
        return _NOT_YOURS
    return Refuse(503, f"{owner}'s server is not running.", owner=owner)


_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def _origin_of(scheme: str, netloc: str) -> str:
    netloc = netloc.lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default is not None and netloc.endswith(default):
        netloc = netloc[: -len(default)]
    return f"{scheme}://{netloc}"


def origin_allowed(origin: str | None, *, host: str, scheme: str, public_origin: str) -> bool:
    """Whether a request with this ``Origin`` comes from the hub's own pages.

        origin_allowed("http://hub:8000", host="hub:8000", scheme="http", public_origin="")
        # True; "https://hub:8000" on that http hub is another origin: False

    Scheme, host and port must all match: the hub's public origin when
    ``hub.public_url`` names one (behind a TLS-terminating proxy), or else the
    scheme the hub is reached by (``scheme``) with the request's ``Host``. No
    ``Origin`` at all means a client that is not a browser, which cannot be made
    to carry someone else's cookies.
    """
    if origin is None:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    seen = _origin_of(parts.scheme, parts.netloc)
    if public_origin and seen == _origin_of(*public_origin.split("://", 1)):
        return True
    return seen == _origin_of(scheme, host)
