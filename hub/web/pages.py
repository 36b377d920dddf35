"""HTML pages: login, logout and password change (the analyst's pages are in ``ui``).

GET  /hub/login?next=/user/alice/   the form
POST /hub/login                     sets the session cookie, goes to ``next``
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from hub.domain.errors import Forbidden, LabdockError, TooManyRequests
from hub.web.base import BaseHandler, authenticated_page

log = logging.getLogger(__name__)

HOME = "/hub/home"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_next(target: str | None) -> str:
    """A local path to go to after login; anything that could leave the hub becomes home.

    Refuses ``//evil``, ``/\\evil``, ``https://host//evil``, encoded variants
    of those, and control characters, which browsers may strip into the above.
    """
    if not target:
        return HOME
    for candidate in (target, unquote(target)):
        if _CONTROL.search(candidate) or "\\" in candidate:
            return HOME
        if not candidate.startswith("/") or candidate.startswith("//"):
            return HOME
        parts = urlsplit(candidate)
        if parts.scheme or parts.netloc:
            return HOME
    return target


class LoginHandler(BaseHandler):
    """The login form (with "Sign in with <provider>" when OpenID Connect is configured)."""

    def render_page(self, name: str, **context: Any) -> None:
        oidc = self.deps.oidc
        super().render_page(name, oidc_name=oidc.display_name if oidc else None, **context)

    async def get(self) -> None:
        next_url = safe_next(self.get_argument("next", None))
        if self.user is not None:
            self.redirect(next_url)
            return
        self.render_page("login.html", next=next_url, error=None, username="")

    async def post(self) -> None:
        next_url = safe_next(self.get_argument("next", None))
        username = self.get_argument("username", "").strip()[:64]
        password = self.get_argument("password", "")
        address = self.request.remote_ip or "?"
        throttle = self.deps.throttle
        try:
            delay = throttle.check(username, address)
            if delay:
                await asyncio.sleep(delay)
            user = await self.deps.accounts.authenticate(username, password)
        except TooManyRequests as exc:
            await self._audit_login(username, address, exc.message)
            self.set_status(429)
            self.set_header("Retry-After", str(exc.retry_after))
            self.render_page("login.html", next=next_url, error=exc.message, username=username[:32])
            return
        except LabdockError as exc:
            throttle.failed(username, address)
            # %r escapes control characters, so a hostile name cannot forge log lines.
            log.warning("failed login for %r from %s", username[:32], address)
            await self._audit_login(username, address, exc.message)
            self.set_status(403 if isinstance(exc, Forbidden) else 401)
            self.render_page("login.html", next=next_url, error=exc.message, username=username[:32])
            return
        throttle.succeeded(username, address)
        await self.start_session(user)
        self.redirect("/hub/password" if user.must_change_password else next_url)

    async def _audit_login(self, username: str, address: str, message: str) -> None:
        # The name as typed, cut short: the console escapes it when it shows it.
        await self.deps.audit.record(
            actor_id=None,
            action="login",
            target=username[:32],
            outcome="refused",
            detail={"message": message, "address": address},
        )


class LogoutHandler(BaseHandler):
    """Ends the session (POST, so a link elsewhere cannot log anyone out)."""

    async def post(self) -> None:
        raw = self.get_signed_cookie(self.deps.session_cookie)
        if raw:
            await self.deps.accounts.end_session(raw.decode())
        self.clear_cookie(self.deps.session_cookie, path="/")
        self.redirect("/hub/login")


class PasswordHandler(BaseHandler):
    """Change one's password; required after a one-time password."""

    @authenticated_page
    async def get(self) -> None:
        self.render_page("password.html", error=None, done=False)

    @authenticated_page
    async def post(self) -> None:
        assert self.user is not None
        new = self.get_argument("new", "")
        if new != self.get_argument("confirm", ""):
            self.set_status(400)
            self.render_page("password.html", error="the two new passwords differ", done=False)
            return
        try:
            # Every other session ends: whoever else held one is signed out.
            raw = self.get_signed_cookie(self.deps.session_cookie)
            await self.deps.accounts.change_password(
                self.user.id,
                self.get_argument("current", ""),
                new,
                current_session=raw.decode() if raw else None,
            )
        except LabdockError as exc:
            self.set_status(400)
            self.render_page("password.html", error=exc.message, done=False)
            return
        self.redirect(HOME)


class RootHandler(BaseHandler):
    """``/`` and ``/hub/``: to home, or to the login page."""

    async def get(self) -> None:
        self.redirect(HOME if self.user else "/hub/login")


class NotFoundHandler(BaseHandler):
    """Anything unrouted: a plain 404 page (or JSON under /hub/api)."""

    async def prepare(self) -> None:
        await super().prepare()
        self.set_status(404)
        if self.is_api:
            self.write_json(
                {"status": 404, "message": f"no such API path: {self.request.path}"}, 404
            )
        else:
            self.render_page("error.html", status=404, message="There is nothing at this address.")
