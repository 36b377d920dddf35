"""The base of every handler: who is asking, and how errors are shown.

    class Home(BaseHandler):
        @authenticated_page
        async def get(self) -> None:
            self.render_page("home.html", user=self.user)

Domain errors map to HTTP status codes here, once. API paths answer JSON
``{"status": 403, "message": "..."}``; pages answer HTML with the same message.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlencode, urlsplit

import tornado.web

from hub.domain.accounts import ADMIN_ONLY_SCOPES, User, role_scopes
from hub.domain.errors import (
    BackendUnavailable,
    Conflict,
    Forbidden,
    InvalidInput,
    LabdockError,
    LaunchFailed,
    NotFound,
    QuotaExceeded,
    TooManyRequests,
    Unauthorized,
)
from hub.web.deps import WebDeps

log = logging.getLogger(__name__)

STATUS_OF: tuple[tuple[type[LabdockError], int], ...] = (
    (InvalidInput, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (TooManyRequests, 429),
    (BackendUnavailable, 503),
    # The app in the container failed, not the hub: a gateway error.
    (LaunchFailed, 502),
)


def status_for(error: LabdockError) -> int:
    """The HTTP status a domain error is shown with."""
    for cls, status in STATUS_OF:
        if isinstance(error, cls):
            return status
    return 500


class BaseHandler(tornado.web.RequestHandler):
    """Finds the current user from the session cookie; renders errors kindly."""

    deps: WebDeps
    user: User | None
    scopes: frozenset[str]
    _fresh_session: str | None = None  # a session this very request opened (login)
    # Audit writes of refusals outlive their request; strong references keep them running.
    _audit_writes: ClassVar[set[asyncio.Task[None]]] = set()

    def initialize(self, deps: WebDeps) -> None:
        self.deps = deps
        self.user = None
        self.scopes = frozenset()

    @property
    def is_api(self) -> bool:
        return self.request.path.startswith("/hub/api")

    async def prepare(self) -> None:
        if self.is_api and any("\x00" in arg for arg in self.path_args):
            # No name holds NUL, and PostgreSQL text cannot: refuse before any lookup.
            raise NotFound("no such API path: names never contain NUL characters")
        token = self._presented_token()
        if token is not None:
            grant = await self.deps.accounts.token_grant(token)
            if grant is None:
                raise Unauthorized("the API token is unknown, revoked or expired")
            self.user, self.scopes = grant.user, grant.scopes
            return
        self.user = await self._user_from_cookie()
        # A browser session carries its user's role: admin scopes for admins only.
        self.scopes = role_scopes(self.user) if self.user is not None else frozenset()
        if self.user is not None and self.user.must_change_password and self.is_api:
            raise Forbidden(
                "this session must change its password before anything else: "
                "open /hub/password in the browser"
            )

    def _presented_token(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() in ("token", "bearer") and value.strip():
            return value.strip()
        return None

    def check_xsrf_cookie(self) -> None:
        # A request carrying a token in a header cannot be forged by another site
        # (browsers do not add such headers cross-origin); cookies need the XSRF check.
        if self._presented_token() is not None:
            return
        if self.is_api and self.get_cookie(self.deps.session_cookie) is None:
            return  # no credential a forgery could ride on: answered 401 after prepare()
        if self.is_api and not self.from_hub_origin():
            raise Forbidden(
                "API changes made with the browser session must come from the hub's own "
                "pages (their Origin header); scripts elsewhere use an API token"
            )
        super().check_xsrf_cookie()

    def from_hub_origin(self) -> bool:
        """Whether the request's ``Origin`` is the hub's own: this host, or ``public_url``'s.

        Browsers send ``Origin`` with every write, same-origin ones included, so a
        write without one did not come from a page of the hub.
        """
        origin = self.request.headers.get("Origin")
        if not origin or self.request.headers.get("Sec-Fetch-Site", "same-origin") not in (
            "same-origin",
            "none",
        ):
            return False
        parts = urlsplit(origin)
        if parts.path or parts.query or not parts.netloc:
            return False
        given = f"{parts.scheme}://{parts.netloc}".lower()
        own = f"{self.request.protocol}://{self.request.host}".lower()
        public = urlsplit(self.deps.settings.public_url)
        return given == own or (
            bool(public.netloc) and given == f"{public.scheme}://{public.netloc}".lower()
        )

    def _session_id(self) -> str | None:
        """The session id in the signed cookie (not checked against the database)."""
        if self._fresh_session is not None:
            return self._fresh_session
        raw = self.get_signed_cookie(
            self.deps.session_cookie,
            max_age_days=self.deps.settings.session_hours / 24 + 1,
        )
        return raw.decode() if raw else None

    def _get_raw_xsrf_token(self) -> tuple[int | None, bytes, float]:
        """The XSRF token, bound to the session: an HMAC of its id under the cookie secret.

        Tornado's own token is whatever the ``_xsrf`` cookie says, so anyone who can
        set that cookie (a sibling host, a page on the same site) picks the value a
        forged request must echo. Bound to the session, the cookie only carries the
        token to the hub's scripts; a different value is not accepted. Visitors
        without a session (the login form) keep tornado's token.
        """
        session = self._session_id()
        if session is None:
            return super()._get_raw_xsrf_token()
        if not hasattr(self, "_raw_xsrf_token"):
            secret = self.application.settings["cookie_secret"]
            key = secret.encode() if isinstance(secret, str) else bytes(secret)
            bound = hmac.new(key, b"labdock-xsrf\x00" + session.encode(), hashlib.sha256)
            token = bound.digest()[:16]
            version = None  # None: the cookie is (re)written with the bound token
            cookie = self.get_cookie(self.settings.get("xsrf_cookie_name", "_xsrf"))
            if cookie:
                found, value, _ = self._decode_xsrf_token(cookie)
                if value is not None and hmac.compare_digest(value, token):
                    version = found
            self._raw_xsrf_token = (version, token, time.time())
        return self._raw_xsrf_token

    def require_any(self, scope: str) -> User:
        """The current user if they hold ``scope`` in any form (plain or narrowed)."""
        if self.user is None:
            raise Unauthorized("log in, or send an API token in the Authorization header")
        if not any(s == scope or s.startswith(scope + "!") for s in self.scopes):
            raise self._lacking(scope)
        return self.user

    def require(self, scope: str) -> User:
        """The current user if the request holds ``scope``; else 401 or 403."""
        if self.user is None:
            raise Unauthorized("log in, or send an API token in the Authorization header")
        if scope not in self.scopes:
            raise self._lacking(scope)
        return self.user

    def _lacking(self, scope: str) -> Forbidden:
        assert self.user is not None
        if scope in ADMIN_ONLY_SCOPES and not self.user.is_admin:
            return Forbidden(f"only admins may do this (it needs the {scope!r} scope)")
        return Forbidden(f"this token lacks the {scope!r} scope")

    async def _user_from_cookie(self) -> User | None:
        raw = self.get_signed_cookie(
            self.deps.session_cookie,
            max_age_days=self.deps.settings.session_hours / 24 + 1,
        )
        if not raw:
            return None
        return await self.deps.accounts.session_user(raw.decode())

    async def start_session(self, user: User) -> None:
        """Sign ``user`` in on this browser: a new server-side session in a signed cookie.

        HttpOnly, SameSite=Lax (links from elsewhere still arrive signed in), Secure and
        ``__Host-`` behind HTTPS; a session cookie that the server-side row bounds in time.
        """
        session_id = await self.deps.accounts.start_session(
            user, hours=self.deps.settings.session_hours
        )
        self.set_signed_cookie(
            self.deps.session_cookie,
            session_id,
            expires_days=None,
            httponly=True,
            samesite="Lax",
            secure=self.deps.secure_cookies,
            path="/",
        )
        # The page after login must find the XSRF token of the new session in the cookie.
        self._fresh_session = session_id
        for stale in ("_raw_xsrf_token", "_xsrf_token"):
            if hasattr(self, stale):
                delattr(self, stale)
        _ = self.xsrf_token

    def get_current_user(self) -> User | None:
        return self.user

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        # No page of the hub may be framed, by a user's server or anyone else.
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Security-Policy", "frame-ancestors 'none'")

    # Rendering -------------------------------------------------------------

    def render_page(self, name: str, **context: Any) -> None:
        """Render a jinja2 template from ``templates/`` with the common context."""
        template = self.deps.templates.get_template(name)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
        )
        self.finish(
            template.render(
                user=self.user,
                xsrf_form_html=self.xsrf_form_html(),
                static_url=self.static_url,
                **context,
            )
        )

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(payload))

    # Errors ---------------------------------------------------------------

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, LabdockError):
            return  # expected outcomes, not bugs; the audit log records what matters
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, LabdockError):
            status_code = status_for(exc)
            message = exc.message
            self.set_status(status_code)
            if isinstance(exc, TooManyRequests):
                self.set_header("Retry-After", str(exc.retry_after))
        elif isinstance(exc, tornado.web.HTTPError) and exc.log_message and status_code < 500:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            message = "labdock hit an internal error; the hub's log has the details"
        self._audit_refusal(status_code, message, exc)
        if self.is_api:
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(json.dumps({"status": status_code, "message": message}))
            return
        self.clear_header("Content-Type")
        self.render_page("error.html", status=status_code, message=message)

    def _audit_refusal(self, status: int, message: str, exc: object) -> None:
        """Record a permission refusal, a failed XSRF check or a bad token in the audit log."""
        if isinstance(exc, QuotaExceeded):
            return  # admission records its own refusals, with the numbers
        if status == 403:
            xsrf = isinstance(exc, tornado.web.HTTPError) and "xsrf" in message.lower()
            action = "xsrf" if xsrf else "access"
        elif status == 401 and self._presented_token() is not None:
            action = "token"
        else:
            return
        address = self.request.remote_ip or "?"
        # Anonymous refusals are counted by address and kind, a known user's by what
        # they tried too: either way a flood writes one row a minute, not one a request.
        key = (
            (address, action)
            if self.user is None
            else (f"{address} {self.user.id}", f"{action} {self.request.path}")
        )
        held_back = self.deps.refusals.admit(key)
        if held_back is None:
            return  # held back, and counted in the next row written for this key
        cookie = None if self.user else self.get_signed_cookie(self.deps.session_cookie)
        detail: dict[str, object] = {
            "message": message[:500],
            "method": self.request.method or "",
            "status": status,
            "address": address,
        }
        if held_back:
            detail["held_back"] = held_back  # like refusals from this address, not written

        async def write() -> None:
            try:
                actor = self.user
                if actor is None and cookie:
                    actor = await self.deps.accounts.session_user(cookie.decode())
                await self.deps.audit.record(
                    actor_id=actor.id if actor else None,
                    action=action,
                    target=self.request.path[:255],
                    outcome="refused",
                    detail=detail,
                )
            except Exception as error:
                log.warning("could not record a refusal in the audit log: %s", error)

        task = asyncio.get_running_loop().create_task(write())
        self._audit_writes.add(task)
        task.add_done_callback(self._audit_writes.discard)

    def login_url_for(self, next_url: str) -> str:
        return "/hub/login?" + urlencode({"next": next_url})


H = TypeVar("H", bound=BaseHandler)


def authenticated_page(
    method: Callable[[H], Awaitable[None]],
) -> Callable[[H], Awaitable[None]]:
    """Send visitors without a session to the login page, coming back here after."""

    @functools.wraps(method)
    async def wrapper(self: H) -> None:
        if self.user is None:
            self.redirect(self.login_url_for(self.request.uri or "/hub/home"))
            return
        if self.user.must_change_password and self.request.path != "/hub/password":
            self.redirect("/hub/password")
            return
        await method(self)

    return wrapper
