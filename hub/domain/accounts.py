"""Users, passwords and browser sessions.

    accounts = Accounts(repo, hasher, clock=SystemClock())
    user, password = await accounts.create_user("alice")          # prints once
    user = await accounts.authenticate("alice", password)
    session_id = await accounts.start_session(user, hours=12)

Usernames are checked strictly: NFKC plus casefold, then ``[a-z0-9._-]{1,32}``
not starting with ``-`` or ``.``, and input whose normal form differs from what
was typed is refused, so ``\u212aate`` (Kelvin sign) never becomes ``kate``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from hub.domain.clock import Clock
from hub.domain.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized

# \Z, not $: $ also matches before a trailing newline, letting "admin\n" in.
_USERNAME = re.compile(r"^[a-z0-9_][a-z0-9._-]{0,31}\Z")
MIN_PASSWORD = 8
TOKEN_TOUCH_S = 60.0
# A token lives at most about 100 years; beyond that dates overflow.
MAX_TOKEN_DAYS = 36500
MAX_NOTE = 200


def check_username(raw: str) -> str:
    """Return ``raw`` if it is a valid username, else raise ``InvalidInput`` saying why."""
    if not isinstance(raw, str) or not raw:
        raise InvalidInput("username: must not be empty")
    normal = unicodedata.normalize("NFKC", raw).casefold()
    if normal != raw:
        raise InvalidInput(
            "username: must be written in lowercase ASCII as it is stored "
            f"(it would become {normal!r}); use only a-z, 0-9, '.', '_' and '-'"
        )
    if not _USERNAME.match(raw):
        raise InvalidInput(
            "username: 1 to 32 characters of a-z, 0-9, '.', '_' and '-', "
            "not starting with '-' or '.'"
        )
    return raw


def check_team_name(raw: str) -> str:
    """Team names follow the username rule, so they are safe in labels and URLs."""
    try:
        return check_username(raw)
    except InvalidInput as exc:
        raise InvalidInput("team name" + exc.message.removeprefix("username")) from None


def check_password(password: str) -> str:
    """Refuse passwords too short to be worth hashing."""
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"password: must be at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise InvalidInput("password: must be at most 1024 characters")
    return password


def one_time_password() -> str:
    """A random password, readable aloud, to be changed at first login."""
    return secrets.token_urlsafe(12)


@dataclass(frozen=True)
class User:
    """A person who may log in. ``id`` is immutable and keys every resource."""

    id: int
    name: str
    is_admin: bool = False
    disabled: bool = False
    must_change_password: bool = False
    last_login: datetime | None = None


SCOPES = frozenset(
    {
        "servers",
        "read:servers",
        "users",
        "admin:users",
        "admin:quotas",
        "admin:environments",
        "access:servers",
        "read:metrics",
    }
)
DEFAULT_TOKEN_SCOPES = frozenset({"servers", "read:servers", "access:servers"})
TOKEN_PREFIX = "ldk_"  # noqa: S105 - a marker that makes leaked tokens easy to scan for


@dataclass(frozen=True)
class TokenGrant:
    """Who a presented API token speaks for, and what it may do now (``effective_scopes``;
    ``token_id``: which token)."""

    user: User
    scopes: frozenset[str]
    token_id: int = 0


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about an API token: never the token, nor its hash."""

    id: int
    user_id: int
    note: str
    scopes: frozenset[str]
    created: datetime
    last_used: datetime | None
    expires: datetime | None


def split_scope(scope: str) -> tuple[str, str | None]:
    """``admin:users!user=bob`` → (``admin:users``, ``bob``); unfiltered → (scope, None)."""
    base, sep, condition = scope.partition("!")
    if not sep:
        return base, None
    key, _, value = condition.partition("=")
    return base, value if key == "user" else "\x00invalid"


def check_scopes(raw: str | None) -> frozenset[str]:
    """Parse ``servers,read:servers,servers!user=bob``; unknown scopes are refused by name."""
    if raw is None:
        return DEFAULT_TOKEN_SCOPES
    scopes = frozenset(s.strip() for s in raw.split(",") if s.strip())
    unknown = set()
    for scope in scopes:
        base, user = split_scope(scope)
        if base not in SCOPES or (user is not None and not _USERNAME.match(user)):
            unknown.add(scope)
    if unknown:
        raise InvalidInput(
            f"unknown scope(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(SCOPES))}"
            ", each optionally narrowed to one user as SCOPE!user=NAME"
        )
    if not scopes:
        raise InvalidInput("a token needs at least one scope")
    return scopes


