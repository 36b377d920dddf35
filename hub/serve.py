"""``labdock serve``: run a wired hub until SIGINT or SIGTERM.

asyncio.run(serve(load_settings(...)))
"""

from __future__ import annotations

import asyncio
import errno
import signal
import sys

import hub
from hub.app import build_hub
from hub.config import Settings
from hub.domain.errors import ConfigError


def announce_admin(name: str, password: str) -> None:
    """Print the first admin's one-time password, once, where a person will see it."""
    line = "=" * 64
    print(
        f"\n{line}\n  labdock created the first admin account.\n"
        f"    username: {name}\n    password: {password}\n"
        "  This is shown only once. You will choose a new password at first login.\n"
        f"{line}\n",
        flush=True,
    )


async def serve(settings: Settings) -> None:
    """Run the hub until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with build_hub(settings) as built:
        if built.admin_password:
            announce_admin(settings.hub.admin_user, built.admin_password)
        try:
            await built.listen(settings.hub.port, settings.hub.ip)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"hub.port: {settings.hub.ip}:{settings.hub.port} is already in use"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(
                    f"hub.ip: {settings.hub.ip} is not an address of this machine"
                ) from None
            raise
        print(
            f"labdock {hub.__version__} serving on http://{settings.hub.ip}:{settings.hub.port}/",
            flush=True,
        )
        if settings.hub.user_domain:
            print(
                f"users' servers answer on their own hosts: <name>.{settings.hub.user_domain}",
                flush=True,
            )
        await stop.wait()
        print("labdock: shutting down", file=sys.stderr, flush=True)
