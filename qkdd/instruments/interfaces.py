"""Async interfaces, one per class of instrument, with a status/health call each.

Every instrument is an async context: ``connect()`` opens it, ``close()``
releases it, ``identity()`` returns the identity string, ``health()`` a
snapshot a status page can show. A hardware driver whose instrument lacks a
feature raises :class:`Unsupported` for it instead of pretending.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Self

import numpy as np
import numpy.typing as npt

from qkdd.frames import FramePattern


class InstrumentClass(enum.StrEnum):
    """The classes of instrument a node can have."""

    LASER = "laser"
    STATE_ENCODER = "state_encoder"
    DETECTOR = "detector"
    TIME_TAGGER = "time_tagger"
    RANDOM_SOURCE = "random_source"
    ATTENUATOR = "attenuator"
    POWER_METER = "power_meter"

    @property
    def on_quantum_path(self) -> bool:
        """True for instruments whose simulation would make a key meaningless."""
        return self is not InstrumentClass.POWER_METER


class InstrumentError(Exception):
    """An instrument could not do what was asked."""


class DeviceError(InstrumentError):
    """The instrument itself reported an error (its error queue or an error reply)."""


class InstrumentTimeout(InstrumentError):
    """No complete reply within the transport timeout."""


class InstrumentUnavailable(InstrumentError):
    """The instrument cannot be used at all (SDK missing, no connection, wrong identity)."""


class Unsupported(InstrumentError):
    """This instrument's hardware has no such feature."""


Reading = float | int | str | bool


@dataclass(frozen=True)
class InstrumentHealth:
    """A health snapshot: ``healthy`` is what a supervisor acts on; readings are for people."""

    healthy: bool
    detail: str = "ok"
    readings: dict[str, Reading] = field(default_factory=dict)


class Instrument(ABC):
    """Base of every instrument, hardware or simulated."""

    instrument_class: ClassVar[InstrumentClass]
    #: True for simulated twins. Status, logs and every key carry it onwards.
    simulated: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection and check the instrument is the one configured."""

    @abstractmethod
    async def close(self) -> None:
        """Release the instrument; safe to call twice."""

    @abstractmethod
    async def identity(self) -> str:
        """The identity string (``*IDN?`` or the SDK's equivalent)."""

    @abstractmethod
    async def health(self) -> InstrumentHealth:
        """Read the instrument's state and judge whether it can be used now."""

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        kind = "simulated" if self.simulated else "hardware"
        return f"<{type(self).__name__} {self.name!r} {kind}>"


class Laser(Instrument):
    """The source laser (or its diode/TEC controller)."""

    instrument_class = InstrumentClass.LASER

    @abstractmethod
    async def set_enabled(self, enabled: bool) -> None: ...

    @abstractmethod
    async def is_enabled(self) -> bool: ...

    @abstractmethod
    async def set_power_mw(self, power_mw: float) -> None: ...

    @abstractmethod
    async def power_mw(self) -> float: ...

    @abstractmethod
    async def set_wavelength_nm(self, wavelength_nm: float) -> None: ...

    @abstractmethod
    async def wavelength_nm(self) -> float: ...


class PhaseRandomisation(enum.StrEnum):
    """How the source randomises the global phase (decoy-state security assumes it)."""

    GAIN_SWITCHED = "gain-switched"
    PHASE_MODULATOR = "phase-modulator"
    NONE = "none"


class StateEncoder(Instrument):
    """Intensity/phase modulation, usually an AWG or pattern generator driving modulators."""

    instrument_class = InstrumentClass.STATE_ENCODER

    @property
    @abstractmethod
    def phase_randomisation(self) -> PhaseRandomisation: ...

    @abstractmethod
    async def load_frame(self, pattern: FramePattern) -> None:
        """Upload the per-slot pattern of one frame."""

    @abstractmethod
    async def arm(self) -> None:
        """Arm the output so the loaded frame plays on the next trigger."""

    @abstractmethod
    async def slot_rate_hz(self) -> float: ...


class DetectorMode(enum.StrEnum):
    GATED = "gated"
    FREE_RUNNING = "free-running"


class SinglePhotonDetector(Instrument):
    """One or more single-photon detector channels."""

    instrument_class = InstrumentClass.DETECTOR

    @abstractmethod
    async def set_efficiency(self, efficiency_percent: float) -> None: ...

    @abstractmethod
    async def efficiency(self) -> float: ...

    @abstractmethod
    async def set_dead_time_ns(self, dead_time_ns: float) -> None: ...

    @abstractmethod
    async def dead_time_ns(self) -> float: ...

    @abstractmethod
    async def mode(self) -> DetectorMode: ...

    @abstractmethod
    async def count_rates_hz(self) -> list[float]:
        """Per-detector click rates."""

    @abstractmethod
    async def temperature_c(self) -> float: ...

    async def bias_monitor(self) -> float:
        """Bias current/photocurrent monitor (blinding shows here); not all hardware has one."""
        raise Unsupported(f"{type(self).__name__} has no bias/photocurrent monitor")


#: One time tag: input channel and arrival time in picoseconds.
TAG_DTYPE = np.dtype([("channel", np.int16), ("timestamp_ps", np.int64)])


class TimeTagger(Instrument):
    """Time tagger: channel setup, start/stop, an async stream of tag batches."""

    instrument_class = InstrumentClass.TIME_TAGGER

    @abstractmethod
    async def configure_channel(
        self, channel: int, *, trigger_level_v: float, delay_ps: int
    ) -> None: ...

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    def tags(self) -> AsyncIterator[npt.NDArray[np.void]]:
        """Batches of tags (``TAG_DTYPE``), in time order, while started."""

    @abstractmethod
    async def count_rates_hz(self) -> dict[int, float]: ...


class RandomSource(Instrument):
    """Random bytes for basis, bit and intensity choices and for hashing seeds."""

    instrument_class = InstrumentClass.RANDOM_SOURCE

    @abstractmethod
    async def random_bytes(self, count: int) -> bytearray:
        """``count`` fresh random bytes that passed the source's health tests."""


class Attenuator(Instrument):
    """Variable optical attenuator (sets the mean photon number)."""

    instrument_class = InstrumentClass.ATTENUATOR

    @abstractmethod
    async def set_attenuation_db(self, attenuation_db: float) -> None: ...

    @abstractmethod
    async def attenuation_db(self) -> float: ...


class PowerMeter(Instrument):
    """Optical power meter (calibrates the intensities μ_k)."""

    instrument_class = InstrumentClass.POWER_METER

    @abstractmethod
    async def power_w(self) -> float: ...


#: The interface each class of instrument implements (abstract classes, for issubclass).
INTERFACES: dict[InstrumentClass, type] = {
    InstrumentClass.LASER: Laser,
    InstrumentClass.STATE_ENCODER: StateEncoder,
    InstrumentClass.DETECTOR: SinglePhotonDetector,
    InstrumentClass.TIME_TAGGER: TimeTagger,
    InstrumentClass.RANDOM_SOURCE: RandomSource,
    InstrumentClass.ATTENUATOR: Attenuator,
    InstrumentClass.POWER_METER: PowerMeter,
}
