"""A loopback TCP proxy in front of MariaDB that can cut a connection around a COMMIT.

It frames the client's MySQL packets (3-byte little-endian length, 1-byte sequence) and, once
armed, reacts to the next ``COM_QUERY "COMMIT"``:

- ``before``: drop both sides without forwarding it - the server rolls the transaction back;
- ``after``: forward it, wait for the server's answer, then drop both sides without passing the
  answer on - the commit happened, the client cannot know.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

COM_QUERY = 0x03


class CommitCutter:
    def __init__(self, upstream_port: int = 3306) -> None:
        self.upstream_port = upstream_port
        self.mode: Literal["before", "after"] | None = None
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    def arm(self, mode: Literal["before", "after"]) -> None:
        self.mode = mode

    async def __aenter__(self) -> CommitCutter:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
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
            while data := await c_reader.read(65536):
                buf += data
                while len(buf) >= 4:
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
            for task in pumps:
                task.cancel()
            for writer in (c_writer, s_writer):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
