"""Sign-in through a generic OpenID Connect provider, beside local accounts.

    GET /hub/oauth_login?next=/user/alice/   -> 302 to the provider's authorization endpoint
    GET /hub/oauth_callback?code=..&state=.. -> session cookie, 302 to ``next``

The authorization-code flow with PKCE (S256). State, nonce and the PKCE verifier
live in a signed cookie that expires after ten minutes and is cleared when the
provider sends the browser back; a state is accepted once. Talking to the
provider and checking its ID token is ``hub.web.oidc_login.OidcLogin``'s part.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from hub.domain.accounts import User
from hub.domain.errors import Forbidden, InvalidInput, LabdockError, NotFound, Unauthorized
from hub.domain.oidc import Flow
from hub.web.api_base import ApiHandler
from hub.web.base import BaseHandler
from hub.web.oidc_login import FLOW_SECONDS, OidcLogin
from hub.web.openapi import errors, json_body, json_content, param
from hub.web.pages import safe_next

log = logging.getLogger(__name__)


# Handlers ------------------------------------------------------------------------------------


class OidcHandler(BaseHandler):
    """Shared by both legs of the flow."""

    @property
    def oidc(self) -> OidcLogin:
        if self.deps.oidc is None:
            raise NotFound("signing in through a provider is not configured on this hub")
        return self.deps.oidc

    @property
    def flow_cookie(self) -> str:
        return "__Host-labdock-oidc" if self.deps.secure_cookies else "labdock-oidc"

    def redirect_uri(self) -> str:
        base = self.deps.settings.public_url.rstrip("/")
        if not base:
            base = f"{self.request.protocol}://{self.request.host}"
        return base + "/hub/oauth_callback"


class OidcLoginHandler(OidcHandler):
    """``GET /hub/oauth_login``: start a sign-in at the provider."""

    async def get(self) -> None:
        oidc = self.oidc
        flow = Flow.start(safe_next(self.get_argument("next", None)))
        meta = await oidc.metadata()
        self.set_signed_cookie(
            self.flow_cookie,
            flow.dumps(),
            expires=time.time() + FLOW_SECONDS,
            httponly=True,
            # Lax: the provider sends the browser back with a top-level GET from its site.
            samesite="Lax",
            secure=self.deps.secure_cookies,
            path="/",
        )
        self.redirect(oidc.authorize_url(meta, flow, self.redirect_uri()))


class OidcCallbackHandler(OidcHandler):
    """``GET /hub/oauth_callback``: the provider sends the browser back here."""

    async def get(self) -> None:
        oidc = self.oidc
        raw = self.get_signed_cookie(self.flow_cookie, max_age_days=FLOW_SECONDS / 86400)
        self.clear_cookie(self.flow_cookie, path="/")
        try:
            user, created = await self._finish(oidc, raw)
        except LabdockError as exc:
            await self._audit("login", "refused", exc.message)
            raise
        if created:
            await self._audit("user.create", "ok", "created at first sign-in", user)
        await self.start_session(user)
        flow = Flow.loads(raw.decode()) if raw else None
        self.redirect(flow.next_url if flow else "/hub/home")

    async def _finish(self, oidc: OidcLogin, raw: bytes | None) -> tuple[User, bool]:
        error = self.get_argument("error", None)
        if error:
            detail = self.get_argument("error_description", "")
            raise Unauthorized(
                f"the sign-in provider did not sign you in ({error[:64]}"
                + (f": {detail[:200]}" if detail else "")
                + ")"
            )
        flow = Flow.loads(raw.decode(errors="replace")) if raw else None
        if flow is None:
            raise InvalidInput(
                "this sign-in expired or began in another browser; start again from the login page"
            )
        state = self.get_argument("state", "")
        if not hmac.compare_digest(state.encode(), flow.state.encode()):
            raise InvalidInput(
                "the sign-in's state does not match; start again from the login page"
            )
        oidc.spend(flow.state)
        code = self.get_argument("code", "")
        if not code:
            raise InvalidInput("the sign-in provider sent no code; start again from the login page")
        return await oidc.finish(code, flow, self.redirect_uri())

    async def _audit(
        self, action: str, outcome: str, message: str, user: User | None = None
    ) -> None:
        try:
            await self.deps.audit.record(
                actor_id=user.id if user else None,
                action=action,
                target=user.name if user else "oidc",
                outcome=outcome,
                detail={"message": message[:500], "via": "oidc", "address": self.request.remote_ip},
            )
        except Exception as exc:  # the audit log must not turn a sign-in into a 500
            log.warning("could not record a sign-in in the audit log: %s", exc)


class OidcLinkHandler(ApiHandler):
    """``POST /hub/api/users/{name}/oidc`` ``{"subject": "..."}``: admins link a sign-in.

    The person with that subject at the configured provider then signs in as
    this user, even though a local account of their name exists.
    """

    async def post(self, name: str) -> None:
        actor = self.require("admin:users")
        if not actor.is_admin:
            raise Forbidden("only admins may link sign-ins to accounts")
        oidc = self.deps.oidc
        if oidc is None:
            raise NotFound("signing in through a provider is not configured on this hub")
        body = self.json_body()
        subject = body.get("subject")
        if set(body) != {"subject"} or not isinstance(subject, str):
            raise InvalidInput('expected {"subject": "<the provider\'s sub claim>"}')
        user = await self.deps.accounts.get(name)
        await oidc.identities.link(oidc.settings.issuer, subject, user, by=actor)
        await self.deps.audit.record(
            actor_id=actor.id,
            action="user.link_oidc",
            target=name,
            detail={"issuer": oidc.settings.issuer, "subject": subject},
        )
        self.write_json({"user": name, "issuer": oidc.settings.issuer, "subject": subject}, 201)


OPENAPI_PATHS: dict[str, Any] = {
    "/users/{name}/oidc": {
        "parameters": [param("UserName")],
        "post": {
            "summary": "Let a person at the OpenID Connect provider sign in as this user (admins)",
            "operationId": "linkOidcIdentity",
            "tags": ["users"],
            "requestBody": json_body(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["subject"],
                    "properties": {
                        "subject": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 255,
                            "description": "The provider's 'sub' claim for the person.",
                        }
                    },
                },
                required=True,
            ),
            "responses": {
                "201": json_content(
                    {
                        "type": "object",
                        "required": ["user", "issuer", "subject"],
                        "properties": {
                            "user": {"type": "string"},
                            "issuer": {"type": "string"},
                            "subject": {"type": "string"},
                        },
                    },
                    "Linked.",
                ),
                **errors(400, 401, 403, 404, 409),
            },
        },
    }
}
