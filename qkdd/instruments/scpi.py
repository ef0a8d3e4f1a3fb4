"""SCPI conventions shared by drivers of SCPI instruments (IEEE 488.2 common commands)."""

from __future__ import annotations

import re

from qkdd.instruments.interfaces import DeviceError
from qkdd.instruments.session import InstrumentSession
from qkdd.instruments.transports import Transport

_ERROR = re.compile(r'^\s*([+-]?\d+)\s*,\s*"?(.*?)"?\s*$')
_MAX_DRAIN = 32  # the instruments' queues hold 10-32 entries; never loop forever


def parse_error(reply: str) -> tuple[int, str]:
    """Parse a ``SYST:ERR?`` reply like ``-113,"Undefined header"``."""
    match = _ERROR.match(reply)
    if match is None:
        raise DeviceError(f"unparseable error-queue reply {reply!r}")
    return int(match[1]), match[2]


def parse_bool(reply: str) -> bool:
    value = reply.strip().upper()
    if value in ("1", "ON", "TRUE"):
        return True
    if value in ("0", "OFF", "FALSE"):
        return False
    raise DeviceError(f"expected a boolean reply, got {reply!r}")


def parse_float(reply: str) -> float:
    try:
        return float(reply.strip())
    except ValueError:
        raise DeviceError(f"expected a number, got {reply!r}") from None


class ScpiChannel:
    """Commands with error-queue checking on top of an :class:`InstrumentSession`."""

    def __init__(self, session: InstrumentSession, error_query: str = "SYST:ERR?") -> None:
        self.session = session
        self.error_query = error_query

    async def identity(self) -> str:
        return (await self.session.query("*IDN?")).strip()

    def _drain(self, transport: Transport) -> list[tuple[int, str]]:
        found: list[tuple[int, str]] = []
        for _ in range(_MAX_DRAIN):
            transport.write(self.error_query)
            code, message = parse_error(transport.read_line())
            if code == 0:
                break
            found.append((code, message))
        return found

    async def errors(self) -> list[tuple[int, str]]:
        """Drain the error queue."""
        return await self.session.run(self._drain)

    def _raise(self, context: str, errors: list[tuple[int, str]]) -> None:
        if errors:
            text = "; ".join(f"{code} {message}" for code, message in errors)
            raise DeviceError(f"{self.session.name}: {context}: {text}")

    async def write(self, command: str) -> None:
        """Send a command and raise DeviceError if the instrument queued an error for it.

        The command and the error check run as one exclusive exchange, so an
        error is never blamed on another task's command.
        """

        def exchange(transport: Transport) -> list[tuple[int, str]]:
            transport.write(command)
            return self._drain(transport)

        self._raise(command, await self.session.run(exchange))

    async def write_block(self, header: str, payload: bytes) -> None:
        """Send ``header`` followed by an IEEE 488.2 definite-length binary block."""
        length = str(len(payload)).encode()
        if len(length) > 9:
            raise ValueError("binary block too long for a definite-length header")
        block = header.encode("ascii") + b"#" + str(len(length)).encode() + length + payload

        def exchange(transport: Transport) -> list[tuple[int, str]]:
            transport.write_raw(block)
            transport.write("")  # the terminator ends the program message
            return self._drain(transport)

        self._raise(header.strip(), await self.session.run(exchange))

    async def query(self, command: str) -> str:
        return await self.session.query(command)

    async def query_float(self, command: str) -> float:
        return parse_float(await self.session.query(command))

    async def query_bool(self, command: str) -> bool:
        return parse_bool(await self.session.query(command))


# IEEE 488.2 standard event status register bits that report a failed command.
_ESR_ERRORS = {
    2: "query error",
    3: "device-dependent error",
    4: "execution error",
    5: "command error",
}


class EsrChannel(ScpiChannel):
    """For instruments without ``SYST:ERR?``: errors from the standard event status register.

    ``*ESR?`` is mandatory in IEEE 488.2 and reading it clears it, so one
    read after a command tells whether that command failed.
    """

    def __init__(self, session: InstrumentSession) -> None:
        super().__init__(session, error_query="*ESR?")

    def _drain(self, transport: Transport) -> list[tuple[int, str]]:
        transport.write(self.error_query)
        reply = transport.read_line()
        try:
            register = int(reply.strip())
        except ValueError:
            raise DeviceError(f"unparseable *ESR? reply {reply!r}") from None
        return [(bit, text) for bit, text in _ESR_ERRORS.items() if register >> bit & 1]
