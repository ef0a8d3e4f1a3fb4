"""The simulated fibre: carries Alice's prepared frames to Bob's simulated receiver.

It carries Alice's choices in clear, so it never binds a routable address: a
Unix socket (the default), a loopback TCP socket, or an in-process queue for
demos and tests. Bob's receiver physics reads the frames; Bob's protocol code
only ever sees the tags the receiver produces.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import stat
from dataclasses import dataclass
from typing import Protocol

from qkdd.physics.link import HEADER_SIZE, PreparedFrame, decode_frame, encode_frame, frame_size


class FrameSource(Protocol):
    """Anything the receiver reads prepared frames from (None: the fibre was closed)."""

    async def receive(self) -> PreparedFrame | None: ...


class FibreError(Exception):
    """The simulated fibre cannot be opened or was given a forbidden address."""


@dataclass(frozen=True, slots=True)
class FibreAddress:
    """``unix:/PATH`` or ``tcp:[HOST:]PORT`` with a loopback HOST (default 127.0.0.1)."""

    kind: str
    path: str = ""
    host: str = "127.0.0.1"
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> FibreAddress:
        if text.startswith("unix:"):
            path = text.removeprefix("unix:")
            if not path:
                raise FibreError("a Unix fibre address is unix:/PATH")
            return cls("unix", path=path)
        if text.startswith("tcp:"):
            rest = text.removeprefix("tcp:")
            host, _, port = rest.rpartition(":")
            host = host.strip("[]") or "127.0.0.1"
            if host == "localhost":
                host = "127.0.0.1"
            try:
                loopback = ipaddress.ip_address(host).is_loopback
                number = int(port)
            except ValueError:
                raise FibreError(f"fibre address {text!r}: use tcp:[LOOPBACK_IP:]PORT") from None
            if not loopback:
                raise FibreError(
                    f"fibre address {text!r}: the simulated fibre carries Alice's choices, "
                    "so it binds loopback only"
                )
            if not 0 <= number < 65536:
                raise FibreError(f"fibre port {number} out of range")
            return cls("tcp", host=host, port=number)
        raise FibreError(f"fibre address {text!r}: use unix:/PATH or tcp:[127.0.0.1:]PORT")


class FibreTransmitter:
    """Alice's end: sends prepared frames in order."""

    def __init__(
        self, writer: asyncio.StreamWriter | None, queue: asyncio.Queue[bytes | None] | None
    ) -> None:
        self._writer = writer
        self._queue = queue

    async def send(self, frame: PreparedFrame) -> None:
        data = encode_frame(frame)
        if self._queue is not None:
            await self._queue.put(data)
            return
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        if self._queue is not None:
            await self._queue.put(None)
            self._queue = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
            self._writer = None


class FibreReceiver:
    """Bob's end: prepared frames as they arrive; None once Alice has closed the fibre."""

    def __init__(
        self, reader: asyncio.StreamReader | None, queue: asyncio.Queue[bytes | None] | None
    ) -> None:
        self._reader = reader
        self._queue = queue

    async def receive(self) -> PreparedFrame | None:
        if self._queue is not None:
            data = await self._queue.get()
            return None if data is None else decode_frame(data)
        assert self._reader is not None
        try:
            header = await self._reader.readexactly(HEADER_SIZE)
            body = await self._reader.readexactly(frame_size(header))
        except asyncio.IncompleteReadError:
            return None
        return decode_frame(header + body)


def in_process_fibre(max_frames: int = 4) -> tuple[FibreTransmitter, FibreReceiver]:
    """Both ends in one process (bounded, so a fast source waits for the receiver)."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(max_frames)
    return FibreTransmitter(None, queue), FibreReceiver(None, queue)


def _remove_stale_socket(path: str) -> None:
    # a local socket file: a quick metadata call, no need for a worker thread
    if stat.S_ISSOCK(os.stat(path).st_mode if os.path.exists(path) else 0):
        os.unlink(path)


class FibreListener:
    """Bob's side of a two-process fibre: listens, and accepts Alice's one connection."""

    def __init__(self, address: FibreAddress) -> None:
        self.address = address
        self._server: asyncio.Server | None = None
        self._accepted: asyncio.Future[FibreReceiver] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._accepted = loop.create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert self._accepted is not None
            if self._accepted.done():
                writer.close()  # one transmitter per fibre
                return
            self._accepted.set_result(FibreReceiver(reader, None))

        if self.address.kind == "unix":
            path = self.address.path
            _remove_stale_socket(path)
            self._server = await asyncio.start_unix_server(on_connect, path=path)
            os.chmod(path, 0o600)  # Alice's choices: only this user may connect
        else:
            self._server = await asyncio.start_server(
                on_connect, host=self.address.host, port=self.address.port
            )

    @property
    def port(self) -> int:
        """The bound TCP port (useful with port 0)."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def accept(self) -> FibreReceiver:
        if self._accepted is None:
            raise FibreError("the fibre listener was not started")
        return await self._accepted

    async def receive(self) -> PreparedFrame | None:
        """The next frame from Alice, waiting for her to connect first."""
        return await (await self.accept()).receive()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            if self.address.kind == "unix":
                _remove_stale_socket(self.address.path)


async def connect_fibre(address: FibreAddress | str) -> FibreTransmitter:
    """Alice's side of a two-process fibre."""
    addr = FibreAddress.parse(address) if isinstance(address, str) else address
    try:
        if addr.kind == "unix":
            _reader, writer = await asyncio.open_unix_connection(addr.path)
        else:
            _reader, writer = await asyncio.open_connection(addr.host, addr.port)
    except OSError as exc:
        raise FibreError(f"cannot reach the simulated fibre at {addr}: {exc}") from None
    return FibreTransmitter(writer, None)
