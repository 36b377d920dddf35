"""API tokens through the REST API, in JupyterHub's shape: list, read, create, revoke.

    GET    /hub/api/users/alice/tokens        -> {"api_tokens": [{"id": "7", "note": ..., ...}]}
    POST   /hub/api/users/alice/tokens        {"note": "ci", "scopes": ["read:servers"],
                                               "expires_in": 30}   -> 201, with "token" once
    GET    /hub/api/users/alice/tokens/7      -> the token's model
    DELETE /hub/api/users/alice/tokens/7      -> 204; a token may revoke itself

A model never holds the token or its hash: only the answer to its creation
shows the token, once. ``expires_in`` is in days (JupyterHub's is in seconds);
without it, ``hub.token_expiry_days`` applies. Who may: see ``hub.domain.tokens``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hub.domain.accounts import MAX_NOTE, MAX_TOKEN_DAYS, TokenInfo, User
from hub.domain.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from hub.domain.tokens import check_may_mint, grantable, may_manage_tokens
from hub.web.api_base import ApiHandler
from hub.web.openapi import errors, json_body, json_content, param, ref

_TOKEN_ID_DIGITS = 10  # ids are 32-bit integers in the database (MAX_TOKEN_ID)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None


def token_model(info: TokenInfo, owner: str) -> dict[str, Any]:
    """What the API shows of a token: never the token itself, nor its hash."""
    return {
        "id": str(info.id),
        "kind": "api_token",
        "user": owner,
        "note": info.note,
        "scopes": sorted(info.scopes),
        "created": _iso(info.created),
        "last_activity": _iso(info.last_used),
        "expires_at": _iso(info.expires),
    }


MAX_TOKEN_ID = 2**31 - 1


def parse_token_id(raw: str) -> int:
    """A token id from the path, or ``NotFound`` (ids are numbers)."""
    if not raw.isascii() or not raw.isdecimal() or len(raw) > _TOKEN_ID_DIGITS:
        raise NotFound(f"no token {raw[:40]!r}: token ids are numbers")
    number = int(raw)
    if number > MAX_TOKEN_ID:
        # Ids are 32-bit integers in the database: a larger one names no token.
        raise NotFound(f"no token {number}")
    return number


class TokenApiHandler(ApiHandler):
    """Finds whose tokens the path names, if the caller may manage them."""

    async def token_owner(self, name: str) -> User:
        if self.user is None:
            raise Unauthorized("log in, or send an API token in the Authorization header")
        if not may_manage_tokens(self.user, self.scopes, name):
            # The same answer whether or not the user exists: names are not to be probed.
            raise Forbidden(f"you may not manage the API tokens of {name!r}")
        return self.user if name == self.user.name else await self.deps.accounts.get(name)

    async def record(self, action: str, owner: User, **detail: Any) -> None:
        assert self.user is not None
        await self.deps.audit.record(
            actor_id=self.user.id, action=action, target=owner.name, detail=detail
        )


class TokensHandler(TokenApiHandler):
    """``GET`` lists a user's tokens; ``POST`` creates one: ``/users/{name}/tokens``."""

    async def get(self, name: str) -> None:
        owner = await self.token_owner(name)
        tokens = await self.deps.accounts.tokens_of(owner)
        self.write_json({"api_tokens": [token_model(t, owner.name) for t in tokens]})

    async def post(self, name: str) -> None:
        owner = await self.token_owner(name)
        check_may_mint(self.scopes, by_token=self._presented_token() is not None)
        body = self.json_body()
        unknown = set(body) - {"note", "scopes", "expires_in"}
        if unknown:
            raise InvalidInput(
                f"unknown field(s): {', '.join(sorted(unknown))}; known: note, scopes, expires_in"
            )
        note = body.get("note", "")
        if not isinstance(note, str):
            raise InvalidInput("note: expected a string")
        raw_scopes = body.get("scopes")
        if raw_scopes is not None and (
            not isinstance(raw_scopes, list)
            or not all(isinstance(s, str) and "," not in s for s in raw_scopes)
        ):
            raise InvalidInput('scopes: expected a list of scope names such as "read:servers"')
        expires_in = body.get("expires_in")
        if expires_in is not None and (
            isinstance(expires_in, bool) or not isinstance(expires_in, int | float)
        ):
            raise InvalidInput("expires_in: expected a number of days, or null for the default")
        requested = None if raw_scopes is None else ",".join(raw_scopes)
        scopes = grantable(self.scopes, owner, requested)
        token, info = await self.deps.accounts.issue_token(
            owner,
            scopes=scopes,
            expires_in_days=None if expires_in is None else float(expires_in),
            note=note,
        )
        await self.record("token.create", owner, token_id=info.id, scopes=sorted(scopes))
        self.set_header("Cache-Control", "no-store")
        self.write_json({**token_model(info, owner.name), "token": token}, 201)


