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
from qkdd.instruments.twins.detection import SimulatedDetector, SimulatedTimeTagger
from qkdd.instruments.twins.source import SimulatedStateEncoder

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


# --- the twins on the simulated link -------------------------------------------------


def _link_config():  # type: ignore[no-untyped-def]
    from qkdd.physics.config import SimulationConfig

    return SimulationConfig.model_validate(
        {
            "seed": 99,
            "channel": {"distance_km": 5.0, "cable_offset_ns": 50.0},
            "detectors": {"efficiency": 0.3, "dead_time_ns": 10.0, "dark_count": 1e-4},
        }
    )


async def _run_link(tx, rx, frames: int = 3):  # type: ignore[no-untyped-def]
    """Alice's encoder twin sends frames through a fibre; Bob's tagger twin streams tags."""
    from qkdd.instruments.interfaces import SinglePhotonDetector
    from qkdd.physics.link import LinkParameters, Receiver, draw_pattern, role_rng

    sim = _link_config()
    link = LinkParameters()
    receiver = Receiver(sim, link, role_rng(sim.seed, "bob"))
    alice = role_rng(sim.seed, "alice")
    async with (
        _twin(InstrumentClass.STATE_ENCODER) as encoder,
        _twin(InstrumentClass.TIME_TAGGER) as tagger,
        _twin(InstrumentClass.DETECTOR) as detector,
    ):
        assert isinstance(encoder, SimulatedStateEncoder)
        assert isinstance(tagger, SimulatedTimeTagger)
        assert isinstance(detector, SimulatedDetector) and isinstance(
            detector, SinglePhotonDetector
        )
        encoder.attach_fibre(tx)
        tagger.attach(receiver, rx)
        detector.attach_receiver(receiver)
        await tagger.start()
        stream = tagger.tags()
        batches = []
        for _ in range(frames):
            await encoder.load_frame(draw_pattern(alice, 100_000, link))
            await encoder.arm()
            batches.append(await anext(stream))
        await tagger.stop()
        assert await detector.bias_monitor() == pytest.approx(1e-6)
        receiver.set_eavesdropper("blinding")
        assert await detector.bias_monitor() > 1e-3
        rates = await detector.count_rates_hz()
        assert len(rates) == 2 and all(r > 0 for r in rates)
    return batches, receiver


