"""A loopback TCP proxy in front of MariaDB or PostgreSQL that can cut a connection around a COMMIT.

It frames the client's packets - MySQL's (3-byte little-endian length, 1-byte sequence), or
PostgreSQL's (untyped start-up messages, then a type byte and a 4-byte big-endian length) - and,
once armed, reacts to the next ``COMMIT`` (MySQL ``COM_QUERY``, PostgreSQL simple query ``Q``):

- ``before``: drop both sides without forwarding it - the server rolls the transaction back;
- ``after``: forward it, wait for the server's answer, then drop both sides without passing the
  answer on - the commit happened, the client cannot know.

``drop_all`` cuts every connection open through the proxy at once, wherever it is (a network
partition, a load balancer restarting). While the server is down, a new client connection is
closed at once, as a refused connection would be.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

COM_QUERY = 0x03


class CommitCutter:
    def __init__(self, upstream_port: int = 3306, protocol: str = "mysql") -> None:
        self.upstream_port = upstream_port
        self.protocol = protocol
        self.mode: Literal["before", "after"] | None = None
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    def arm(self, mode: Literal["before", "after"]) -> None:
        self.mode = mode

    async def __aenter__(self) -> CommitCutter:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def drop_all(self) -> int:
        """Abort every connection open through the proxy (both sides); how many there were."""
        pairs = list(self._open)
        for pair in pairs:
            for writer in pair:
                writer.transport.abort()
        return len(pairs)

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.drop_all()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:  # the server is down: the client sees its connection closed
            c_writer.transport.abort()
            return
        pair = (c_writer, s_writer)
        self._open.add(pair)
        swallow = asyncio.Event()
        answered = asyncio.Event()

        async def server_to_client() -> None:
            while data := await s_reader.read(65536):
                if swallow.is_set():
                    answered.set()
                    return
                c_writer.write(data)
                await c_writer.drain()

        async def client_to_server() -> None:
            buf = b""
            starting = True  # PostgreSQL: untyped messages until the StartupMessage
            while data := await c_reader.read(65536):
                buf += data
                while True:
                    if self.protocol == "postgresql":
                        framed = _pg_message(buf, starting)
                        if framed is None:
                            break
                        packet, buf, starting = *framed[:2], framed[2] and starting
                        is_commit = (
                            packet[:1] == b"Q"
                            and packet[5:].rstrip(b"\0; ").strip().upper() == b"COMMIT"
                        )
                    else:
                        if len(buf) < 4:
                            break
                        size = int.from_bytes(buf[:3], "little")
                        if len(buf) < 4 + size:
                            break
                        packet, buf = buf[: 4 + size], buf[4 + size :]
                        payload = packet[4:]
                        is_commit = (
                            payload[:1] == bytes([COM_QUERY])
                            and payload[1:].strip().upper() == b"COMMIT"
                        )
                    if is_commit and self.mode is not None:
                        mode, self.mode = self.mode, None
                        self.cuts += 1
                        if mode == "before":
                            return
                        swallow.set()
                        s_writer.write(packet)
                        await s_writer.drain()
                        await asyncio.wait_for(answered.wait(), 10)
                        return
                    s_writer.write(packet)
                    await s_writer.drain()

        pumps = [asyncio.create_task(server_to_client()), asyncio.create_task(client_to_server())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._open.discard(pair)
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)  # a reset is no error here
            for writer in (c_writer, s_writer):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


_SSL_REQUEST, _GSS_REQUEST = 80877103, 80877104


def _pg_message(buf: bytes, starting: bool) -> tuple[bytes, bytes, bool] | None:
    """The next whole client message of ``buf``, the rest, and whether more untyped start-up
    messages may follow (after an SSL/GSS request the StartupMessage still comes untyped)."""
    if starting:
        if len(buf) < 8:
            return None
        size = int.from_bytes(buf[:4], "big")
        if len(buf) < size:
            return None
        code = int.from_bytes(buf[4:8], "big")
        return buf[:size], buf[size:], code in (_SSL_REQUEST, _GSS_REQUEST)
    if len(buf) < 5:
        return None
    size = 1 + int.from_bytes(buf[1:5], "big")
    if len(buf) < size:
        return None
    return buf[:size], buf[size:], False