def may_act_on(actor: User, scopes: frozenset[str], scope: str, target: str) -> bool:
    """Whether ``actor`` holding ``scopes`` may use ``scope`` on user ``target``'s things.

    Oneself: the plain scope. Another user: an admin holding the plain scope,
    or anyone holding the scope narrowed to that user (``servers!user=bob``).
    """
    if target == actor.name:
        return scope in scopes or f"{scope}!user={target}" in scopes
    if actor.is_admin and scope in scopes:
        return True
    return f"{scope}!user={target}" in scopes


def token_key(token: str) -> tuple[str, str]:
    """Split a token into its lookup prefix and the SHA-256 stored for it.

    Tokens carry 256 bits of randomness, so a fast hash is enough: unlike
    passwords they cannot be guessed from a dictionary.
    """
    return token[len(TOKEN_PREFIX) : len(TOKEN_PREFIX) + 8], hashlib.sha256(
        token.encode()
    ).hexdigest()


class PasswordHasher(Protocol):
    """Hashes and verifies passwords (argon2 in production)."""

    def hash(self, password: str) -> str: ...

    def verify(self, stored: str, password: str) -> bool: ...


class AccountRepo(Protocol):
    """Storage of users and sessions."""

    async def add_user(
        self, name: str, password_hash: str | None, *, is_admin: bool, must_change: bool
    ) -> User: ...

    async def user_by_name(self, name: str) -> User | None: ...

    async def user_by_id(self, user_id: int) -> User | None: ...

    async def password_hash(self, user_id: int) -> str | None: ...

    async def set_password(
        self, user_id: int, password_hash: str, *, must_change: bool
    ) -> None: ...

    async def count_admins(self) -> int: ...

    async def record_login(self, user_id: int, at: datetime) -> None: ...

    async def add_session(
        self, session_id: str, user_id: int, created: datetime, expires: datetime
    ) -> None: ...

    async def session_user(self, session_id: str, now: datetime) -> User | None: ...

    async def delete_session(self, session_id: str) -> None: ...

    async def delete_sessions_of(self, user_id: int, *, keep: str | None = None) -> None:
        """End every session of the user, but for the session ``keep`` (its id) if given."""

    async def add_token(
        self,
        user_id: int,
        prefix: str,
        token_hash: str,
        scopes: frozenset[str],
        note: str,
        created: datetime,
        expires: datetime | None,
    ) -> int:
        """Store a token's hash; return the token's id, never reused."""

    async def token(self, prefix: str) -> tuple[User, str, TokenInfo] | None:
        """The owner, stored hash and description of the token with this prefix."""

    async def tokens_of(self, user_id: int) -> list[TokenInfo]:
        """The user's tokens, oldest first (expired ones too, until revoked)."""

    async def delete_token(self, user_id: int, token_id: int) -> bool:
        """Revoke the user's token ``token_id``; whether there was one."""

    async def delete_tokens_of(self, user_id: int) -> int:
        """Revoke every token of the user; how many there were."""

    async def touch_token(self, prefix: str, at: datetime) -> None: ...

    async def all_users(self) -> list[User]: ...

    async def set_flags(
        self, user_id: int, *, is_admin: bool | None = None, disabled: bool | None = None
    ) -> None: ...


@dataclass(frozen=True)
class Membership:
    """A user's place in a team: writers may change the team's shared volume."""

    team_id: int
    team: str
    writer: bool


@dataclass(frozen=True)
class TeamSummary:
    """A team and the names of its members, for the admin console."""

    id: int
    name: str
    members: tuple[str, ...] = ()


class TeamDirectory(Protocol):
    """Which teams a user belongs to."""

    async def ensure(self, name: str) -> int: ...

    async def leave(self, user_id: int, team: str) -> None: ...

    async def all_teams(self) -> list[TeamSummary]: ...

    async def memberships(self, user_id: int) -> list[Membership]: ...

    async def join(self, user_id: int, team: str, role: str = "member") -> None: ...

    async def find(self, name: str) -> int | None: ...

    async def team_ids_of(self, user_id: int) -> frozenset[int]: ...

    async def teams_of(self, user_id: int) -> list[str]: ...


