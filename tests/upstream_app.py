"""A programmable user server for the proxy's tests; it needs only tornado.

    LABDOCK_PORT=8888 LABDOCK_SECRET=s LABDOCK_NAME=alice python upstream_app.py

Like a real user server, it refuses any request without
``Authorization: token $LABDOCK_SECRET``. Every path ends in a verb, whatever
prefix comes before it (so it answers with or without the hub's prefix):

- ``.../echo``: any method; the request as seen (method, uri, headers) and the
  body's length and SHA-256, computed as it streams in.
- ``.../download?size=N[&length=1]``: N bytes, streamed in 64 KiB pieces, chunked
  or with ``Content-Length``.
- ``.../redirect``: 302 to ``/elsewhere?from=upstream``.
- ``.../slow?delay=S``: answers after S seconds.
- ``.../stall``: sends its headers and a first piece, then nothing for an hour.
- ``.../status?code=N``: answers N with a header ``X-Upstream-Status``.
- ``.../cookies``: sets a harmless cookie and one named like the hub's session.
- ``.../ws``: WebSocket echo; the message ``close:CODE:REASON`` makes it close
  with that code; the first offered subprotocol is chosen.
- ``.../last-close``: the close code and reason the last socket got from its peer.
- ``.../log``: every request line it has received, in order.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from typing import Any

import tornado.web
import tornado.websocket

NAME = os.environ.get("LABDOCK_NAME", "upstream")
SECRET = os.environ.get("LABDOCK_SECRET", "")
SEEN: list[str] = []
LAST_CLOSE: dict[str, Any] = {}


class Base(tornado.web.RequestHandler):
    def prepare(self) -> None:
        SEEN.append(f"{self.request.method} {self.request.uri}")
        if self.request.headers.get("Authorization") != f"token {SECRET}":
            self.set_status(403)
            self.finish({"name": NAME, "error": "missing or wrong server secret"})

    def check_xsrf_cookie(self) -> None:
        pass


@tornado.web.stream_request_body
class Echo(Base):
    def initialize(self) -> None:
        self.digest = hashlib.sha256()
        self.length = 0

    def data_received(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.length += len(chunk)

    def answer(self) -> None:
        headers: dict[str, list[str]] = {}
        for key, value in self.request.headers.get_all():
            headers.setdefault(key, []).append(value)
        self.set_header("X-Upstream", NAME)
        self.finish(
            {
                "name": NAME,
                "method": self.request.method,
                "uri": self.request.uri,
                "headers": headers,
                "body_length": self.length,
                "body_sha256": self.digest.hexdigest(),
            }
        )

    get = post = put = patch = delete = options = answer  # type: ignore[assignment]

    def head(self) -> None:
        self.set_header("Content-Length", "1234")
        self.set_header("X-Upstream", NAME)
        self.finish()


class Download(Base):
    async def get(self) -> None:
        size = int(self.get_argument("size"))
        if self.get_argument("length", ""):
            self.set_header("Content-Length", str(size))
        self.set_header("Content-Type", "application/octet-stream")
        piece = bytes(range(256)) * 256  # 64 KiB
        sent = 0
        while sent < size:
            part = piece[: min(len(piece), size - sent)]
            self.write(part)
            await self.flush()
            sent += len(part)
        self.finish()


class Redirect(Base):
    def get(self) -> None:
        self.redirect("/elsewhere?from=upstream")


class Slow(Base):
    async def get(self) -> None:
        await asyncio.sleep(float(self.get_argument("delay", "5")))
        self.finish({"name": NAME, "slow": True})


class Stall(Base):
    async def get(self) -> None:
        self.write(b"first piece\n")
        await self.flush()
        await asyncio.sleep(3600)


class Status(Base):
    def get(self) -> None:
        code = int(self.get_argument("code"))
        self.set_status(code)
        self.set_header("X-Upstream-Status", str(code))
        if code not in (204, 304):
            self.finish({"name": NAME, "code": code})


class Cookies(Base):
    def get(self) -> None:
        self.set_cookie("app_pref", "dark", path="/")
        self.set_cookie("labdock-session", "planted-by-upstream", path="/")
        self.set_cookie("_xsrf", "planted-by-upstream", path="/")
        self.finish({"name": NAME})


class LastClose(Base):
    def get(self) -> None:
        self.finish(LAST_CLOSE)


class Log(Base):
    def get(self) -> None:
        self.finish({"seen": SEEN})


class Anything(Base):
    def get(self) -> None:
        self.finish({"name": NAME, "uri": self.request.uri})


class Socket(tornado.websocket.WebSocketHandler):
    def prepare(self) -> None:
        SEEN.append(f"WS {self.request.uri}")
        if self.request.headers.get("Authorization") != f"token {SECRET}":
            raise tornado.web.HTTPError(403)

    def check_origin(self, origin: str) -> bool:
        return True  # the hub checks the origin before the request gets here

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return subprotocols[0] if subprotocols else None

    def on_message(self, message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith("close:"):
            _, code, reason = message.split(":", 2)
            self.close(int(code), reason)
            return
        self.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        LAST_CLOSE.clear()
        LAST_CLOSE.update({"code": self.close_code, "reason": self.close_reason})


def make_app() -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r".*/echo", Echo),
            (r".*/download", Download),
            (r".*/redirect", Redirect),
            (r".*/slow", Slow),
            (r".*/stall", Stall),
            (r".*/status", Status),
            (r".*/cookies", Cookies),
            (r".*/ws", Socket),
            (r".*/last-close", LastClose),
            (r".*/log", Log),
            (r".*", Anything),
        ]
    )


async def main() -> None:
    port = int(os.environ.get("LABDOCK_PORT", "8888"))
    make_app().listen(port, address="0.0.0.0", max_body_size=8 * 1024**3)
    print(f"upstream {NAME} listening on {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
