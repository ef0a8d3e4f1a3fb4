"""Blocking, line-oriented transports to instruments: VISA, serial and raw TCP.

These do the bytes and nothing else; :mod:`qkdd.instruments.session` runs them
off the event loop with a lock, guard timeouts, resynchronisation and
reconnection. Every transport raises :class:`TransportTimeout` when a reply
does not complete within its timeout and :class:`TransportClosed` when the
connection is gone.
"""

from __future__ import annotations

import contextlib
import socket
import time
from abc import ABC, abstractmethod
from importlib import resources
from pathlib import Path
from typing import Any

import pyvisa
import serial

from qkdd.instruments.config import InstrumentConfig, TransportAddress, TransportKind


class TransportError(Exception):
    """Base of transport failures."""


class TransportTimeout(TransportError):
    """A reply did not complete within the transport timeout."""


class TransportClosed(TransportError):
    """The connection is gone (or was never made); reconnect to go on."""


class Transport(ABC):
    """A connection that carries terminated command lines and raw blocks."""

    def __init__(self, address: TransportAddress, timeout_s: float) -> None:
        self.address = address
        self.timeout_s = timeout_s

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def write(self, line: str) -> None:
        """Send one command; the transport adds the write terminator."""

    @abstractmethod
    def write_raw(self, data: bytes) -> None:
        """Send bytes as they are (binary blocks end with the terminator by the caller)."""

    @abstractmethod
    def read_line(self) -> str:
        """Read one reply up to the read terminator, which is stripped."""

    @abstractmethod
    def discard_input(self) -> None:
        """Drop anything already received, so a late reply cannot answer the next query."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address}>"


def shipped_visa_models() -> Path:
    """The pyvisa-sim model file of the instruments qkdd has drivers for."""
    return Path(str(resources.files("qkdd.instruments").joinpath("visa_models.yaml")))


class VisaTransport(Transport):
    """A VISA resource through pyvisa (``@py``, ``@ivi`` or the ``@sim`` models)."""

    def __init__(
        self,
        address: TransportAddress,
        timeout_s: float,
        visa_library: str = "@py",
        read_termination: str = "\n",
        write_termination: str = "\n",
    ) -> None:
        super().__init__(address, timeout_s)
        if visa_library == "@sim":
            visa_library = f"{shipped_visa_models()}@sim"
        self.visa_library = visa_library
        self.read_termination = read_termination
        self.write_termination = write_termination
        self._manager: Any = None
        self._resource: Any = None

    def open(self) -> None:
        try:
            self._manager = pyvisa.ResourceManager(self.visa_library)
            self._resource = self._manager.open_resource(
                self.address.target,
                read_termination=self.read_termination,
                write_termination=self.write_termination,
                timeout=int(self.timeout_s * 1000),
            )
        except (pyvisa.Error, OSError, ValueError) as exc:
            self.close()
            raise TransportClosed(f"cannot open {self.address.target}: {exc}") from None

    def close(self) -> None:
        for closable in (self._resource, self._manager):
            if closable is not None:
                with contextlib.suppress(Exception):
                    closable.close()
        self._resource = self._manager = None

    def _live(self) -> Any:
        if self._resource is None:
            raise TransportClosed(f"{self.address.target} is not open")
        return self._resource

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._live(), method)(*args)
        except pyvisa.errors.VisaIOError as exc:
            if exc.error_code == pyvisa.constants.StatusCode.error_timeout:
                raise TransportTimeout(
                    f"{self.address.target}: no reply in {self.timeout_s} s"
                ) from None
            self.close()
            raise TransportClosed(f"{self.address.target}: {exc.description}") from None
        except (OSError, pyvisa.Error) as exc:
            self.close()
            raise TransportClosed(f"{self.address.target}: {exc}") from None

    def write(self, line: str) -> None:
        self._call("write", line)

    def write_raw(self, data: bytes) -> None:
        self._call("write_raw", data)

    def read_line(self) -> str:
        return str(self._call("read"))

    def discard_input(self) -> None:
        resource = self._resource
        if resource is None:
            return
        # Not every session kind supports both; each is best effort.
        with contextlib.suppress(Exception):
            resource.flush(pyvisa.constants.BufferOperation.discard_read_buffer)
        with contextlib.suppress(Exception):
            resource.clear()  # device clear: aborts a pending reply on USBTMC/GPIB


class _StreamTransport(Transport):
    """Shared line handling for byte streams (serial, TCP)."""

    read_terminator = b"\n"
    write_terminator = b"\n"

    def __init__(self, address: TransportAddress, timeout_s: float) -> None:
        super().__init__(address, timeout_s)
        self._buffer = bytearray()

    @abstractmethod
    def _recv_some(self, deadline: float) -> bytes:
        """Return at least one byte before ``deadline`` or raise TransportTimeout."""

    def write(self, line: str) -> None:
        self.write_raw(line.encode("ascii") + self.write_terminator)

    def read_line(self) -> str:
        deadline = time.monotonic() + self.timeout_s
        while True:
            end = self._buffer.find(self.read_terminator)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + len(self.read_terminator)]
                return line.decode("ascii", errors="replace").rstrip("\r")
            self._buffer += self._recv_some(deadline)

    def discard_input(self) -> None:
        self._buffer.clear()


class SerialTransport(_StreamTransport):
    """A serial port or pyserial URL (``loop://``, ``socket://``, ``rfc2217://``)."""

    def __init__(self, address: TransportAddress, timeout_s: float, settings: Any = None) -> None:
        super().__init__(address, timeout_s)
        self.settings = settings
        self._port: Any = None

    def open(self) -> None:
        kwargs: dict[str, Any] = {
            "timeout": min(self.timeout_s, 0.05),
            "write_timeout": self.timeout_s,
        }
        if self.settings is not None:
            kwargs.update(
                baudrate=self.settings.baudrate,
                bytesize=self.settings.bytesize,
                parity=self.settings.parity,
                stopbits=self.settings.stopbits,
                rtscts=self.settings.rtscts,
            )
        try:
            self._port = serial.serial_for_url(self.address.target, **kwargs)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportClosed(f"cannot open {self.address.target}: {exc}") from None
        self._buffer.clear()

    def close(self) -> None:
        if self._port is not None:
            with contextlib.suppress(Exception):
                self._port.close()
        self._port = None

    def write_raw(self, data: bytes) -> None:
        if self._port is None:
            raise TransportClosed(f"{self.address.target} is not open")
        try:
            self._port.write(data)
            self._port.flush()
        except serial.SerialTimeoutException:
            raise TransportTimeout(f"{self.address.target}: write timed out") from None
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise TransportClosed(f"{self.address.target}: {exc}") from None

    def _recv_some(self, deadline: float) -> bytes:
        if self._port is None:
            raise TransportClosed(f"{self.address.target} is not open")
        while True:
            try:
                chunk: bytes = self._port.read(max(1, self._port.in_waiting))
            except (serial.SerialException, OSError) as exc:
                self.close()
                raise TransportClosed(f"{self.address.target}: {exc}") from None
            if chunk:
                return chunk
            if time.monotonic() >= deadline:
                raise TransportTimeout(f"{self.address.target}: no reply in {self.timeout_s} s")

    def discard_input(self) -> None:
        super().discard_input()
        if self._port is not None:
            with contextlib.suppress(Exception):
                self._port.reset_input_buffer()


class TcpTransport(_StreamTransport):
    """A raw TCP socket carrying terminated command lines (SCPI-RAW, port 5025 and alike)."""

    def __init__(self, address: TransportAddress, timeout_s: float) -> None:
        super().__init__(address, timeout_s)
        self._sock: socket.socket | None = None

    def open(self) -> None:
        try:
            self._sock = socket.create_connection(
                (self.address.target, self.address.port), timeout=self.timeout_s
            )
        except OSError as exc:
            raise TransportClosed(
                f"cannot connect to {self.address}: {exc.strerror or exc}"
            ) from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer.clear()

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None

    def write_raw(self, data: bytes) -> None:
        if self._sock is None:
            raise TransportClosed(f"{self.address} is not connected")
        try:
            self._sock.settimeout(self.timeout_s)
            self._sock.sendall(data)
        except TimeoutError:
            raise TransportTimeout(f"{self.address}: send timed out") from None
        except OSError as exc:
            self.close()
            raise TransportClosed(f"{self.address}: {exc}") from None

    def _recv_some(self, deadline: float) -> bytes:
        if self._sock is None:
            raise TransportClosed(f"{self.address} is not connected")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TransportTimeout(f"{self.address}: no reply in {self.timeout_s} s")
        try:
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(65536)
        except TimeoutError:
            raise TransportTimeout(f"{self.address}: no reply in {self.timeout_s} s") from None
        except OSError as exc:
            self.close()
            raise TransportClosed(f"{self.address}: {exc}") from None
        if not chunk:
            self.close()
            raise TransportClosed(f"{self.address}: connection closed by the instrument")
        return chunk

    def discard_input(self) -> None:
        # A TCP stream cannot be cleared in place: late bytes may still be in
        # flight. A fresh connection is the only sure resynchronisation.
        self.close()
        self._buffer.clear()
        self.open()


def make_transport(
    config: InstrumentConfig, *, read_termination: str = "\n", write_termination: str = "\n"
) -> Transport:
    """Build the transport an instrument's config asks for."""
    address = config.transport_address
    if address is None:
        raise TransportClosed("no address configured")
    if address.kind is TransportKind.VISA:
        return VisaTransport(
            address, config.timeout_s, config.visa_library, read_termination, write_termination
        )
    if address.kind is TransportKind.SERIAL:
        transport: _StreamTransport = SerialTransport(address, config.timeout_s, config.serial)
    elif address.kind is TransportKind.TCP:
        transport = TcpTransport(address, config.timeout_s)
    else:
        raise TransportClosed(f"{address} is a vendor SDK, not a byte transport")
    transport.read_terminator = read_termination.encode()
    transport.write_terminator = write_termination.encode()
    return transport
