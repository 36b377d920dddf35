"""The hub's listeners, as a service: the front proxy on the public port, the tornado
app behind it on a private Unix socket.

    web = WebFront(app, front, upstream, hub_socket="/tmp/labdock-3f2a/hub.sock")
    port = await web.listen(8000, "127.0.0.1")
    ...
    await web.close()      # stops listening, closes every connection, removes the socket
"""

from __future__ import annotations

import shutil
from pathlib import Path

import tornado.httpserver
import tornado.netutil
import tornado.web

from hub.proxy.fast import FrontProxy
from hub.proxy.upstream import UpstreamPool


class WebFront:
    """Listens once asked to (``listen``); closing ends every connection, first of all
    the hub's services, so that no request arrives while the rest closes."""

    name = "web"

    def __init__(
        self,
        app: tornado.web.Application,
        front: FrontProxy,
        upstream: UpstreamPool,
        hub_socket: str,
    ) -> None:
        self.app = app
        self.front = front
        self.upstream = upstream
        self.hub_socket = hub_socket
        self.listeners: list[tornado.httpserver.HTTPServer] = []

    async def listen(self, port: int, address: str) -> int:
        """Serve on ``address:port`` (0: a free port): the front there, tornado behind it."""
        if not self.listeners:
            # A private directory: only the front may reach the handlers, which
            # trust X-Real-Ip. Made here, so that a hub that never listens leaves none.
            Path(self.hub_socket).parent.mkdir(mode=0o700)
            sock = tornado.netutil.bind_unix_socket(self.hub_socket, mode=0o600)
            server = tornado.httpserver.HTTPServer(self.app, xheaders=True)
            server.add_socket(sock)
            self.listeners.append(server)
        return await self.front.listen(address, port)

    async def start(self) -> None:
        """Nothing until ``listen``: a hub in tests may serve its app another way."""

    async def close(self) -> None:
        await self.front.close()
        for server in self.listeners:
            server.stop()
            await server.close_all_connections()
        self.upstream.close()
        if self.listeners:
            shutil.rmtree(Path(self.hub_socket).parent, ignore_errors=True)
