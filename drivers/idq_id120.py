"""ID Quantique ID120 free-running Si avalanche photodiode single-photon detector.

SCPI-style commands over USBTMC (USB vendor 0x1DDC). Values are integers in
micro- or milli-units: ``BIAS:VOLTAGE`` in µV, ``THRESHOLD:VOLTAGE`` in µV,
``DEADTIME:TIME`` in ns (range 40-1,000,000 in steps of 40),
``COUNTERS:INTEGRATION_TIME`` in ms, ``REG:MEASURED_TEMP?`` in m°C;
booleans are ``TRUE``/``FALSE``. The ID120 has no error queue command that we
could confirm, so errors come from the IEEE 488.2 ``*ESR?`` register. Its
detection efficiency follows the bias voltage and has no command of its own;
the efficiency calibrated for the configured bias is given as the option
``efficiency_percent``. It has no bias-current/photocurrent monitor.
"""

from __future__ import annotations

from typing import ClassVar

from qkdd.instruments.config import InstrumentConfig, TransportKind
from qkdd.instruments.interfaces import (
    DetectorMode,
    InstrumentHealth,
    InstrumentUnavailable,
    SinglePhotonDetector,
    Unsupported,
)
from qkdd.instruments.registry import HardwareDriver
from qkdd.instruments.scpi import EsrChannel, parse_bool
from qkdd.instruments.session import InstrumentSession
from qkdd.instruments.transports import make_transport

_DEAD_TIME_STEP_NS = 40
_DEAD_TIME_RANGE_NS = (40, 1_000_000)
_BIAS_RANGE_V = (0.0, 250.0)


class IdqId120(HardwareDriver, SinglePhotonDetector):
    driver_name = "idq-id120"
    transports: ClassVar[frozenset[TransportKind]] = frozenset({TransportKind.VISA})
    description = "ID Quantique ID120 Si-APD single-photon detector (USBTMC)"

    def __init__(self, name: str, config: InstrumentConfig) -> None:
        super().__init__(name)
        self.session = InstrumentSession(name, make_transport(config))
        self.scpi = EsrChannel(self.session)
        self._efficiency = config.options.get("efficiency_percent")
        self._max_temperature_c = float(config.options.get("max_temperature_c", -20.0))
        self._identity = ""

    async def connect(self) -> None:
        await self.session.open()
        self._identity = await self.scpi.identity()
        if "ID120" not in self._identity.upper():
            await self.close()
            raise InstrumentUnavailable(
                f"{self.name}: expected an ID Quantique ID120, found {self._identity!r}"
            )
        await self.scpi.errors()  # read-and-clear the event register

    async def close(self) -> None:
        await self.session.close()

    async def identity(self) -> str:
        return self._identity

    async def set_bias_voltage(self, volts: float) -> None:
        low, high = _BIAS_RANGE_V
        if not low <= volts <= high:
            raise ValueError(f"bias must be within {low}-{high} V")
        await self.scpi.write(f"BIAS:VOLTAGE {round(volts * 1e6)}")

    async def bias_voltage(self) -> float:
        return int(await self.scpi.query("BIAS:VOLTAGE?")) / 1e6

    async def set_efficiency(self, efficiency_percent: float) -> None:
        raise Unsupported(
            f"{self.name}: the ID120's efficiency follows its bias voltage; set the bias and "
            "give the calibrated efficiency as options.efficiency_percent"
        )

    async def efficiency(self) -> float:
        if self._efficiency is None:
            raise Unsupported(f"{self.name}: set options.efficiency_percent (calibrated)")
        return float(self._efficiency)

    async def set_dead_time_ns(self, dead_time_ns: float) -> None:
        low, high = _DEAD_TIME_RANGE_NS
        steps = round(dead_time_ns / _DEAD_TIME_STEP_NS)
        value = steps * _DEAD_TIME_STEP_NS
        if not low <= value <= high:
            raise ValueError(f"dead time must be within {low}-{high} ns")
        await self.scpi.write(f"DEADTIME:TIME {value}")

    async def dead_time_ns(self) -> float:
        return float(int(await self.scpi.query("DEADTIME:TIME?")))

    async def mode(self) -> DetectorMode:
        return DetectorMode.FREE_RUNNING

    async def count_rates_hz(self) -> list[float]:
        return [float(await self.scpi.query("COUNTERS:DETECTION_FREQ?"))]

    async def temperature_c(self) -> float:
        return int(await self.scpi.query("REG:MEASURED_TEMP?")) / 1000

    async def health(self) -> InstrumentHealth:
        problems = []
        temperature = await self.temperature_c()
        if temperature > self._max_temperature_c:
            problems.append(f"APD at {temperature:.1f} °C, above {self._max_temperature_c:.1f} °C")
        if parse_bool(await self.scpi.query("BIAS:ERROR_STATUS?")):
            problems.append("bias error")
        problems += [f"{text}" for _bit, text in await self.scpi.errors()]
        return InstrumentHealth(
            healthy=not problems,
            detail="; ".join(problems) or "ok",
            readings={
                "temperature_c": temperature,
                "bias_v": await self.bias_voltage(),
                "dead_time_ns": await self.dead_time_ns(),
                "count_rate_hz": (await self.count_rates_hz())[0],
            },
        )