class Accounts:
    """The account rules: creation, login, sessions and password changes."""

    def __init__(
        self,
        repo: AccountRepo,
        hasher: PasswordHasher,
        clock: Clock,
        *,
        token_expiry_days: float = 0.0,
    ) -> None:
        self._repo = repo
        # Applied when a token is issued without an expiry; 0: such tokens never expire.
        self._token_expiry_days = token_expiry_days
        self._hasher = hasher
        self._clock = clock
        # Verifying against a real hash for unknown users keeps timing uniform.
        self._dummy_hash = hasher.hash(secrets.token_urlsafe(16))
        self._touched: dict[str, datetime] = {}

    async def create_user(
        self, name: str, password: str | None = None, *, is_admin: bool = False
    ) -> tuple[User, str | None]:
        """Create a user. Without ``password``, return a one-time one to show once."""
        check_username(name)
        if await self._repo.user_by_name(name) is not None:
            raise Conflict(f"user {name!r} already exists")
        generated = None
        if password is None:
            generated = password = one_time_password()
        else:
            check_password(password)
        user = await self._repo.add_user(
            name, self._hasher.hash(password), is_admin=is_admin, must_change=generated is not None
        )
        return user, generated

    async def ensure_admin(self, name: str) -> str | None:
        """On a hub with no admin, create ``name`` as one; return its one-time password."""
        if await self._repo.count_admins() > 0:
            return None
        existing = await self._repo.user_by_name(name)
        if existing is not None:
            raise Conflict(
                f"no admin exists and user {name!r} is not one; run "
                f"`labdock user add NEWNAME --admin` or set hub.admin_user"
            )
        _, password = await self.create_user(name, is_admin=True)
        return password

    async def authenticate(self, name: str, password: str) -> User:
        """The user whose name and password match, or ``Unauthorized``."""
        user = await self._repo.user_by_name(name) if _USERNAME.match(name or "") else None
        stored = await self._repo.password_hash(user.id) if user else None
        ok = self._hasher.verify(stored or self._dummy_hash, password)
        if user is None or stored is None or not ok:
            raise Unauthorized("wrong username or password")
        if user.disabled:
            raise Forbidden("this account is disabled; ask an admin")
        await self._repo.record_login(user.id, self._clock.now())
        return user

    async def start_session(self, user: User, *, hours: float) -> str:
        """Open a browser session and return its id (for a signed cookie)."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock.now()
        await self._repo.add_session(session_id, user.id, now, now + timedelta(hours=hours))
        return session_id

    async def session_user(self, session_id: str) -> User | None:
        """The enabled user behind a live session, or ``None``."""
        user = await self._repo.session_user(session_id, self._clock.now())
        if user is None or user.disabled:
            return None
        return user

    async def end_session(self, session_id: str) -> None:
        """Log a session out."""
        await self._repo.delete_session(session_id)

    async def change_password(
        self, user_id: int, old: str, new: str, *, current_session: str | None = None
    ) -> None:
        """Change a password after checking the old one; every session but ``current_session``
        ends, so a thief who held one of them is out."""
        stored = await self._repo.password_hash(user_id)
        if stored is None or not self._hasher.verify(stored, old):
            raise Unauthorized("the current password is wrong")
        if old == new:
            raise InvalidInput("password: the new password must differ from the current one")
        check_password(new)
        await self._repo.set_password(user_id, self._hasher.hash(new), must_change=False)
        await self._repo.delete_sessions_of(user_id, keep=current_session)

    async def create_token(
        self,
        user: User,
        *,
        scopes: frozenset[str] = DEFAULT_TOKEN_SCOPES,
        expires_in_days: float | None = None,
        note: str = "",
    ) -> str:
        """Issue an API token and return it; only its hash is kept.

        Without ``expires_in_days``, the hub's default expiry applies (if it has one).
        """
        token, _ = await self.issue_token(
            user, scopes=scopes, expires_in_days=expires_in_days, note=note
        )
        return token

    async def issue_token(
        self,
        user: User,
        *,
        scopes: frozenset[str] = DEFAULT_TOKEN_SCOPES,
        expires_in_days: float | None = None,
        note: str = "",
    ) -> tuple[str, TokenInfo]:
        """Issue an API token; return it (to show once) and what may be shown of it later."""
        if expires_in_days is None:
            expires_in_days = self._token_expiry_days or None
        elif not expires_in_days > 0 or expires_in_days > MAX_TOKEN_DAYS:
            raise InvalidInput(
                f"expires_in: must be a number of days above 0 and at most {MAX_TOKEN_DAYS}"
            )
        if len(note) > MAX_NOTE:
            raise InvalidInput(f"note: must be at most {MAX_NOTE} characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        prefix, digest = token_key(token)
        now = self._clock.now()
        expires = now + timedelta(days=expires_in_days) if expires_in_days else None
        token_id = await self._repo.add_token(user.id, prefix, digest, scopes, note, now, expires)
        return token, TokenInfo(
            id=token_id,
            user_id=user.id,
            note=note,
            scopes=scopes,
            created=now,
            last_used=None,
            expires=expires,
        )

    async def tokens_of(self, user: User) -> list[TokenInfo]:
        """``user``'s API tokens, oldest first."""
        return await self._repo.tokens_of(user.id)

    async def token_of(self, user: User, token_id: int) -> TokenInfo:
        """``user``'s token ``token_id``, or ``NotFound``."""
        for info in await self._repo.tokens_of(user.id):
            if info.id == token_id:
                return info
        raise NotFound(f"{user.name} has no token {token_id}")

    async def revoke_token(self, user: User, token_id: int) -> None:
        """Revoke ``user``'s token ``token_id`` at once, or ``NotFound``."""
        if not await self._repo.delete_token(user.id, token_id):
            raise NotFound(f"{user.name} has no token {token_id}")

    async def revoke_tokens(self, user: User) -> int:
        """Revoke every API token of ``user``; return how many there were."""
        return await self._repo.delete_tokens_of(user.id)

    async def token_grant(self, token: str) -> TokenGrant | None:
        """The grant behind a presented token, or ``None`` if it is unknown or expired."""
        if not token.startswith(TOKEN_PREFIX) or len(token) < len(TOKEN_PREFIX) + 16:
            return None
        prefix, digest = token_key(token)
        found = await self._repo.token(prefix)
        if found is None:
            return None
        user, stored, info = found
        now = self._clock.now()
        if not hmac.compare_digest(stored, digest) or user.disabled:
            return None
        if info.expires is not None and info.expires <= now:
            return None
        # last_used is for people, not for security: write it at most once a minute.
        last = self._touched.get(prefix)
        if last is None or (now - last).total_seconds() >= TOKEN_TOUCH_S:
            self._touched[prefix] = now
            await self._repo.touch_token(prefix, now)
        return TokenGrant(user=user, scopes=effective_scopes(user, info.scopes), token_id=info.id)

    async def update(
        self, user: User, *, is_admin: bool | None = None, disabled: bool | None = None
    ) -> User:
        """Change a user's admin flag or disable them; a disabled user's sessions end."""
        if (
            (is_admin is False or disabled)
            and user.is_admin
            and await self._repo.count_admins() <= 1
        ):
            raise Conflict("this is the last admin; make someone else an admin first")
        await self._repo.set_flags(user.id, is_admin=is_admin, disabled=disabled)
        if disabled:
            await self._repo.delete_sessions_of(user.id)
        updated = await self._repo.user_by_id(user.id)
        assert updated is not None
        return updated

    async def reset_password(self, user: User, *, revoke_tokens: bool = False) -> str:
        """Give ``user`` a one-time password to change at next login; all their sessions end,
        and with ``revoke_tokens`` all their API tokens too (for a stolen account)."""
        password = one_time_password()
        await self._repo.set_password(user.id, self._hasher.hash(password), must_change=True)
        await self._repo.delete_sessions_of(user.id)
        if revoke_tokens:
            await self._repo.delete_tokens_of(user.id)
        return password

    async def all_users(self) -> list[User]:
        """Every user, by name."""
        return await self._repo.all_users()

    async def get(self, name: str) -> User:
        """The user called ``name``, or ``NotFound``."""
        user = await self._repo.user_by_name(name)
        if user is None:
            raise NotFound(f"no user {name!r}")
        return user


# Roles ----------------------------------------------------------------------
# Who may hold which scope is decided here, once: a browser session carries its
# user's role, and a token carries what it was granted cut down to that role.
# So an admin scope works only while its holder is an admin, whatever a token says.

USER_SCOPES = DEFAULT_TOKEN_SCOPES
"""What every user may do with their own things (and, narrowed, with things shared to them)."""

ADMIN_ONLY_SCOPES = SCOPES - USER_SCOPES
"""Scopes that act on other people or the whole hub: admins only."""


def role_scopes(user: User) -> frozenset[str]:
    """The scopes a browser session of ``user`` carries: their role's, no more."""
    return SCOPES if user.is_admin else USER_SCOPES


def effective_scopes(user: User, granted: frozenset[str]) -> frozenset[str]:
    """What a token granted ``granted`` may do now that its owner is ``user``.

    An admin's token keeps what it was granted. Anyone else's loses every
    admin-only scope, narrowed or not, so a token minted while its owner was an
    admin (or by mistake) never outlives that role.
    """
    if user.is_admin:
        return granted
    return frozenset(s for s in granted if split_scope(s)[0] not in ADMIN_ONLY_SCOPES)
