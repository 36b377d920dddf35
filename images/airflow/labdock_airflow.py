"""labdock's front for Airflow: a gate that requires the per-server secret, and the
supervisor of Airflow's own processes.

    LABDOCK_SERVER_SECRET=s LABDOCK_PORT=8080 AIRFLOW_INTERNAL_PORT=18080 \\
        python -m labdock_airflow

The hub's proxy has already checked who is asking, and it adds the server's
secret (``Authorization: token <secret>``) to every request. Airflow cannot
check that secret itself: its API authenticates with its own JWTs, and with
its login turned off (SimpleAuthManager, all admins) it lets everyone in. So:

- **Gate.** An ASGI app on ``0.0.0.0:$LABDOCK_PORT`` (uvicorn and httpx, both
  Airflow dependencies already) answers 403 to any request without the secret,
  and streams the others both ways to Airflow's API server, which listens on
  ``127.0.0.1:$AIRFLOW_INTERNAL_PORT`` only. The secret is removed on the way,
  so Airflow's all-admins middleware supplies its own token. While Airflow
  starts, the gate answers 503: the hub counts a status below 500 as ready.
  WebSocket upgrades are refused: Airflow's UI does not use them.
- **Supervisor.** ``airflow db migrate``, then the api-server, scheduler,
  dag-processor and triggerer as child processes. When one of them exits, the
  others are stopped and this process exits non-zero, so the container dies
  and the hub reports it; SIGTERM stops them all gracefully.

Tasks reach the execution API on the internal port directly (their JWT is not
the secret); see ``AIRFLOW__CORE__EXECUTION_API_SERVER_URL`` in start.sh.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection, never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
COMPONENTS: dict[str, tuple[str, ...]] = {
    "scheduler": ("scheduler", "--skip-serve-logs"),
    "dag-processor": ("dag-processor",),
    "triggerer": ("triggerer", "--skip-serve-logs"),
}
STOP_GRACE = 8.0  # within the hub's default stop grace (10 s)
FIRST = asyncio.FIRST_COMPLETED


class Gate:
    """ASGI app: requests carrying ``Authorization: token <secret>`` go to ``upstream``."""

    def __init__(self, secret: str, upstream: str) -> None:
        self.expected = f"token {secret}".encode()
        self.upstream = upstream.rstrip("/")
        # No read timeout: log views and long API calls stream for as long as they need.
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=5.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            follow_redirects=False,
        )

    def allowed(self, scope: Scope) -> bool:
        offered = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                offered = value
                break
        return hmac.compare_digest(offered, self.expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        if not self.allowed(scope):
            await reply(send, 403, "this server answers only through the labdock hub")
            return

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        # Headers named in Connection are hop-by-hop too; the secret stays here.
        dropped = HOP_BY_HOP | {b"authorization"} | connection_tokens(scope["headers"])
        headers = [(name, value) for name, value in scope["headers"] if name not in dropped]
        target = self.upstream + scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        has_body = any(n in (b"content-length", b"transfer-encoding") for n, _ in scope["headers"])
        # httpx.Request, not client.build_request: no client default headers (Accept-Encoding).
        request = httpx.Request(
            scope["method"], target, headers=headers, content=body() if has_body else None
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TransportError:
            await reply(send, 503, "Airflow is starting (or not answering); try again shortly")
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (name, value)
                        for name, value in response.headers.raw
                        if name.lower() not in HOP_BY_HOP
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names listed in ``Connection`` (lowercase, as ASGI gives names)."""
    return frozenset(
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    )


async def reply(send: Send, status: int, message: str) -> None:
    """A small JSON answer, like the hub's own errors."""
    body = json.dumps({"status": status, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"cache-control", b"no-store")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def log(message: str) -> None:
    print(f"labdock-airflow | {message}", file=sys.stderr, flush=True)


async def stop_all(children: dict[str, asyncio.subprocess.Process]) -> None:
    """SIGTERM to every child still running; SIGKILL to those that outlast the grace."""
    running = [p for p in children.values() if p.returncode is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
    try:
        async with asyncio.timeout(STOP_GRACE):
            await asyncio.gather(*(p.wait() for p in running))
    except TimeoutError:
        for process in running:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        await asyncio.gather(*(p.wait() for p in running))


async def main() -> int:
    """Serve the gate, run Airflow, and return when any part of it stops."""
    secret = os.environ.get("LABDOCK_SERVER_SECRET", "")
    if not secret:
        log("LABDOCK_SERVER_SECRET is empty; refusing to start a server without a secret")
        return 1
    port = int(os.environ.get("LABDOCK_PORT") or "8080")
    internal = int(os.environ.get("AIRFLOW_INTERNAL_PORT") or "18080")
    if port == internal:
        log(f"LABDOCK_PORT and AIRFLOW_INTERNAL_PORT are both {port}; they must differ")
        return 1

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    # uvicorn swaps its own handlers in while it serves, and raises a caught signal
    # again once it has stopped, which then lands here.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stopping.set))

    gate = Gate(secret, f"http://127.0.0.1:{internal}")
    config = uvicorn.Config(
        gate,
        host="0.0.0.0",  # noqa: S104 - the hub reaches servers on the internal bridge
        port=port,
        lifespan="off",
        access_log=False,
        log_level="warning",
        proxy_headers=False,
        ws="none",
        # Airflow's own Server and Date headers go through; the hub keeps connections open.
        server_header=False,
        date_header=False,
        timeout_keep_alive=75,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    stopped = asyncio.create_task(stopping.wait())
    children: dict[str, asyncio.subprocess.Process] = {}

    async def until_stopped(*waits: asyncio.Task[Any]) -> set[asyncio.Task[Any]]:
        done, _ = await asyncio.wait([*waits, stopped, serving], return_when=FIRST)
        return done

    try:
        children["db migrate"] = await asyncio.create_subprocess_exec("airflow", "db", "migrate")
        migrated = asyncio.create_task(children["db migrate"].wait())
        if migrated not in await until_stopped(migrated):
            return 0 if stopping.is_set() else 1
        if migrated.result() != 0:
            log(f"airflow db migrate failed (exit {migrated.result()})")
            return 1
        del children["db migrate"]
        api = ("api-server", "--host", "127.0.0.1", "--port", str(internal), "--proxy-headers")
        for name, args in {"api-server": api, **COMPONENTS}.items():
            children[name] = await asyncio.create_subprocess_exec("airflow", *args)
        exits = {asyncio.create_task(p.wait()): name for name, p in children.items()}
        for task in await until_stopped(*exits):
            if task in exits:
                log(f"airflow {exits[task]} exited ({task.result()}); stopping the others")
                return 1
        return 0 if stopping.is_set() else 1
    finally:
        stopped.cancel()
        await stop_all(children)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serving
        await gate.client.aclose()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
