"""OpenID Connect sign-in rules: who a provider's person is here, and whether they may come in.

    flow = Flow.start(next_url="/user/alice/")        # state, nonce and PKCE verifier
    flow.challenge                                     # S256 code challenge for the provider
    identities = OidcIdentities(repo, accounts, clock)
    user = await identities.sign_in(issuer, Person(subject="248289761001",
                                                   username="Alice", groups=frozenset()),
                                    policy=GroupPolicy())

People are keyed by (issuer, subject), never by name: a provider may rename
someone, and a name can be re-used. On first sign-in a local user is created
with the provider's username, lowercased only if it is plain ASCII: anything
that NFKC would fold into another name (``\u212aate``, the Kelvin sign) is
refused, as is a name already used by a local account, unless an admin linked
that account to this person.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol

from hub.domain.accounts import Accounts, User, check_username
from hub.domain.clock import Clock
from hub.domain.errors import Conflict, Forbidden, InvalidInput, NotFound


def b64url(data: bytes) -> str:
    """Base64url without padding, as PKCE and JOSE write it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of a verifier (RFC 7636 section 4.2)."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass(frozen=True)
class OidcSettings:
    """Login through a generic OpenID Connect provider, beside local accounts.

    Empty ``issuer``: off. The provider must allow the redirect URI
    ``<hub.public_url>/hub/oauth_callback``.
    """

    issuer: str = ""
    client_id: str = ""
    client_secret: str = ""
    scopes: str = "openid profile email"
    # The claim that names the local user on first login.
    username_claim: str = "preferred_username"
    # Shown on the login page as "Sign in with <name>"; empty: the issuer's host.
    name: str = ""
    groups_claim: str = "groups"
    # Comma-separated groups; empty allowed_groups lets in anyone the provider signs in.
    allowed_groups: str = ""
    # Members of these groups are made admins (and others unmade) at each login.
    admin_groups: str = ""


@dataclass(frozen=True)
class Flow:
    """One sign-in in progress, kept in a signed short-lived cookie between the two legs."""

    state: str
    nonce: str
    verifier: str
    next_url: str

    @classmethod
    def start(cls, next_url: str) -> Flow:
        return cls(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            # 43-128 characters of [A-Za-z0-9-._~]; token_urlsafe(64) gives 86.
            verifier=secrets.token_urlsafe(64),
            next_url=next_url,
        )

    @property
    def challenge(self) -> str:
        return s256(self.verifier)

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str) -> Flow | None:
        """The flow in a cookie, or ``None`` if it is not one."""
        try:
            data = json.loads(raw)
            flow = cls(**{k: data[k] for k in ("state", "nonce", "verifier", "next_url")})
        except (ValueError, TypeError, KeyError):
            return None
        if not all(isinstance(v, str) and v for v in asdict(flow).values()):
            return None
        return flow


def username_from(raw: object, claim: str) -> str:
    """The local username for a provider's name: plain ASCII, lowercased, and valid.

    Lowercasing ASCII changes no letter into another; NFKC does (``\u212a`` is
    ``K``), so a name with anything beyond ASCII is refused rather than folded.
    """
    if not isinstance(raw, str) or not raw:
        raise InvalidInput(
            f"the provider did not send a username (claim {claim!r}); ask an admin to "
            "create your account and link it to your sign-in"
        )
    if not raw.isascii():
        raise InvalidInput(
            f"your username at the provider, {raw!r}, has characters beyond plain ASCII, "
            "which could turn it into another name here; ask an admin to create an account "
            "for you and link it to your sign-in"
        )
    try:
        return check_username(raw.lower())
    except InvalidInput as exc:
        raise InvalidInput(
            f"your username at the provider, {raw!r}, cannot be used here: "
            + exc.message.removeprefix("username: ")
            + "; ask an admin to create an account for you and link it to your sign-in"
        ) from None


def groups_from(raw: object) -> frozenset[str]:
    """A groups claim as a set: a list of names, or one name."""
    if isinstance(raw, str):
        return frozenset({raw}) if raw else frozenset()
    if isinstance(raw, list | tuple):
        return frozenset(g for g in raw if isinstance(g, str) and g)
    return frozenset()


def split_list(text: str) -> frozenset[str]:
    """``"a, b"`` → ``{"a", "b"}``."""
    return frozenset(p.strip() for p in text.split(",") if p.strip())


