"""Who a proxied request speaks for, answered from memory for a few seconds at a time.

    auth = ProxyAuth(accounts, cookie_secret=b"...", session_cookie="labdock-session",
                     max_age_days=1.5, ttl=2.0)
    credential = auth.credential(authorization, cookie_header)   # ("token", "ldk_...") or None
    grant = auth.cached(credential)            # a Grant, or None when not cached
    grant = await auth.resolve(credential)     # asks the DB; None when nobody

The proxy's fast path asks this on every request, so a DB round trip per
request is out of the question. A looked-up credential (an API token, or the
signed value of the session cookie) is kept for ``ttl`` seconds, after which
the next request asks the DB again. That is the bound on how long a change
takes to reach the proxy: a revoked or expired token, a logged-out session, a
password change (which ends the other sessions) or a disabled user stops
passing the fast path at most ``ttl`` seconds later (2 s by default). ``clear``
drops everything at once, for a process that learns of such a change.

Only positive answers are kept: an unknown credential is never cached, so that
it keeps being refused by the hub's own handler, which says why.

In subdomain mode (``hosts``), a request to a user's host presents that host's
own cookie instead of the hub's (``hub.proxy.user_hosts``): it names a hub
session, and is looked up, kept and dropped exactly as the hub's cookie is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tornado.httputil import parse_cookie
from tornado.web import decode_signed_value

from hub.domain.access import ACCESS_SCOPE
from hub.domain.accounts import TOKEN_PREFIX, Accounts, User, role_scopes

if TYPE_CHECKING:
    from hub.proxy.user_hosts import UserHosts


Credential = tuple[str, str]
"""``("token", value)``, ``("session", signed cookie value)`` or, on a user host,
``("host", hub session id)`` (its cookie already checked for that host)."""
# What a user host's cookie lets through: that host's servers, nothing of the hub's.
_HOST_SCOPES = frozenset({ACCESS_SCOPE})

Subject = tuple[str, str]
"""What a grant was looked up for, as the DB knows it: ``("token", value)``,
``("session", session id)`` (the cookie's signed value, unwrapped) or
``("host", session id)`` (a user host's cookie)."""


def hub_token(authorization: str | None) -> str | None:
    """The hub API token in an ``Authorization`` header, or ``None``.

    On ``/user/`` paths a header that holds no hub token (no ``ldk_`` prefix) is the
    app's own business: JupyterLab's page sends ``token <server secret>`` with every
    call, Airflow's UI its JWTs. Such a request is judged by its session cookie, as a
    browser's request, and the header is replaced upstream like any other.
    """
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() in ("token", "bearer") and value.startswith(TOKEN_PREFIX):
        return value
    return None


@dataclass(frozen=True)
class Grant:
    """Who a credential speaks for and what it may do; ``until`` is when to ask again."""

    user: User
    scopes: frozenset[str]
    until: float
    subject: Subject = ("", "")


async def look_up(accounts: Accounts, subject: Subject) -> tuple[User, frozenset[str]] | None:
    """Ask the DB, now, who ``subject`` speaks for and with which scopes; ``None``: nobody.

    A revoked or expired token, a session logged out or ended (a password change,
    a disabled user) all answer ``None``.
    """
    kind, value = subject
    if kind == "token":
        found = await accounts.token_grant(value)
        return (found.user, found.scopes) if found is not None else None
    if kind in ("session", "host"):
        user = await accounts.session_user(value)
        if user is None or user.must_change_password:
            return None  # a session that must change its password can only change it
        # A browser session carries its user's role; a user host's cookie, that host only.
        return (user, role_scopes(user) if kind == "session" else _HOST_SCOPES)
    return None


class ProxyAuth:
    """A small, time-bounded cache in front of ``Accounts`` for the proxy's fast path."""

    def __init__(
        self,
        accounts: Accounts,
        *,
        cookie_secret: bytes,
        session_cookie: str,
        max_age_days: float,
        ttl: float = 2.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        hosts: UserHosts | None = None,
    ) -> None:
        self._accounts = accounts
        self.hosts = hosts
        self._secret = cookie_secret
        self.session_cookie = session_cookie
        self._max_age_days = max_age_days
        self.ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._grants: dict[Credential, Grant] = {}

    def credential(
        self, authorization: str | None, cookie: str | None, host: str | None = None
    ) -> Credential | None:
        """What the request presents, read the way ``ProxyHandler.prepare`` reads it.

        A hub token in ``Authorization`` wins over a cookie, as in the hub's handlers.
        On a user host (subdomain mode), only that host's own cookie counts.
        """
        token = hub_token(authorization)
        if token is not None:
            return ("token", token)
        hosts = self.hosts
        if hosts is not None and host is not None and hosts.is_user_host(host):
            session = hosts.session_in(host, cookie)
            return ("host", session) if session else None
        if cookie and self.session_cookie in cookie:
            raw = parse_cookie(cookie).get(self.session_cookie)
            if raw:
                return ("session", raw)
        return None

    def cached(self, credential: Credential) -> Grant | None:
        """The remembered grant of ``credential`` if it is still fresh."""
        grant = self._grants.get(credential)
        if grant is None:
            return None
        if grant.until <= self._clock():
            del self._grants[credential]
            return None
        return grant

    async def resolve(self, credential: Credential) -> Grant | None:
        """Ask the accounts service who ``credential`` is; remember a positive answer."""
        kind, value = credential
        if kind == "token":
            subject: Subject = credential
        elif kind == "host":
            subject = credential  # the hub session id, its host cookie already checked
        else:
            session = decode_signed_value(
                self._secret, self.session_cookie, value, max_age_days=self._max_age_days
            )
            if not session:
                return None
            subject = ("session", session.decode())
        found = await look_up(self._accounts, subject)
        if found is None:
            return None
        if len(self._grants) >= self._max_entries:
            self._grants.clear()
        grant = Grant(found[0], found[1], self._clock() + self.ttl, subject)
        self._grants[credential] = grant
        return grant

    def forget_user(self, user_id: int) -> None:
        """Drop the grants of one user (their access was just revoked)."""
        for credential, grant in list(self._grants.items()):
            if grant.user.id == user_id:
                del self._grants[credential]

    def clear(self) -> None:
        """Forget every grant (a user was disabled, say); the next requests ask again."""
        self._grants.clear()

    def __len__(self) -> int:
        return len(self._grants)