async def test_encoder_to_tagger_through_an_in_process_fibre() -> None:
    from qkdd.instruments.twins.fibre import in_process_fibre
    from qkdd.physics.link import slots_from_tags

    tx, rx = in_process_fibre()
    batches, receiver = await _run_link(tx, rx)
    tags = np.concatenate(batches)
    assert tags.dtype == TAG_DTYPE and len(tags) > 1000
    assert np.all(np.diff(tags["timestamp_ps"]) >= 0)
    slots = slots_from_tags(tags, period_ps=receiver.period_ps, delay_ps=receiver.delay_ps)
    assert slots.min() >= 0 and slots.max() < 300_000  # three frames on one clock


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_fibre_over_a_socket(kind: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from qkdd.instruments.twins.fibre import FibreAddress, FibreListener, connect_fibre

    text = f"unix:{tmp_path}/fibre.sock" if kind == "unix" else "tcp:127.0.0.1:0"
    listener = FibreListener(FibreAddress.parse(text))
    await listener.start()
    try:
        if kind == "tcp":
            text = f"tcp:127.0.0.1:{listener.port}"
        else:
            assert (tmp_path / "fibre.sock").stat().st_mode & 0o077 == 0
        tx = await connect_fibre(text)
        rx = await listener.accept()
        batches, _ = await _run_link(tx, rx, frames=2)
        assert sum(len(b) for b in batches) > 500
        await tx.close()
        assert await rx.receive() is None  # Alice closed the fibre
    finally:
        await listener.close()


@pytest.mark.parametrize(
    "address", ["tcp:0.0.0.0:5000", "tcp:192.168.1.4:5000", "tcp:[::]:1", "udp:1"]
)
def test_fibre_never_binds_a_routable_address(address: str) -> None:
    from qkdd.instruments.twins.fibre import FibreAddress, FibreError

    with pytest.raises(FibreError):
        FibreAddress.parse(address)


ALICE_PROCESS = """
import asyncio, sys
from qkdd.instruments.twins.fibre import connect_fibre
from qkdd.physics.link import LinkParameters, PreparedFrame, draw_pattern, role_rng

async def main():
    tx = await connect_fibre(sys.argv[1])
    rng = role_rng(5, "alice")
    for i in range(3):
        await tx.send(PreparedFrame(i, i * 50_000, draw_pattern(rng, 50_000, LinkParameters())))
    await tx.close()

asyncio.run(main())
"""


async def test_fibre_between_two_processes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import sys

    from qkdd.instruments.twins.fibre import FibreAddress, FibreListener
    from qkdd.physics.link import LinkParameters, draw_pattern, role_rng

    address = f"unix:{tmp_path}/fibre.sock"
    listener = FibreListener(FibreAddress.parse(address))
    await listener.start()
    alice = await asyncio.create_subprocess_exec(sys.executable, "-c", ALICE_PROCESS, address)
    try:
        rx = await asyncio.wait_for(listener.accept(), 30)
        frames = []
        while (frame := await asyncio.wait_for(rx.receive(), 30)) is not None:
            frames.append(frame)
        assert await alice.wait() == 0
    finally:
        await listener.close()
    # Bob's receiver got exactly what Alice's process prepared
    rng = role_rng(5, "alice")
    assert [f.index for f in frames] == [0, 1, 2]
    for frame in frames:
        expected = draw_pattern(rng, 50_000, LinkParameters())
        assert np.array_equal(frame.pattern.basis, expected.basis)
        assert np.array_equal(frame.pattern.intensity, expected.intensity)


async def test_paced_encoder_keeps_to_the_slot_clock() -> None:
    import time

    from qkdd.instruments.twins.fibre import in_process_fibre

    tx, rx = in_process_fibre(max_frames=16)
    async with _twin(InstrumentClass.STATE_ENCODER, slot_rate_hz=1e6, pace=True) as encoder:
        assert isinstance(encoder, SimulatedStateEncoder)
        encoder.attach_fibre(tx)
        zeros = np.zeros(20_000, dtype=np.uint8)  # 20 ms per frame at 1 MHz
        start = time.monotonic()
        for _ in range(5):
            await encoder.load_frame(FramePattern(basis=zeros, bit=zeros, intensity=zeros))
            await encoder.arm()
        assert time.monotonic() - start >= 0.1 * 0.9
        assert (await rx.receive()) is not None


async def test_attach_simulated_link_wires_both_roles(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from qkdd.instruments.twins.link import attach_simulated_link, fibre_address
    from qkdd.physics.config import SimulationConfig
    from qkdd.physics.link import LinkParameters, draw_pattern, role_rng

    sim = SimulationConfig.model_validate(
        {"seed": 3, "fibre_path": str(tmp_path / "f.sock"), "detectors": {"efficiency": 0.5}}
    )
    assert fibre_address(sim, "l1").path == str(tmp_path / "f.sock")
    link = LinkParameters()
    async with (
        _twin(InstrumentClass.STATE_ENCODER) as encoder,
        _twin(InstrumentClass.TIME_TAGGER) as tagger,
        _twin(InstrumentClass.DETECTOR) as detector,
    ):
        bob = await attach_simulated_link("bob", [tagger, detector], sim, link, link_id="l1")
        alice = await attach_simulated_link("alice", [encoder], sim, link, link_id="l1")
        try:
            await tagger.start()
            stream = tagger.tags()
            await encoder.load_frame(draw_pattern(role_rng(3, "alice"), 50_000, link))
            await encoder.arm()
            batch = await anext(stream)
            assert len(batch) > 100
            with pytest.raises(ValueError, match="Bob's end"):
                alice.set_eavesdropper("pns")
            bob.set_eavesdropper("blinding")
            assert await detector.bias_monitor() > 1e-3
        finally:
            await tagger.stop()
            await alice.close()
            await bob.close()
    assert not (tmp_path / "f.sock").exists()
