"""Waiting for a server's app to answer HTTP, with a tight backoff.

    url_path = readiness_path("/user/alice/lab/", "/api/status")  # "/user/alice/lab/api/status"
    status = await wait_until_ready("172.18.0.2", 8888, url_path, secret="s3cret")

The probe speaks just enough HTTP/1.0 over a raw asyncio connection to read a
status line. It does not use tornado's shared ``AsyncHTTPClient`` on purpose:
that client queues requests behind ``max_clients``, so readiness polls would
wait behind proxied user traffic. Any status below 500 counts as ready: the app
is listening and routing requests (Jupyter answers 200 to its token, other apps
may answer 302 or 404 on the prefix root); 5xx means "up but not ready yet".
"""

from __future__ import annotations

import asyncio
import contextlib

FIRST_DELAY = 0.005
# The cap bounds the lag between "the app answers" and "the hub noticed": a 250 ms cap
# cost a median 130 ms per launch, 50 ms costs about 25 ms. A probe is one connect to
# a container on the same host, so polling 20 launching servers at this pace is cheap.
MAX_DELAY = 0.05
ATTEMPT_TIMEOUT = 2.0


def readiness_path(prefix: str, path: str) -> str:
    """The URL path polled for readiness: ``path`` under the server's ``prefix``."""
    return prefix.rstrip("/") + "/" + path.lstrip("/")


async def probe(
    host: str, port: int, path: str, *, secret: str, within: float = ATTEMPT_TIMEOUT
) -> int | None:
    """One GET; the HTTP status, or ``None`` when nothing answered ``within`` seconds."""
    request = (
        f"GET {path} HTTP/1.0\r\n"
        f"Host: {host}:{port}\r\n"
        f"Authorization: token {secret}\r\n"
        "User-Agent: labdock-readiness\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            await writer.drain()
            line = await reader.readline()
    except (OSError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


async def wait_until_ready(
    host: str,
    port: int,
    path: str,
    *,
    secret: str,
    first_delay: float = FIRST_DELAY,
    max_delay: float = MAX_DELAY,
) -> int:
    """Poll until the app answers with a status below 500; return that status.

    It never gives up by itself: the caller bounds it with a timeout and
    watches the container, so that a crashed app fails fast.
    """
    delay = first_delay
    while True:
        status = await probe(host, port, path, secret=secret)
        if status is not None and status < 500:
            return status
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
