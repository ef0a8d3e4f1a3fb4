"""What every twin shares: simulated identity, connect/close bookkeeping."""

from __future__ import annotations

from typing import Any

from qkdd import __version__
from qkdd.instruments.config import InstrumentConfig
from qkdd.instruments.interfaces import Instrument, InstrumentHealth, InstrumentUnavailable


class Twin(Instrument):
    simulated = True

    def __init__(self, name: str, config: InstrumentConfig) -> None:
        super().__init__(name)
        self.config = config
        self.options: dict[str, Any] = dict(config.options)
        self._connected = False

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        self._connected = False

    def _require_connected(self) -> None:
        if not self._connected:
            raise InstrumentUnavailable(f"{self.name}: not connected")

    async def identity(self) -> str:
        model = type(self).__name__.removeprefix("Simulated").upper()
        return f"qkdd,SIMULATED-{model},{self.name},{__version__}"

    def _health(self, **readings: float | int | str | bool) -> InstrumentHealth:
        return InstrumentHealth(healthy=self._connected, detail="simulated", readings=readings)