@dataclass(frozen=True)
class GroupPolicy:
    """Which provider groups may sign in (empty: all), and which are admins (empty: ignore)."""

    allowed: frozenset[str] = frozenset()
    admins: frozenset[str] = frozenset()

    def check(self, groups: frozenset[str], provider: str) -> None:
        """Refuse a person in none of the allowed groups."""
        if self.allowed and not (groups & self.allowed):
            raise Forbidden(
                f"your {provider} account is not in a group allowed to use this hub "
                f"({', '.join(sorted(self.allowed))}); ask an admin"
            )

    def is_admin(self, groups: frozenset[str]) -> bool | None:
        """Whether the person should be an admin here; ``None`` when groups do not say."""
        if not self.admins:
            return None
        return bool(groups & self.admins)


@dataclass(frozen=True)
class Person:
    """Who the provider says signed in (from a verified ID token)."""

    subject: str
    username: object
    groups: frozenset[str] = field(default_factory=frozenset)


class IdentityRepo(Protocol):
    """Storage of (issuer, subject) → user links."""

    async def user_of(self, issuer: str, subject: str) -> User | None: ...

    async def create_linked_user(
        self, name: str, issuer: str, subject: str, *, is_admin: bool, at: datetime
    ) -> User:
        """Create a user with no password and its link, in one transaction.

        Raises ``Conflict`` when the name is taken or the person is linked already.
        """

    async def link(
        self, issuer: str, subject: str, user_id: int, *, linked_by: int | None, at: datetime
    ) -> None:
        """Link a person to an existing user (an admin's act); ``Conflict`` if linked."""

    async def touch(self, issuer: str, subject: str, at: datetime) -> None: ...


class OidcIdentities:
    """Maps a verified person to a local user: found, created, or refused with a reason."""

    def __init__(self, repo: IdentityRepo, accounts: Accounts, clock: Clock) -> None:
        self._repo = repo
        self._accounts = accounts
        self._clock = clock

    async def sign_in(
        self,
        issuer: str,
        person: Person,
        *,
        policy: GroupPolicy,
        provider: str,
        username_claim: str = "preferred_username",
    ) -> tuple[User, bool]:
        """The user this person signs in as, and whether it was just created."""
        policy.check(person.groups, provider)
        admin = policy.is_admin(person.groups)
        user = await self._repo.user_of(issuer, person.subject)
        created = False
        if user is None:
            name = username_from(person.username, username_claim)
            try:
                await self._accounts.get(name)
            except NotFound:
                pass
            else:
                raise Conflict(self._collision(name, provider))
            try:
                user = await self._repo.create_linked_user(
                    name, issuer, person.subject, is_admin=bool(admin), at=self._clock.now()
                )
            except Conflict:
                # Raced with another sign-in of this person, or with a local account.
                user = await self._repo.user_of(issuer, person.subject)
                if user is None:
                    raise Conflict(self._collision(name, provider)) from None
            else:
                created = True
        if user.disabled:
            raise Forbidden("this account is disabled; ask an admin")
        if admin is not None and admin != user.is_admin:
            # The last admin stays one, whatever the provider's groups say.
            with contextlib.suppress(Conflict):
                user = await self._accounts.update(user, is_admin=admin)
        await self._repo.touch(issuer, person.subject, self._clock.now())
        return user, created

    @staticmethod
    def _collision(name: str, provider: str) -> str:
        return (
            f"an account named {name!r} already exists here and is not linked to your "
            f"{provider} sign-in; sign in with its password, or ask an admin to link it"
        )

    async def link(self, issuer: str, subject: str, user: User, *, by: User) -> None:
        """Let ``subject`` at ``issuer`` sign in as ``user`` (admins only)."""
        if not by.is_admin:
            raise Forbidden("only admins may link sign-ins to accounts")
        if not subject or len(subject) > 255:
            raise InvalidInput("subject: 1 to 255 characters, as the provider's 'sub' claim")
        await self._repo.link(issuer, subject, user.id, linked_by=by.id, at=self._clock.now())


def claims_subject(claims: dict[str, Any]) -> str:
    """The ``sub`` claim, checked to be a usable id."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise InvalidInput("the provider's ID token has no valid subject ('sub')")
    return sub
