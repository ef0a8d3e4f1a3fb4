"""Simulated twins: every interface has one, each behaves and says it is simulated."""

from __future__ import annotations

import numpy as np
import pytest

from qkdd.frames import FramePattern
from qkdd.instruments.interfaces import (
    INTERFACES,
    TAG_DTYPE,
    InstrumentClass,
    Laser,
    RandomSource,
    StateEncoder,
    TimeTagger,
)
from qkdd.instruments.twins import twin_for

from .conftest import instrument_config


def _twin(kind: InstrumentClass, **options: object):  # type: ignore[no-untyped-def]
    return twin_for(kind)(
        kind.value, instrument_config(kind=kind.value, backend="simulated", options=options)
    )


@pytest.mark.parametrize("kind", list(InstrumentClass))
async def test_each_class_has_a_twin_that_says_simulated(kind: InstrumentClass) -> None:
    async with _twin(kind) as twin:
        assert isinstance(twin, INTERFACES[kind])
        assert twin.simulated
        assert (await twin.identity()).startswith("qkdd,SIMULATED-")
        health = await twin.health()
        assert health.healthy and health.detail == "simulated"
        assert "simulated" in repr(twin)


async def test_laser_twin_keeps_state() -> None:
    async with _twin(InstrumentClass.LASER, power_mw=2.0) as laser:
        assert isinstance(laser, Laser)
        assert await laser.power_mw() == 0.0  # off
        await laser.set_enabled(True)
        assert await laser.power_mw() == 2.0
        with pytest.raises(ValueError):
            await laser.set_power_mw(-1)


async def test_encoder_twin_needs_a_frame_before_arming() -> None:
    async with _twin(InstrumentClass.STATE_ENCODER) as encoder:
        assert isinstance(encoder, StateEncoder)
        with pytest.raises(ValueError, match="no frame"):
            await encoder.arm()
        zeros = np.zeros(16, dtype=np.uint8)
        await encoder.load_frame(FramePattern(basis=zeros, bit=zeros, intensity=zeros))
        await encoder.arm()
        assert (await encoder.health()).readings["armed"] is True


async def test_tagger_twin_streams_time_ordered_batches_at_its_rate() -> None:
    async with _twin(
        InstrumentClass.TIME_TAGGER, dark_count_hz=20_000, batch_s=0.01, seed=7
    ) as tagger:
        assert isinstance(tagger, TimeTagger)
        await tagger.configure_channel(2, trigger_level_v=0.1, delay_ps=5000)
        await tagger.start()
        stream = tagger.tags()
        batches = [await anext(stream) for _ in range(5)]
        await tagger.stop()
    tags = np.concatenate(batches)
    assert tags.dtype == TAG_DTYPE
    assert np.all(np.diff(tags["timestamp_ps"]) >= 0)
    # 4 channels × 20 kHz × 50 ms = 4000 expected tags (Poisson)
    assert 3600 < len(tags) < 4400


async def test_random_source_twin_gives_fresh_bytes() -> None:
    async with _twin(InstrumentClass.RANDOM_SOURCE) as rng:
        assert isinstance(rng, RandomSource)
        a, b = await rng.random_bytes(32), await rng.random_bytes(32)
        assert isinstance(a, bytearray) and len(a) == 32 and a != b


def test_frame_pattern_never_prints_choices() -> None:
    bits = np.ones(8, dtype=np.uint8)
    assert repr(FramePattern(basis=bits, bit=bits, intensity=bits)) == "<FramePattern slots=8>"
    with pytest.raises(ValueError):
        FramePattern(basis=bits, bit=bits[:4], intensity=bits)
