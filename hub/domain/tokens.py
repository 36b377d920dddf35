"""Who may see, mint and revoke whose API tokens: the rules, in one place.

    may_manage_tokens(actor, scopes, "bob")          # oneself, or an admin holding admin:users
    scopes = grantable(held, owner, "servers,read:servers")   # or InvalidInput / Forbidden

A person manages their own tokens through any credential of theirs (a token may
list its siblings and revoke itself). Another user's tokens are an admin's
business, with ``admin:users`` (plain, or narrowed to that user). A new token
never carries more than its creator holds right now, and a non-admin's token
only ever carries the user scopes, for themselves. Tokens are minted from a
logged-in session: a token mints none (but an admin's holding ``admin:users``),
so that revoking a stolen token ends the theft instead of leaving its offspring.
"""

from __future__ import annotations

from hub.domain.accounts import (
    DEFAULT_TOKEN_SCOPES,
    SCOPES,
    User,
    check_scopes,
    may_act_on,
    split_scope,
)
from hub.domain.errors import Forbidden

# What an admin's token may hold; everyone else's: the user scopes, about themselves.
ADMIN_TOKEN_SCOPES = SCOPES
USER_TOKEN_SCOPES = DEFAULT_TOKEN_SCOPES


def may_manage_tokens(actor: User, scopes: frozenset[str], owner: str) -> bool:
    """Whether ``actor`` (with ``scopes``) may list, read, mint and revoke ``owner``'s tokens."""
    return owner == actor.name or may_act_on(actor, scopes, "admin:users", owner)


def check_may_mint(held: frozenset[str], *, by_token: bool) -> None:
    """Refuse a token minting a token, unless it holds ``admin:users`` (an admin's automation)."""
    if by_token and "admin:users" not in held:
        raise Forbidden(
            "a token cannot mint another (revoking a stolen one must end it): create tokens "
            "from a logged-in session, or with `labdock token create`"
        )


def _holds(held: frozenset[str], scope: str) -> bool:
    base, _ = split_scope(scope)
    return scope in held or base in held


def grantable(held: frozenset[str], owner: User, requested: str | None) -> frozenset[str]:
    """The scopes a new token of ``owner`` gets, asked for by a request holding ``held``.

    Who may ask at all is ``may_manage_tokens``' answer.

    ``requested`` is ``check_scopes``' comma-separated form (``None``: the defaults).
    Refused, naming the scope: one the owner may not hold (a non-admin: anything
    but the user scopes, or about someone else), or one the request itself lacks.
    """
    scopes = check_scopes(requested)
    for scope in sorted(scopes):
        base, narrowed = split_scope(scope)
        if not owner.is_admin and (
            base not in USER_TOKEN_SCOPES or narrowed not in (None, owner.name)
        ):
            raise Forbidden(
                f"scope {scope!r}: {owner.name}'s tokens may hold only "
                f"{', '.join(sorted(USER_TOKEN_SCOPES))}, each optionally as SCOPE!user="
                f"{owner.name}"
            )
        if not _holds(held, scope):
            raise Forbidden(
                f"scope {scope!r}: a token cannot hold more than the credentials that mint it"
            )
    return scopes
