"""The proxy's route table: which container answers ``/user/<name>/<server>/``.

    table = RouteTable()
    table.add(Route(user="alice", server="lab", user_id=7, server_id=42,
                    target="http://172.18.0.5:8888", secret="s", keep_prefix=True))
    table.match("/user/alice/lab/api/status")   # (route, "/api/status")

Lookup is two dict probes whatever the number of servers: the named server
``(alice, lab)`` first, then alice's default server ``(alice, "")``. The path
must already be canonical (see ``canonical_path``); ``/user/al`` never matches
``/user/alice`` because names are compared whole, never by prefix.
``upstream_path`` then says which path the matched server is sent.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from hub.domain.errors import InvalidInput

# In the path as received: path parameters, backslashes, and anything that is
# not printable ASCII (browsers percent-encode everything else).
_RAW_BAD = re.compile(r"[^\x21-\x7e]|[;\\]")
# Characters a canonical path may hold unencoded when it is sent upstream.
_PATH_SAFE = "/!$&'()*+,=:@-._~"
# After decoding: control characters, which some servers strip or stop at.
_DECODED_BAD = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Route:
    """Where one running server answers, and who may reach it."""

    user: str
    server: str
    user_id: int
    server_id: int
    target: str
    secret: str
    keep_prefix: bool = True
    shared_with: frozenset[int] = field(default_factory=frozenset)

    @property
    def prefix(self) -> str:
        """The public prefix, with a trailing slash: ``/user/alice/lab/``."""
        return f"/user/{self.user}/{self.server}/" if self.server else f"/user/{self.user}/"

    def may_access(self, user_id: int, *, is_admin: bool, admin_access: bool = False) -> bool:
        """The owner and users it is shared with may pass; admins only with ``admin_access``.

        Admin access is off unless the hub's ``hub.admin_access`` setting turns it on
        (see ``RouteTable``): the page of a user's server runs in the admin's browser,
        on the hub's origin when servers are reached by path, and could act as the admin.
        """
        return user_id == self.user_id or user_id in self.shared_with or (is_admin and admin_access)


def canonical_path(raw: str) -> str:
    """Normalize a request path once, before any matching, or refuse it.

        canonical_path("/user//alice/./lab/")       # "/user/alice/lab/"
        canonical_path("/user/bob/%2e%2e/alice/")   # "/user/alice/"
        canonical_path("/user/alice%2Fx/")          # InvalidInput

    Refused (``InvalidInput``): encoded slashes, backslashes or NUL (``%2F``,
    ``%5C``, ``%00``); a literal ``;`` (path parameters) or backslash; spaces,
    control characters or non-ASCII bytes not percent-encoded; control
    characters once decoded; and ``..`` that climbs above the root. Collapsed:
    ``//`` and ``/./``. ``%2e%2e`` is decoded first, so it is treated exactly as
    ``..``. An encoded ``;`` (``%3B``) is data, as in a file name, and stays.
    The result is percent-decoded; a query string is dropped.
    """
    path = raw.split("?", 1)[0]
    if _RAW_BAD.search(path):
        raise InvalidInput(
            "the path contains a ';', a backslash, a space or a character that is not "
            "percent-encoded"
        )
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered or "%00" in lowered:
        raise InvalidInput("the path contains an encoded slash, backslash or NUL")
    decoded = unquote(path) if "%" in path else path
    if _DECODED_BAD.search(decoded):
        raise InvalidInput("the path contains an encoded control character")
    if not decoded.startswith("/"):
        raise InvalidInput("the path must start with '/'")
    if "/." not in decoded and "//" not in decoded:
        return decoded  # nothing to collapse: the common case, kept cheap
    depth = 0
    for segment in decoded.split("/")[1:]:
        if segment == "..":
            depth -= 1
            if depth < 0:
                raise InvalidInput("the path climbs above the root with '..'")
        elif segment not in ("", "."):
            depth += 1
    normal = posixpath.normpath(decoded)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")  # normpath keeps a leading "//" (POSIX)
    if decoded.endswith(("/", "/.")) and normal != "/":
        normal += "/"
    return normal


def upstream_path(raw: str, rest: str, route: Route) -> str:
    """The path to send upstream for a request that ``route`` matched.

        upstream_path("/user/%61lice/a%20b", "/a b", alice)     # "/user/alice/a%20b"
        upstream_path("/user/alice//x/../y", "/y", alice)       # "/user/alice/y"

    ``rest`` is the canonical (decoded) part after the prefix, as ``match``
    returns it. The client's own bytes for that part are kept when they say the
    same thing, so percent-encodings reach the server untouched; otherwise
    ``rest`` is encoded afresh. The prefix sent is always the canonical one, and
    only when ``route.keep_prefix``.
    """
    depth = 3 if route.server else 2  # "", "user", name[, server]
    parts = raw.split("/", depth + 1)
    raw_rest = "/" + parts[depth + 1] if len(parts) > depth + 1 else ""
    if unquote(raw_rest) != rest:
        raw_rest = quote(rest, safe=_PATH_SAFE)
    return route.prefix[:-1] + raw_rest if route.keep_prefix else raw_rest


class RouteTable:
    """Routes in memory, keyed by (user name, server name), and who may use them.

    ``admin_access`` (the ``hub.admin_access`` setting, off by default) lets admins
    open every user's server through the proxy. Every path of the proxy asks
    ``hub.domain.access.decide``, which applies it with ``Route.may_access``.
    """

    def __init__(self, *, admin_access: bool = False) -> None:
        self.admin_access = admin_access
        self._routes: dict[tuple[str, str], Route] = {}
        self._by_server: dict[int, tuple[str, str]] = {}
        self._on_remove: list[Callable[[Route], None]] = []

    def on_remove(self, callback: Callable[[Route], None]) -> None:
        """Call ``callback(route)`` whenever a route is removed, or replaced by one to
        another target, so that what was kept for it (pooled connections, activity)
        can go too.
        """
        self._on_remove.append(callback)

    def add(self, route: Route) -> None:
        """Add or replace the route of ``route.server_id``."""
        old = self._drop(route.server_id)
        key = (route.user, route.server)
        self._routes[key] = route
        self._by_server[route.server_id] = key
        if old is not None and old.target != route.target:
            for callback in self._on_remove:
                callback(old)

    def remove(self, server_id: int) -> Route | None:
        """Drop the route of a server; return it if there was one."""
        old = self._drop(server_id)
        if old is not None:
            for callback in self._on_remove:
                callback(old)
        return old

    def _drop(self, server_id: int) -> Route | None:
        key = self._by_server.pop(server_id, None)
        return self._routes.pop(key, None) if key else None

    def allows(self, route: Route, user_id: int, *, is_admin: bool) -> bool:
        """Whether the user may reach ``route``'s server through the proxy."""
        return route.may_access(user_id, is_admin=is_admin, admin_access=self.admin_access)

    def get(self, server_id: int) -> Route | None:
        key = self._by_server.get(server_id)
        return self._routes.get(key) if key else None

    def match(self, path: str) -> tuple[Route, str] | None:
        """The route for a canonical ``/user/...`` path and the rest after its prefix.

        ``/user/alice/lab`` (no trailing slash) matches too, with rest ``""``, so
        that the proxy can redirect it to the slash form.
        """
        if not path.startswith("/user/"):
            return None
        parts = path[len("/user/") :].split("/", 2)
        user = parts[0]
        if not user:
            return None
        if len(parts) >= 2 and parts[1]:
            named = self._routes.get((user, parts[1]))
            if named is not None:
                rest = "/" + parts[2] if len(parts) == 3 else ""
                return named, rest
        default = self._routes.get((user, ""))
        if default is None:
            return None
        rest = path[len("/user/") + len(user) :]
        return default, rest

    def __iter__(self) -> Iterator[Route]:
        return iter(list(self._routes.values()))

    def __len__(self) -> int:
        return len(self._routes)
