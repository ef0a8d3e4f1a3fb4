"""Simulated twins of every instrument class.

A twin behaves like the instrument (state that persists, plausible readings,
a tag stream at a paced clock) and always says it is simulated: its identity
string begins ``qkdd,SIMULATED``, its health detail says ``simulated``, and
its class carries ``simulated = True`` for status messages and keys.
"""

from __future__ import annotations

from collections.abc import Callable

from qkdd.instruments.config import InstrumentConfig
from qkdd.instruments.interfaces import Instrument, InstrumentClass
from qkdd.instruments.twins.detection import SimulatedDetector, SimulatedTimeTagger
from qkdd.instruments.twins.source import (
    SimulatedAttenuator,
    SimulatedLaser,
    SimulatedPowerMeter,
    SimulatedRandomSource,
    SimulatedStateEncoder,
)

TwinFactory = Callable[[str, InstrumentConfig], Instrument]

TWINS: dict[InstrumentClass, TwinFactory] = {
    InstrumentClass.LASER: SimulatedLaser,
    InstrumentClass.STATE_ENCODER: SimulatedStateEncoder,
    InstrumentClass.DETECTOR: SimulatedDetector,
    InstrumentClass.TIME_TAGGER: SimulatedTimeTagger,
    InstrumentClass.RANDOM_SOURCE: SimulatedRandomSource,
    InstrumentClass.ATTENUATOR: SimulatedAttenuator,
    InstrumentClass.POWER_METER: SimulatedPowerMeter,
}


def twin_for(kind: InstrumentClass) -> TwinFactory:
    """The simulated twin class of an instrument class."""
    return TWINS[kind]


__all__ = ["TWINS", "twin_for"]
