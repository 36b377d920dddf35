"""WebSocket pieces of ``bench/proxy.py``: an echo server, and a client that counts echoes.

$ python bench/_proxy_ws.py serve PORT          # echo every message back, on any path
$ python bench/_proxy_ws.py count URL SECONDS [HEADER: VALUE ...]   # prints messages/s

The client keeps one message of 1 KiB in flight at a time, so the figure is
round trips per second through whichever proxy sits between the two.
"""

from __future__ import annotations

import asyncio
import sys
import time

import tornado.httpclient
import tornado.web
import tornado.websocket


class Echo(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return True

    async def on_message(self, message: str | bytes) -> None:
        await self.write_message(message, binary=isinstance(message, bytes))


async def serve(port: int) -> None:
    app = tornado.web.Application([(r"/.*", Echo)])
    app.listen(port, address="127.0.0.1")
    print("ready", flush=True)
    await asyncio.Event().wait()


async def count(url: str, seconds: float, headers: dict[str, str]) -> float:
    request = tornado.httpclient.HTTPRequest(url, headers=headers)
    conn = await tornado.websocket.websocket_connect(request)
    message = "m" * 1024  # text: every proxy passes it the same way
    for _ in range(200):  # warm up
        await conn.write_message(message)
        await conn.read_message()
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        await conn.write_message(message)
        echo = await conn.read_message()
        if echo != message:
            raise RuntimeError(f"the echo came back different: {echo!r:.80}")
        done += 1
    rate = done / (time.perf_counter() - started)
    conn.close()
    return rate


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2])))
    else:
        pairs = [h.split(": ", 1) for h in sys.argv[4:]]
        print(f"{asyncio.run(count(sys.argv[2], float(sys.argv[3]), dict(pairs))):.1f}")
