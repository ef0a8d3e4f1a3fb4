"""Swabian Instruments Time Tagger (20, Ultra, X) through the vendor's Python SDK.

The SDK (module ``TimeTagger``, installed with Swabian's software, or
``Swabian.TimeTagger`` from the ``Swabian-TimeTagger`` wheel) is imported
only when the driver is used; without it the driver reports itself
unavailable with the reason. Calls used: ``createTimeTagger(serial)``,
``freeTimeTagger``, ``setTriggerLevel(ch, V)``, ``setInputDelay(ch, ps)``,
``TimeTagStream(tagger, n_max_events, channels)`` with ``start``/``stop``/
``getData()`` (buffer with ``getChannels()``, ``getTimestamps()`` in ps and
``getOverflows()``), and ``Countrate(tagger, channels)`` with
``startFor(ps)``/``waitUntilFinished()``/``getData()``. Every SDK call runs on
the instrument's worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from qkdd.instruments.config import InstrumentConfig, TransportKind
from qkdd.instruments.interfaces import (
    TAG_DTYPE,
    InstrumentHealth,
    InstrumentUnavailable,
    TimeTagger,
)
from qkdd.instruments.registry import HardwareDriver
from qkdd.instruments.session import BlockingWorker

_SDK_MODULES = ("TimeTagger", "Swabian.TimeTagger")


def _import_sdk() -> ModuleType | None:
    for module in _SDK_MODULES:
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    return None


class SwabianTimeTagger(HardwareDriver, TimeTagger):
    driver_name = "swabian-timetagger"
    transports: ClassVar[frozenset[TransportKind]] = frozenset({TransportKind.SDK})
    description = "Swabian Instruments Time Tagger 20/Ultra/X (vendor Python SDK)"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if _import_sdk() is None:
            return (
                "the Swabian Time Tagger SDK is not installed (no module TimeTagger or "
                "Swabian.TimeTagger); install Swabian's software or the Swabian-TimeTagger wheel"
            )
        return None

    def __init__(self, name: str, config: InstrumentConfig) -> None:
        super().__init__(name)
        address = config.transport_address
        self._serial = address.target if address is not None else ""
        self._worker = BlockingWorker(name, config.timeout_s + 1.0)
        options = config.options
        self._channels: list[int] = [int(c) for c in options.get("channels", [1, 2, 3, 4])]
        self._buffer_events = int(options.get("buffer_events", 10_000_000))
        self._poll_s = float(options.get("poll_s", 0.02))
        self._sdk: Any = None
        self._tagger: Any = None
        self._stream: Any = None
        self.overflows = 0

    async def connect(self) -> None:
        sdk = _import_sdk()
        if sdk is None:
            raise InstrumentUnavailable(self.unavailable_reason() or "SDK missing")
        self._sdk = sdk
        try:
            self._tagger = await self._worker.call(lambda: sdk.createTimeTagger(self._serial))
        except Exception as exc:
            raise InstrumentUnavailable(
                f"{self.name}: cannot open the time tagger: {exc}"
            ) from None

    async def close(self) -> None:
        if self._stream is not None:
            await self.stop()
        if self._tagger is not None:
            tagger, self._tagger = self._tagger, None
            await self._worker.call(lambda: self._sdk.freeTimeTagger(tagger))
        self._worker.shutdown()

    def _live(self) -> Any:
        if self._tagger is None:
            raise InstrumentUnavailable(f"{self.name}: not connected")
        return self._tagger

    async def identity(self) -> str:
        tagger = self._live()
        model, serial = await self._worker.call(lambda: (tagger.getModel(), tagger.getSerial()))
        return f"Swabian Instruments,{model},{serial}"

    async def configure_channel(
        self, channel: int, *, trigger_level_v: float, delay_ps: int
    ) -> None:
        tagger = self._live()

        def setup() -> None:
            tagger.setTriggerLevel(channel, trigger_level_v)
            tagger.setInputDelay(channel, delay_ps)

        await self._worker.call(setup)

    async def start(self) -> None:
        tagger = self._live()
        sdk = self._sdk

        def begin() -> Any:
            stream = sdk.TimeTagStream(tagger, self._buffer_events, self._channels)
            stream.start()
            return stream

        self._stream = await self._worker.call(begin)

    async def stop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await self._worker.call(stream.stop)

    def _drain(self) -> npt.NDArray[np.void]:
        buffer = self._stream.getData()
        channels = np.asarray(buffer.getChannels())
        timestamps = np.asarray(buffer.getTimestamps())
        self.overflows += int(buffer.getOverflows())
        batch = np.empty(channels.shape[0], dtype=TAG_DTYPE)
        batch["channel"] = channels
        batch["timestamp_ps"] = timestamps
        return batch

    async def tags(self) -> AsyncIterator[npt.NDArray[np.void]]:
        while self._stream is not None:
            batch = await self._worker.call(self._drain)
            if batch.shape[0]:
                yield batch
            else:
                await asyncio.sleep(self._poll_s)

    async def count_rates_hz(self) -> dict[int, float]:
        tagger = self._live()
        sdk = self._sdk

        def measure() -> list[float]:
            rate = sdk.Countrate(tagger, self._channels)
            rate.startFor(int(0.1e12))
            rate.waitUntilFinished()
            return [float(x) for x in rate.getData()]

        rates = await self._worker.call(measure)
        return dict(zip(self._channels, rates, strict=True))

    async def health(self) -> InstrumentHealth:
        rates = await self.count_rates_hz()
        detail = f"{self.overflows} overflows" if self.overflows else "ok"
        return InstrumentHealth(
            healthy=self.overflows == 0,
            detail=detail,
            readings={f"rate_ch{ch}_hz": rate for ch, rate in rates.items()},
        )
