"""jupyter_server's identity for labdock: the hub's user, proven by the per-server secret.

    jupyter lab --ServerApp.identity_provider_class=labdock_identity.LabdockIdentityProvider

The hub's proxy has already authenticated the person, and it adds the server's
secret (``Authorization: token <secret>``) to every request it forwards. A
request carrying that token is the hub user named in ``LABDOCK_USER``; any other
request is nobody. There is no login form and no login cookie: the hub is the login.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from jupyter_server.auth.identity import IdentityProvider, User
from tornado import web


class LabdockIdentityProvider(IdentityProvider):
    """Token (``JUPYTER_TOKEN`` = ``LABDOCK_SERVER_SECRET``) in, ``LABDOCK_USER`` out."""

    def hub_user(self) -> User:
        """The hub's name for the owner, as the UI shows it (``api/me``)."""
        name = os.environ.get("LABDOCK_USER") or "analyst"
        return User(username=name, name=name, display_name=name)

    def get_user(self, handler: web.RequestHandler) -> User | None:
        """The hub user when the request carries the secret, else ``None``."""
        offered = (self.get_token(handler) or "").encode()
        if not self.token or not hmac.compare_digest(offered, self.token.encode()):
            return None
        # Marks the request token-authenticated: no XSRF or origin check is needed.
        handler._token_authenticated = True  # type: ignore[attr-defined]
        return self.hub_user()

    @property
    def login_available(self) -> bool:
        return False

    @property
    def logout_available(self) -> bool:
        return False

    def validate_security(self, app: Any, ssl_options: dict[str, Any] | None = None) -> None:
        """Refuse to serve without a secret: an empty token would let anyone in."""
        if not self.token:
            app.log.critical("labdock: no token (LABDOCK_SERVER_SECRET); refusing to start")
            raise SystemExit(1)
        super().validate_security(app, ssl_options)