class TokenHandler(TokenApiHandler):
    """``GET`` one token's model; ``DELETE`` revokes it: ``/users/{name}/tokens/{id}``."""

    async def get(self, name: str, token_id: str) -> None:
        owner = await self.token_owner(name)
        info = await self.deps.accounts.token_of(owner, parse_token_id(token_id))
        self.write_json(token_model(info, owner.name))

    async def delete(self, name: str, token_id: str) -> None:
        owner = await self.token_owner(name)
        number = parse_token_id(token_id)
        await self.deps.accounts.revoke_token(owner, number)
        await self.record("token.revoke", owner, token_id=number)
        self.set_status(204)
        self.finish()


_WHO = (
    " The owner, through any of their credentials (a token may revoke itself), or an "
    "admin whose request holds `admin:users`; anyone else gets 403, whether or not the "
    "user exists."
)

OPENAPI_SCHEMAS: dict[str, Any] = {
    "Token": {
        "type": "object",
        "description": "An API token as shown after its creation: never the token itself.",
        "required": [
            "id",
            "kind",
            "user",
            "note",
            "scopes",
            "created",
            "last_activity",
            "expires_at",
        ],
        "properties": {
            "id": {"type": "string", "pattern": r"^[0-9]+$", "description": "Stable, not secret."},
            "kind": {"const": "api_token"},
            "user": {"type": "string"},
            "note": {"type": "string"},
            "scopes": {"type": "array", "items": {"type": "string"}},
            "created": {"type": "string", "format": "date-time"},
            "last_activity": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "When it was last used (to the minute); null: never.",
            },
            "expires_at": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "null: never.",
            },
        },
    },
    "TokenList": {
        "type": "object",
        "required": ["api_tokens"],
        "properties": {"api_tokens": {"type": "array", "items": ref("Token")}},
    },
    "NewToken": {
        "allOf": [
            ref("Token"),
            {
                "type": "object",
                "required": ["token"],
                "properties": {
                    "token": {
                        "type": "string",
                        "description": "The token: shown only this once, only its hash is kept.",
                    }
                },
            },
        ]
    },
    "TokenRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "note": {"type": "string", "maxLength": MAX_NOTE, "default": ""},
            "scopes": {
                "type": ["array", "null"],
                "items": {"type": "string", "pattern": "^[^,]+$"},
                "description": (
                    "Default: servers, read:servers, access:servers. Never more than the "
                    "request holds; a non-admin's token holds only those three, each "
                    "optionally narrowed to its owner as SCOPE!user=NAME."
                ),
            },
            "expires_in": {
                "type": ["number", "null"],
                "exclusiveMinimum": 0,
                "maximum": MAX_TOKEN_DAYS,
                "description": "Days (not seconds); null or absent: hub.token_expiry_days.",
            },
        },
        "examples": [{"note": "nightly job", "scopes": ["read:servers"], "expires_in": 30}],
    },
}

_TOKEN_ID: dict[str, Any] = {
    "name": "token_id",
    "in": "path",
    "required": True,
    "description": "A token's id, as its model shows it.",
    "schema": {"type": "string", "pattern": r"^[0-9]{1,10}$"},
}

OPENAPI_PATHS: dict[str, Any] = {
    "/users/{name}/tokens": {
        "parameters": [param("UserName")],
        "get": {
            "summary": "A user's API tokens." + _WHO,
            "operationId": "listUserTokens",
            "tags": ["tokens"],
            "responses": {"200": json_content(ref("TokenList")), **errors(401, 403, 404)},
        },
        "post": {
            "summary": "Create an API token; the answer shows it once. From a session; a "
            "token may mint one only if it holds `admin:users`." + _WHO,
            "operationId": "createUserToken",
            "tags": ["tokens"],
            "requestBody": json_body(ref("TokenRequest")),
            "responses": {
                "201": json_content(ref("NewToken"), "Created"),
                **errors(400, 401, 403, 404),
            },
        },
    },
    "/users/{name}/tokens/{token_id}": {
        "parameters": [param("UserName"), _TOKEN_ID],
        "get": {
            "summary": "One API token's model." + _WHO,
            "operationId": "getUserToken",
            "tags": ["tokens"],
            "responses": {"200": json_content(ref("Token")), **errors(401, 403, 404)},
        },
        "delete": {
            "summary": "Revoke an API token at once." + _WHO,
            "operationId": "revokeUserToken",
            "tags": ["tokens"],
            "responses": {"204": {"description": "Revoked"}, **errors(401, 403, 404)},
        },
    },
}
