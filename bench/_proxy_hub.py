"""The labdock hub that ``bench/proxy.py`` measures: the same wiring as ``labdock serve``.

$ python bench/_proxy_hub.py DATA_DIR BACKEND_URL ECHO_URL

It builds the hub with ``build_hub`` and listens with ``Hub.listen`` (exactly
what ``labdock serve`` does), creates the user ``bench`` with a token holding
the ``access:servers`` scope, and routes ``/user/bench/`` to BACKEND_URL and
``/user/bench/ws/`` to ECHO_URL, with the prefix stripped. It prints one JSON
line ``{"port": ..., "token": ..., "pid": ...}`` and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hub.app import build_hub  # noqa: E402
from hub.config import DbSettings, HubSettings, Settings  # noqa: E402
from hub.domain.routes import Route  # noqa: E402


async def main(data: Path, backend: str, echo: str) -> None:
    settings = Settings(
        hub=HubSettings(data_dir=data, cookie_secret="bench-" + "x" * 40, id="bench-proxy"),
        db=DbSettings(url=f"sqlite:///{data / 'labdock.sqlite'}"),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with build_hub(settings) as built:
        accounts = built.deps.accounts
        user, _ = await accounts.create_user("bench", "bench password 1")
        token = await accounts.create_token(user, scopes=frozenset({"access:servers"}))
        built.routes.add(
            Route(
                user="bench", server="", user_id=user.id, server_id=1,
                target=backend, secret="s1", keep_prefix=False,
            )
        )
        built.routes.add(
            Route(
                user="bench", server="ws", user_id=user.id, server_id=2,
                target=echo, secret="s2", keep_prefix=False,
            )
        )
        port = await built.listen(0, "127.0.0.1")
        print(json.dumps({"port": port, "token": token, "pid": os.getpid()}), flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
