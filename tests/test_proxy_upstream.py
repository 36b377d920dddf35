"""The proxy's HTTP/1.1 client against scripted servers: framing, keep-alive, failures.

Each scripted server is a raw asyncio socket server that answers with canned
bytes, so that the client meets exactly the responses, good and bad, that a
real server may send.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from hub.proxy.upstream import UpstreamError, UpstreamPool


def free_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Scripted:
    """A raw TCP server that answers each request with the next canned reply.

    ``None`` as a reply hangs up without answering; ``close_after`` hangs up
    after every reply (read-until-close framing); ``silent`` never answers.
    """

    def __init__(
        self, replies: list[bytes | None], *, close_after: bool = False, silent: bool = False
    ) -> None:
        self.replies = replies
        self.close_after = close_after
        self.silent = silent
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if self.silent:
                    await asyncio.sleep(10)
                reply = self.replies.pop(0) if self.replies else None
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def exchange_body(pool: UpstreamPool, target: str) -> tuple[int, bytes]:
    exchange = await pool.start(target, GET, body=0)
    await exchange.end()
    answer = await exchange.head()
    data = b""
    while not exchange.done():
        data += await exchange.read()
    exchange.release()
    return answer.code, data


async def test_client_decodes_chunked_bodies_with_extensions_and_trailers() -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    pool = UpstreamPool()
    async with Scripted([reply]) as target:
        assert await exchange_body(pool, target) == (200, b"hello world")
        assert pool.idle_connections(target) == 1
    pool.close()


async def test_client_reads_until_close_and_never_pools_such_a_connection() -> None:
    pool = UpstreamPool()
    async with Scripted([b"HTTP/1.1 200 OK\r\n\r\nall of it"], close_after=True) as target:
        assert await exchange_body(pool, target) == (200, b"all of it")
        assert pool.idle_connections(target) == 0
    pool.close()


async def test_client_sends_a_request_again_when_a_pooled_connection_was_dropped() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    pool = UpstreamPool()
    scripted = Scripted([ok, None, ok])
    async with scripted as target:
        assert await exchange_body(pool, target) == (200, b"ok")
        assert await exchange_body(pool, target) == (200, b"ok")
    assert scripted.connections == 2
    pool.close()


async def test_client_never_reuses_a_connection_with_unread_bytes() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    stray = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"
    pool = UpstreamPool()
    scripted = Scripted([ok + stray, ok])
    async with scripted as target:
        assert await exchange_body(pool, target) == (200, b"ok")
        await asyncio.sleep(0.05)
        assert await exchange_body(pool, target) == (200, b"ok")
    assert scripted.connections == 2
    pool.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    ],
)
async def test_client_turns_bad_responses_into_502(reply: bytes) -> None:
    pool = UpstreamPool()
    async with Scripted([reply], close_after=True) as target:
        with pytest.raises(UpstreamError) as failed:
            await exchange_body(pool, target)
    assert failed.value.status == 502
    pool.close()


async def test_client_gives_503_when_nothing_listens_and_504_when_nothing_answers() -> None:
    pool = UpstreamPool(idle_timeout=0.3)
    with pytest.raises(UpstreamError) as refused:
        await pool.start(f"http://127.0.0.1:{free_port()}", GET, body=0)
    assert refused.value.status == 503
    async with Scripted([], silent=True) as target:
        started = time.monotonic()
        with pytest.raises(UpstreamError) as slow:
            await exchange_body(pool, target)
    assert slow.value.status == 504 and time.monotonic() - started < 1.5
    pool.close()
