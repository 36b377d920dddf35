"""The hub's own secrets that live on disk: the key that signs its cookies.

    secret = cookie_secret(settings)     # hub.cookie_secret, or <data_dir>/cookie_secret

A secret generated here is written once, with mode 0600, and read back at each
start, so that sessions survive a restart.
"""

from __future__ import annotations

import os
import secrets

from hub.config import Settings


def cookie_secret(settings: Settings) -> bytes:
    """The configured secret, or one generated once and kept with mode 0600."""
    if settings.hub.cookie_secret:
        return settings.hub.cookie_secret.encode()
    path = settings.hub.data_dir / "cookie_secret"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(value)
    return value
