"""Serial and session behaviour over real pyserial ports (loop:// and a pty pair)."""

from __future__ import annotations

import asyncio
import os
import pty
import threading
import time
import tty
from collections.abc import Iterator

import pytest

from qkdd.instruments.config import TransportAddress
from qkdd.instruments.interfaces import InstrumentTimeout, InstrumentUnavailable
from qkdd.instruments.scpi import ScpiChannel
from qkdd.instruments.session import InstrumentSession
from qkdd.instruments.transports import SerialTransport, TransportTimeout

from .responders import ScpiModel


class _PtyInstrument:
    """An SCPI model answering on the master side of a pty; the driver opens the slave."""

    def __init__(self, model: ScpiModel) -> None:
        self.model = model
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        buffer = bytearray()
        os.set_blocking(self.master, False)
        while not self._stop.is_set():
            try:
                buffer += os.read(self.master, 4096)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            except OSError:
                return
            while (end := buffer.find(b"\n")) >= 0:
                line = buffer[:end].decode().strip()
                del buffer[: end + 1]
                reply = self.model.handle(line, None)
                if reply is not None and line.upper() not in self.model.silent:
                    os.write(self.master, reply.encode() + b"\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        os.close(self.master)
        os.close(self._slave)


@pytest.fixture
def pty_instrument() -> Iterator[_PtyInstrument]:
    instrument = _PtyInstrument(ScpiModel(identity="ACME,SERIAL-1,42,1.0", silent={"SLOW?"}))
    yield instrument
    instrument.close()


def test_loop_url_round_trip_and_timeout() -> None:
    transport = SerialTransport(TransportAddress.parse("serial:loop://"), timeout_s=0.2)
    transport.open()
    transport.write("*IDN?")
    assert transport.read_line() == "*IDN?"  # loop:// echoes what was written
    with pytest.raises(TransportTimeout):
        transport.read_line()
    transport.close()


async def test_scpi_over_a_pty_serial_port(pty_instrument: _PtyInstrument) -> None:
    transport = SerialTransport(TransportAddress.parse(f"serial:{pty_instrument.path}"), 0.3)
    session = InstrumentSession("serial-inst", transport)
    scpi = ScpiChannel(session)
    await session.open()
    assert await scpi.identity() == "ACME,SERIAL-1,42,1.0"
    await session.write("BOGUS")
    assert await scpi.errors() == [(-113, "Undefined header")]
    with pytest.raises(InstrumentTimeout):
        await scpi.query("SLOW?")
    assert await scpi.identity() == "ACME,SERIAL-1,42,1.0"
    await session.close()


async def test_reconnect_backs_off_exponentially() -> None:
    transport = SerialTransport(TransportAddress.parse("serial:/dev/qkdd-no-such-port"), 0.1)
    session = InstrumentSession("gone", transport, backoff_initial_s=0.2, backoff_max_s=0.4)
    with pytest.raises(InstrumentUnavailable, match="cannot open"):
        await session.open()
    # Inside the back-off window a call fails fast without touching the port.
    with pytest.raises(InstrumentUnavailable, match="next reconnect in"):
        await session.query("*IDN?")
    await asyncio.sleep(0.25)
    with pytest.raises(InstrumentUnavailable, match="cannot open"):
        await session.query("*IDN?")
    assert session._backoff_s == pytest.approx(0.4)  # doubled, capped
    await session.close()
