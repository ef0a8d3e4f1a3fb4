"""Find drivers by name, apply the backend policy, and open a node's instruments.

Hardware drivers are found only through the ``qkdd.drivers`` entry-point
group (qkdd's own drivers register there too), so the core never imports a
concrete driver. ``backend = "auto"`` falls back to the simulated twin with a
warning; with ``node.allow_simulated = false`` a failed instrument is a
startup error that names it and says why the hardware failed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import ClassVar, cast

from qkdd.instruments.config import Backend, InstrumentConfig, TransportKind
from qkdd.instruments.interfaces import INTERFACES, Instrument, InstrumentError
from qkdd.instruments.twins import twin_for
from qkdd.logging import get_logger

ENTRY_POINT_GROUP = "qkdd.drivers"

_log = get_logger("instruments")


class HardwareDriver:
    """Mixin every hardware driver class carries, so the registry can check a config."""

    driver_name: ClassVar[str]
    transports: ClassVar[frozenset[TransportKind]]
    description: ClassVar[str] = ""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the driver cannot run on this machine (an SDK not installed), or None."""
        return None


DriverFactory = Callable[[str, InstrumentConfig], Instrument]


class DriverError(Exception):
    """A config names a driver that does not exist or does not fit (a config error)."""


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_drivers() -> list[str]:
    """Names of every installed hardware driver."""
    return sorted(_entry_points())


def load_driver(name: str) -> type[Instrument]:
    """The driver class registered as ``name``."""
    found = _entry_points().get(name)
    if found is None:
        known = ", ".join(available_drivers()) or "none installed"
        raise DriverError(f"unknown driver {name!r} (installed: {known})")
    try:
        driver = found.load()
    except Exception as exc:
        raise DriverError(f"driver {name!r} failed to import: {exc}") from None
    if not (isinstance(driver, type) and issubclass(driver, Instrument)):
        raise DriverError(f"driver {name!r} ({found.value}) is not an Instrument class")
    return driver


def check_driver(name: str, config: InstrumentConfig) -> type[Instrument] | None:
    """Check a config's driver fits its class and transport; None for simulated-only."""
    if config.backend is Backend.SIMULATED:
        return None
    driver = load_driver(config.driver)
    interface = INTERFACES[config.kind]
    if not issubclass(driver, interface):
        raise DriverError(
            f"instruments.{name}.driver: {config.driver!r} drives a "
            f"{driver.instrument_class.value}, not a {config.kind.value}"
        )
    address = config.transport_address
    supported: frozenset[TransportKind] = getattr(driver, "transports", frozenset())
    if address is None:
        if TransportKind.SDK not in supported:
            raise DriverError(f"instruments.{name}.address: driver {config.driver!r} needs one")
    elif address.kind not in supported:
        kinds = ", ".join(sorted(k.value for k in supported))
        raise DriverError(
            f"instruments.{name}.address: driver {config.driver!r} speaks {kinds}, "
            f"not {address.kind.value}"
        )
    return driver


class BackendUsed(enum.StrEnum):
    HARDWARE = "hardware"
    SIMULATED = "simulated"
    UNAVAILABLE = "unavailable"


@dataclass
class OpenedInstrument:
    """An instrument after the backend policy ran: what serves it, and why."""

    name: str
    config: InstrumentConfig
    backend: BackendUsed
    reason: str
    instrument: Instrument | None = None

    @property
    def usable(self) -> bool:
        return self.instrument is not None


async def _connect_hardware(name: str, config: InstrumentConfig) -> Instrument:
    driver = check_driver(name, config)
    assert driver is not None
    reason = getattr(driver, "unavailable_reason", lambda: None)()
    if reason:
        raise InstrumentError(reason)
    instrument = cast(DriverFactory, driver)(name, config)
    try:
        await instrument.connect()
    except BaseException:
        await instrument.close()
        raise
    return instrument


async def open_instrument(
    name: str, config: InstrumentConfig, *, allow_simulated: bool
) -> OpenedInstrument:
    """Open one instrument according to its backend and the node's simulation policy.

    Raises :class:`DriverError` for config problems (unknown driver, wrong
    class or transport); hardware that fails is reported, not raised.
    """
    if config.backend is Backend.SIMULATED:
        twin = twin_for(config.kind)(name, config)
        await twin.connect()
        return OpenedInstrument(name, config, BackendUsed.SIMULATED, "configured simulated", twin)
    try:
        instrument = await _connect_hardware(name, config)
    except InstrumentError as exc:
        failure = str(exc) or type(exc).__name__
    else:
        return OpenedInstrument(name, config, BackendUsed.HARDWARE, "connected", instrument)
    if config.backend is Backend.AUTO and allow_simulated:
        _log.warning(
            "hardware unavailable, using the SIMULATED twin", instrument=name, reason=failure
        )
        twin = twin_for(config.kind)(name, config)
        await twin.connect()
        return OpenedInstrument(
            name, config, BackendUsed.SIMULATED, f"hardware failed ({failure}); fell back", twin
        )
    return OpenedInstrument(name, config, BackendUsed.UNAVAILABLE, failure)


async def open_instruments(
    configs: dict[str, InstrumentConfig], *, allow_simulated: bool
) -> list[OpenedInstrument]:
    """Open every instrument of a node, in config order."""
    return [
        await open_instrument(name, cfg, allow_simulated=allow_simulated)
        for name, cfg in configs.items()
    ]


async def close_instruments(opened: Iterable[OpenedInstrument]) -> None:
    for item in opened:
        if item.instrument is not None:
            await item.instrument.close()
