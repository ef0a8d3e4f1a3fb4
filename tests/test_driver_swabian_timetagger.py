"""Swabian Time Tagger driver: SDK absent (unavailable, with reason) and present (a stand-in)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from qkdd.drivers.swabian_timetagger import SwabianTimeTagger
from qkdd.instruments.interfaces import TAG_DTYPE, InstrumentUnavailable
from qkdd.instruments.registry import BackendUsed, open_instrument

from .conftest import instrument_config


@pytest.fixture
def fake_sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fake_sdk"))
    sys.modules.pop("TimeTagger", None)
    import TimeTagger

    yield TimeTagger
    sys.modules.pop("TimeTagger", None)


def _config(address: str = "sdk:", backend: str = "hardware", **options: object):  # type: ignore[no-untyped-def]
    return instrument_config(
        kind="time_tagger",
        driver="swabian-timetagger",
        address=address,
        backend=backend,
        timeout_s=1.0,
        options={"channels": [1, 2], **options},
    )


def test_missing_sdk_names_what_to_install() -> None:
    assert "TimeTagger" not in sys.modules
    reason = SwabianTimeTagger.unavailable_reason()
    assert reason is not None and "SDK is not installed" in reason


async def test_missing_sdk_makes_the_instrument_unavailable_or_simulated() -> None:
    hard = await open_instrument("tagger", _config(), allow_simulated=False)
    assert hard.backend is BackendUsed.UNAVAILABLE
    assert "SDK is not installed" in hard.reason
    auto = await open_instrument("tagger", _config(backend="auto"), allow_simulated=True)
    assert auto.backend is BackendUsed.SIMULATED
    assert "SDK is not installed" in auto.reason
    assert auto.instrument is not None and auto.instrument.simulated


async def test_stream_delivers_ordered_tag_batches_with_delays(fake_sdk: ModuleType) -> None:
    async with SwabianTimeTagger("tagger", _config("sdk:1910000XYZ")) as tagger:
        assert await tagger.identity() == "Swabian Instruments,Time Tagger Ultra,1910000XYZ"
        await tagger.configure_channel(2, trigger_level_v=0.25, delay_ps=300)
        assert fake_sdk.OPEN[0].trigger == {2: 0.25}
        await tagger.start()
        stream = tagger.tags()
        first = await anext(stream)
        second = await anext(stream)
        await tagger.stop()
        assert first.dtype == TAG_DTYPE
        assert len(first) == 2 * fake_sdk.EVENTS_PER_BATCH
        both = np.concatenate([first, second])
        assert np.all(np.diff(both["timestamp_ps"]) >= 0)
        ch2 = both[both["channel"] == 2]["timestamp_ps"]
        ch1 = both[both["channel"] == 1]["timestamp_ps"]
        np.testing.assert_array_equal(ch2 - ch1, 300)
        assert await tagger.count_rates_hz() == {1: 1000.0, 2: 2000.0}
    assert fake_sdk.OPEN == []  # freed on close


async def test_overflow_makes_it_unhealthy(fake_sdk: ModuleType) -> None:
    async with SwabianTimeTagger("tagger", _config()) as tagger:
        await tagger.start()
        fake_sdk.TimeTagStream.overflow_next = 3
        await anext(tagger.tags())
        health = await tagger.health()
        assert not health.healthy and health.detail == "3 overflows"


async def test_unknown_serial_is_unavailable(fake_sdk: ModuleType) -> None:
    tagger = SwabianTimeTagger("tagger", _config("sdk:missing"))
    with pytest.raises(InstrumentUnavailable, match="No Time Tagger with serial"):
        await tagger.connect()
    await tagger.close()


async def test_wedged_sdk_call_hits_the_guard_timeout(fake_sdk: ModuleType) -> None:
    tagger = SwabianTimeTagger("tagger", _config("sdk:hang"))
    tagger._worker.guard_timeout_s = 0.3  # the SDK call sleeps 1.5 s
    with pytest.raises(InstrumentUnavailable, match=r"no answer within 0\.3 s"):
        await tagger.connect()
    await tagger.close()
