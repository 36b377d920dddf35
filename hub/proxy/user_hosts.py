"""Subdomain mode: each user's servers on a host of their own, ``<name>.<user_domain>``.

    hosts = UserHosts(domain="users.example.org", hub_url="https://hub.example.org",
                      secret=b"...", max_age_days=1.5)
    hosts.owner_of("alice.users.example.org")        # "alice"
    hosts.origin_of("alice")                         # "https://alice.users.example.org"
    hosts.session_in("alice.users.example.org", cookie_header)   # a hub session id, or None

In path mode every user's server answers under the hub's own origin, so a page
that a user's server sends can script the hub with the credentials of whoever
opens it. In subdomain mode ``/user/<name>/...`` is served only on
``<name>.<user_domain>``, where the hub's cookies are never sent (they are
host-only on the hub's host) and the hub's pages and API are never served.

How a browser gets in, with no credential of the hub's on that host:

1. ``GET https://alice.users.example.org/user/alice/lab`` has no valid host
   cookie: the user host sets a random *state* in a host-only cookie and
   sends the browser to ``<hub>/hub/user-auth?next=<that url>&state=<state>``.
2. The hub requires its session (login first), checks that this user may use
   alice's servers, and mints a code (``AuthCodes``) that lives at most
   ``CODE_SECONDS`` and opens once, bound to the session, to the host, to
   the state and to ``next``; then sends the browser to
   ``https://alice.users.example.org/_labdock/auth?code=...``.
3. The user host redeems the code, checks the state cookie against it (so a
   code minted for someone else's session cannot be planted in this browser),
   and sets the host cookie: HttpOnly, SameSite=Lax, host-only, signed with a
   name that holds the host, naming the hub session. Then it goes to ``next``.

The host cookie stands for the hub session, so logging out, the session's end,
a password change or disabling the user closes every user host too (within the
proxy's grant cache time). Neither cookie is ever sent to a user's server.

The names of user hosts are DNS labels: a user name that is one already
(``a-z``, ``0-9``, ``-`` inside, no ``--``) is its own label; any other name is
``u--`` and the name in lower-case base32 (``a.b`` → ``u--mexge``), which no
plain label can be, as plain labels never hold ``--``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from tornado.web import create_signed_value, decode_signed_value

from hub.domain.accounts import check_username
from hub.domain.errors import InvalidInput
from hub.domain.routes import canonical_path

# The one path of the hub's on a user host: where a code becomes the host's cookie.
CALLBACK_PATH = "/_labdock/auth"
# Where the hub mints codes for user hosts (on the hub's host).
AUTH_PATH = "/hub/user-auth"
CODE_SECONDS = 30.0
STATE_SECONDS = 300
_PLAIN_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z")
_ENCODED = "u--"
_STATE = re.compile(r"[A-Za-z0-9_-]{16,64}\Z")
_PRINTABLE = re.compile(r"[\x21-\x7e]*\Z")


def host_label(name: str) -> str:
    """The DNS label of user ``name``'s host (see the module's docstring)."""
    if _PLAIN_LABEL.match(name) and "--" not in name:
        return name
    return _ENCODED + base64.b32encode(name.encode()).decode().lower().rstrip("=")


def label_owner(label: str) -> str | None:
    """The user name whose host label is ``label``, or ``None`` if no user name has it."""
    if label.startswith(_ENCODED):
        body = label[len(_ENCODED) :].upper()
        try:
            name = base64.b32decode(body + "=" * (-len(body) % 8)).decode()
        except (binascii.Error, ValueError):
            return None
    else:
        name = label
    try:
        check_username(name)
    except InvalidInput:
        return None
    return name if host_label(name) == label else None


def host_name(host: str) -> str:
    """``Host`` without its port, in lower case (``[::1]:8000`` → ``[::1]``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


@dataclass(frozen=True)
class Pending:
    """A minted code, waiting for its user host to redeem it."""

    session: str
    host: str  # the user host's name, no port
    state: str
    next_url: str
    expires: float


class AuthCodes:
    """Short-lived, single-use codes that carry a hub session to one user host.

    In memory: the hub's handlers and its front run in one process, and a
    code outlives no restart (the browser just asks for another).
    """

    def __init__(
        self,
        *,
        ttl: float = CODE_SECONDS,
        max_pending: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._max = max_pending
        self._clock = clock
        self._pending: dict[str, Pending] = {}

    def mint(self, *, session: str, host: str, state: str, next_url: str) -> str:
        """A new code for ``session`` on ``host``; it opens once, within ``ttl`` seconds."""
        now = self._clock()
        if len(self._pending) >= self._max:
            self._pending = {c: p for c, p in self._pending.items() if p.expires > now}
            if len(self._pending) >= self._max:
                self._pending.clear()  # a flood: the honest codes among it are asked again
        code = secrets.token_urlsafe(32)
        self._pending[code] = Pending(session, host, state, next_url, now + self.ttl)
        return code

    def redeem(self, code: str, *, host: str) -> Pending:
        """The pending code's content, used up; ``InvalidInput`` if unknown, used,
        expired or minted for another host."""
        pending = self._pending.pop(code, None)
        if pending is None or pending.expires <= self._clock():
            raise InvalidInput("this sign-in link was already used or has expired")
        if pending.host != host:
            raise InvalidInput("this sign-in link belongs to another address")
        return pending

    def __len__(self) -> int:
        return len(self._pending)


class UserHosts:
    """Where users' hosts are, and the rules that hold only there."""

    def __init__(
        self,
        *,
        domain: str,
        hub_url: str,
        secret: bytes,
        max_age_days: float,
        codes: AuthCodes | None = None,
    ) -> None:
        hub = urlsplit(hub_url)
        self.domain = domain.lower()
        self.scheme = hub.scheme
        # Browsers leave a scheme's own port out of Origin: so do user hosts' addresses.
        default = {"http": 80, "https": 443}.get(hub.scheme)
        self.port = None if hub.port == default else hub.port
        self.hub_origin = f"{hub.scheme}://{hub.netloc}".lower()
        self._secret = secret
        self._max_age_days = max_age_days
        secure = hub.scheme == "https"
        # __Host-: the browser refuses it with a Domain attribute or without Secure, so
        # no other host under the domain can plant one here (HTTPS only).
        self.cookie = "__Host-labdock-user" if secure else "labdock-user"
        self.state_cookie = "__Host-labdock-state" if secure else "labdock-state"
        self.secure = secure
        self.codes = codes if codes is not None else AuthCodes()
        self.host_pattern = r".+\." + re.escape(self.domain)
        self._owners: dict[str, str | None] = {}

    # Names and addresses --------------------------------------------------

    def owner_of(self, host: str) -> str | None:
        """The user whose host ``host`` (a ``Host`` header) is; ``None`` for any other."""
        try:
            return self._owners[host]
        except KeyError:
            pass
        name = host_name(host)
        label, dot, rest = name.partition(".")
        owner = label_owner(label) if dot and rest == self.domain else None
        if len(self._owners) >= 4096:
            self._owners.clear()  # asked on every proxied request: kept, but bounded
        self._owners[host] = owner
        return owner

    def is_user_host(self, host: str) -> bool:
        """Whether ``host`` is under the user domain (a user's host or a name of none)."""
        return host_name(host).endswith("." + self.domain)

    def netloc_of(self, owner: str) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{host_label(owner)}.{self.domain}{port}"

    def origin_of(self, owner: str) -> str:
        """``https://alice.users.example.org`` (with the hub's port, if it has one)."""
        return f"{self.scheme}://{self.netloc_of(owner)}"

    def may_serve(self, host: str, owner: str) -> bool:
        """Whether ``/user/<owner>/...`` may be served on ``host``: on its owner's host only."""
        return self.owner_of(host) == owner

    def origin_allowed(self, origin: str | None, host: str) -> bool:
        """On a user host, WebSocket upgrades and cookie writes come from that host's own pages.

        No ``Origin`` at all means a client that is not a browser, which cannot be
        made to carry someone else's cookies.
        """
        if origin is None:
            return True
        owner = self.owner_of(host)
        return owner is not None and origin.strip().lower() == self.origin_of(owner)

    def check_next(self, url: str) -> tuple[str, str]:
        """``(owner, host name)`` of ``next`` if it is an address of a user's server on
        that user's own host; ``InvalidInput`` for anything else (no open redirects)."""
        refused = InvalidInput(
            "next: expected the address of a user's server, such as "
            f"{self.origin_of('alice')}/user/alice/"
        )
        if not url or len(url) > 4096 or not _PRINTABLE.match(url):
            raise refused
        parts = urlsplit(url)
        if parts.scheme != self.scheme or parts.fragment or "@" in parts.netloc:
            raise refused
        owner = self.owner_of(parts.netloc)
        if owner is None or parts.netloc.lower() != self.netloc_of(owner):
            raise refused
        try:
            path = canonical_path(parts.path)
        except InvalidInput:
            raise refused from None
        if path != f"/user/{owner}" and not path.startswith(f"/user/{owner}/"):
            raise refused
        return owner, host_name(parts.netloc)

    # The host cookie --------------------------------------------------------

    def _signing_name(self, host: str) -> str:
        # The host is part of what is signed: a value made for one user's host is
        # worth nothing on another's, nor as the hub's own session cookie.
        return f"{self.cookie}@{host_name(host)}"

    def sign(self, host: str, session: str) -> str:
        """The host cookie's value for hub session ``session`` on ``host``."""
        return create_signed_value(self._secret, self._signing_name(host), session).decode()

    def session_in(self, host: str, cookie: str | None) -> str | None:
        """The hub session that ``host``'s cookie names, if one verifies for this host.

        Every cookie of that name is tried: another host under the same domain may
        have planted one (without ``__Host-``, over HTTP), which must not hide ours.
        """
        if not cookie or self.cookie not in cookie:
            return None
        name = self._signing_name(host)
        for pair in cookie.split(";"):
            key, sep, value = pair.strip().partition("=")
            if not sep or key != self.cookie:
                continue
            found = decode_signed_value(
                self._secret, name, value.strip('"'), max_age_days=self._max_age_days
            )
            if found:
                try:
                    return found.decode()
                except UnicodeDecodeError:
                    return None
        return None

    def state_in(self, cookie: str | None) -> str | None:
        """The state cookie's value, if it looks like one we set."""
        if not cookie or self.state_cookie not in cookie:
            return None
        for pair in cookie.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key == self.state_cookie and _STATE.match(value):
                return value
        return None

    @staticmethod
    def same_state(expected: str, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(expected, presented)

    @staticmethod
    def valid_state(state: str) -> bool:
        return bool(_STATE.match(state))
