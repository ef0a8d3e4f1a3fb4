"""The engine's quantum path over the real simulated link (physics, twins, fibre):
calibration finds the unknown cable delay; two engines agree on keys."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qkdd.instruments.config import InstrumentConfig
from qkdd.instruments.interfaces import InstrumentClass
from qkdd.instruments.twins import twin_for
from qkdd.instruments.twins.detection import SimulatedDetector, SimulatedTimeTagger
from qkdd.instruments.twins.fibre import in_process_fibre
from qkdd.instruments.twins.source import SimulatedRandomSource, SimulatedStateEncoder
from qkdd.link.calibration import calibration_pattern, find_delay
from qkdd.link.config import PeerConfig, ProtocolConfig
from qkdd.link.engine import EngineSettings, LinkEngine
from qkdd.link.events import LinkEvents
from qkdd.link.keys import BlockKeys
from qkdd.link.quantum import ChoiceProbabilities, InstrumentReceiver, InstrumentTransmitter
from qkdd.physics.config import SimulationConfig
from qkdd.physics.link import LinkParameters, Receiver, fibre_delay_ps, role_rng
from qkdd.store import KeyState
from tests.authpair import LINK, bootstrap, open_end
from tests.linkmodel import ModelPostProcessing


def _twin(kind: InstrumentClass, **options: Any) -> Any:
    config = InstrumentConfig.model_validate(
        {"class": kind.value, "backend": "simulated", "options": options}
    )
    return twin_for(kind)(kind.value, config)


def _sim(**channel: Any) -> SimulationConfig:
    return SimulationConfig.model_validate(
        {
            "seed": 11,
            "channel": {"distance_km": 5.0, "cable_offset_ns": 123.4, **channel},
            "detectors": {"efficiency": 0.5, "dark_count": 1e-7, "dead_time_ns": 10.0},
        }
    )


PROTOCOL = ProtocolConfig(
    slot_rate_hz=1e9, frame_duration_s=2e-3, block_pulses=20_000_000, p_key_basis=0.5
)


@dataclass
class QuantumPath:
    tx: InstrumentTransmitter
    rx: InstrumentReceiver
    receiver: Receiver
    rng: SimulatedRandomSource
    instruments: list[Any]


@contextlib.asynccontextmanager
async def quantum_path(
    sim: SimulationConfig, protocol: ProtocolConfig
) -> AsyncIterator[QuantumPath]:
    link = LinkParameters(
        slot_rate_hz=protocol.slot_rate_hz,
        p_key=protocol.p_key_basis,
        mu=protocol.intensities.mu,
        p_class=protocol.intensities.probabilities,
    )
    fibre_tx, fibre_rx = in_process_fibre()
    receiver = Receiver(sim, link, role_rng(sim.seed, "bob"))
    encoder = _twin(InstrumentClass.STATE_ENCODER, slot_rate_hz=protocol.slot_rate_hz)
    tagger = _twin(InstrumentClass.TIME_TAGGER)
    detector = _twin(InstrumentClass.DETECTOR)
    rng_a = _twin(InstrumentClass.RANDOM_SOURCE)
    rng_b = _twin(InstrumentClass.RANDOM_SOURCE)
    instruments = [encoder, tagger, detector, rng_a, rng_b]
    for inst in instruments:
        await inst.connect()
    assert isinstance(encoder, SimulatedStateEncoder) and isinstance(tagger, SimulatedTimeTagger)
    assert isinstance(detector, SimulatedDetector)
    encoder.attach_fibre(fibre_tx)
    tagger.attach(receiver, fibre_rx)
    detector.attach_receiver(receiver)
    probabilities = ChoiceProbabilities(protocol.p_key_basis, protocol.intensities.probabilities)
    tx = InstrumentTransmitter(rng_a, encoder, probabilities)
    rx = InstrumentReceiver(
        tagger,
        rng_b,
        slot_rate_hz=protocol.slot_rate_hz,
        detectors=[detector],
        basis_record=lambda: receiver.bob_basis_record()[1],
    )
    try:
        yield QuantumPath(tx, rx, receiver, rng_a, instruments)
    finally:
        await tagger.stop()
        for inst in instruments:
            await inst.close()


async def test_calibration_finds_the_unknown_cable_delay() -> None:
    sim = _sim(distance_km=12.0, cable_offset_ns=377.7)
    protocol = PROTOCOL
    async with quantum_path(sim, protocol) as qp:
        n = 200_000
        # a first ordinary frame moves the clock, as in a running link
        await qp.tx.send_frame(0, n)
        await qp.rx.receive_frame(0, n)
        seed = os.urandom(16)
        await qp.tx.send_pattern(calibration_pattern(seed, n))
        raw = await qp.rx.receive_raw(n, 100_000)
    est = find_delay(
        raw.times_ps,
        raw.basis,
        raw.bit,
        calibration_pattern(seed, n),
        first_slot=raw.first_slot,
        period_ps=1000.0,
        max_offset_slots=100_000,
    )
    assert est.found, est
    # Bob's clock was re-based: his frame start plus the delay found must equal
    # Alice's (the second frame starts at slot n) plus the true fibre delay.
    true_arrival = n * 1000.0 + fibre_delay_ps(sim)
    assert abs(raw.first_slot * 1000.0 + est.delay_ps - true_arrival) < 200
    # a wrong seed finds nothing
    wrong = find_delay(
        raw.times_ps,
        raw.basis,
        raw.bit,
        calibration_pattern(os.urandom(16), n),
        first_slot=raw.first_slot,
        period_ps=1000.0,
        max_offset_slots=100_000,
    )
    assert not wrong.found


async def _random(n: int) -> bytearray:
    return bytearray(os.urandom(n))


async def test_engines_over_the_simulated_link_agree_on_keys(tmp_path: Path) -> None:
    from tests.test_link_engine import _free_port, _until

    dirs = bootstrap(tmp_path, units=2048)
    port = _free_port()
    fast: dict[str, Any] = {
        "backoff_initial_s": 0.02,
        "backoff_max_s": 0.2,
        "receive_timeout_s": 20.0,
    }
    sim = _sim()
    async with quantum_path(sim, PROTOCOL) as qp:
        ends = [open_end(dirs[0], "alice"), open_end(dirs[1], "bob")]
        engines = []
        for role, end, listen in (("alice", ends[0], True), ("bob", ends[1], False)):
            peer = PeerConfig(listen=listen, port=port, **fast)
            settings = EngineSettings(
                node_id=role, link=LINK, role=role, protocol=PROTOCOL, peer=peer, simulated=True
            )
            engines.append(
                LinkEngine(
                    settings,
                    session=end.session,
                    keys=BlockKeys(end.store, end.session, link=LINK, slots=("default",)),
                    post=ModelPostProcessing(),
                    random_bytes=_random,
                    transmitter=qp.tx if role == "alice" else None,
                    receiver=qp.rx if role == "bob" else None,
                    events=LinkEvents(),
                )
            )
        tasks = [asyncio.create_task(e.run()) for e in engines]
        try:
            await _until(lambda: engines[1].blocks_committed >= 1, within_s=90)
        finally:
            for e in engines:
                e.request_stop()
            await asyncio.gather(*tasks, return_exceptions=True)
        ka = [
            (m.key_id, bytes(engines[0].keys.keys.material(m.key_id)))
            for m in engines[0].keys.keys.list(KeyState.COMMITTED)
        ]
        kb = [
            (m.key_id, bytes(engines[1].keys.keys.material(m.key_id)))
            for m in engines[1].keys.keys.list(KeyState.COMMITTED)
        ]
        assert ka and ka == kb
        for end in ends:
            end.close()
    assert np.isfinite(qp.rx.delay_ps)
    assert engines[0].blocks_aborted <= 1  # the block in flight when stopped


async def test_timing_tracker_sees_one_detector_shifted_on_the_simulated_link() -> None:
    from qkdd.link.calibration import TimingTracker

    sim = _sim(distance_km=3.0)
    async with quantum_path(sim, PROTOCOL) as qp:
        n = 200_000
        seed = os.urandom(16)
        await qp.tx.send_pattern(calibration_pattern(seed, n))
        raw = await qp.rx.receive_raw(n, 100_000)
        est = find_delay(
            raw.times_ps,
            raw.basis,
            raw.bit,
            calibration_pattern(seed, n),
            first_slot=raw.first_slot,
            period_ps=1000.0,
            max_offset_slots=100_000,
        )
        assert est.found
        qp.rx.set_delay(est.delay_ps)
        tracker = TimingTracker(1000.0, warn_ps=50.0)
        tracker.calibrated(est.delay_ps)
        await qp.tx.send_frame(0, n)
        await qp.rx.receive_frame(0, n)
        honest = qp.rx.timing()
        assert set(honest) == {1, 2}  # active receiver: two detectors
        assert all(abs(t.offset_ps) < 20 and t.clicks > 1000 for t in honest.values())
        assert not tracker.update(honest).shifted
        # A time-shift attack (or a failing detector) moves detector 2's peak by 150 ps.
        tagger = next(i for i in qp.instruments if isinstance(i, SimulatedTimeTagger))
        await tagger.configure_channel(2, trigger_level_v=0.1, delay_ps=150)
        await qp.tx.send_frame(1, n)
        await qp.rx.receive_frame(1, n)
        shifted = qp.rx.timing()
        assert shifted[2].offset_ps - shifted[1].offset_ps == pytest.approx(150, abs=20)
        update = tracker.update(shifted)
        # With two detectors either may have moved: both sit 75 ps from the common peak.
        assert update.lost is None and 2 in update.shifted
