"""The simulated link end to end: source draws, tags and their slots, drift, the wire form."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdd.frames import FramePattern
from qkdd.instruments.interfaces import TAG_DTYPE
from qkdd.physics.config import EveSpec, SimulationConfig
from qkdd.physics.expected import expected_statistics
from qkdd.physics.link import (
    Drift,
    LinkParameters,
    PreparedFrame,
    Receiver,
    decode_frame,
    draw_pattern,
    encode_frame,
    fibre_delay_ps,
    pattern_from_random_bytes,
    physics_from_config,
    role_rng,
    slots_from_tags,
)
from qkdd.physics.simulator import measure

from .physics_helpers import assert_agrees

LINK = LinkParameters(slot_rate_hz=1e9, p_key=0.8, mu=(0.5, 0.1, 0.0002), p_class=(0.7, 0.2, 0.1))


def _sim(**sections: object) -> SimulationConfig:
    base: dict[str, object] = {
        "seed": 7,
        "channel": {"distance_km": 10.0, "cable_offset_ns": 321.7, "misalignment": 0.01},
        "detectors": {"efficiency": 0.3, "dark_count": 1e-5, "dead_time_ns": 25.0,
                      "jitter_ps": [40.0, 70.0], "afterpulse": 0.05, "afterpulse_decay_ns": 5.0},
    }  # fmt: skip
    base.update(sections)
    return SimulationConfig.model_validate(base)


def test_source_draws_choices_with_the_configured_probabilities() -> None:
    n = 10**6
    pattern = draw_pattern(role_rng(1, "alice"), n, LINK)
    for observed, p in (
        (np.mean(pattern.basis == 0), LINK.p_key),
        (np.mean(pattern.bit), 0.5),
        (np.mean(pattern.intensity == 0), LINK.p_class[0]),
        (np.mean(pattern.intensity == 2), LINK.p_class[2]),
    ):
        assert abs(observed - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_source_from_random_source_bytes() -> None:
    n = 200_000
    data = bytes(role_rng(2, "alice").integers(0, 256, 5 * n, dtype=np.uint8))
    pattern = pattern_from_random_bytes(data, n, LINK)
    assert abs(np.mean(pattern.basis == 0) - LINK.p_key) < 5 * math.sqrt(0.16 / n)
    assert abs(np.mean(pattern.intensity == 1) - 0.2) < 5 * math.sqrt(0.16 / n)
    with pytest.raises(ValueError, match="random bytes"):
        pattern_from_random_bytes(data[:10], n, LINK)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 300), seed=st.integers(0, 2**32 - 1), index=st.integers(0, 2**40))
def test_fibre_wire_form_round_trips(n: int, seed: int, index: int) -> None:
    pattern = draw_pattern(np.random.default_rng(seed), n, LINK)
    frame = PreparedFrame(index=index, first_slot=index * 3, pattern=pattern)
    back = decode_frame(encode_frame(frame))
    assert (back.index, back.first_slot) == (frame.index, frame.first_slot)
    for name in ("basis", "bit", "intensity"):
        assert np.array_equal(getattr(back.pattern, name), getattr(pattern, name))
    assert "basis" not in repr(frame)


def test_tags_map_back_to_the_detection_pattern_with_the_true_delay() -> None:
    sim = _sim()
    receiver = Receiver(sim, LINK, role_rng(sim.seed, "bob"))
    alice = role_rng(sim.seed, "alice")
    delay = fibre_delay_ps(sim)
    assert delay == pytest.approx((10 * 4.9 + 321.7) * 1e3)
    first = 0
    for index in range(3):
        pattern = draw_pattern(alice, 2 * 10**6, LINK)
        det, tags = receiver.receive(PreparedFrame(index, first, pattern))
        assert tags.dtype == TAG_DTYPE
        assert np.all(np.diff(tags["timestamp_ps"]) >= 0)  # time order, as a tagger streams
        assert set(np.unique(tags["channel"])) <= {1, 2}
        slots = slots_from_tags(tags, period_ps=receiver.period_ps, delay_ps=delay)
        # rebuild each slot's click pattern from its tags
        mask = np.zeros(len(tags), dtype=np.uint8)
        mask[:] = 1 << (tags["channel"] - 1)
        uniq, inverse = np.unique(slots, return_inverse=True)
        rebuilt = np.zeros(len(uniq), dtype=np.uint8)
        np.bitwise_or.at(rebuilt, inverse, mask)
        assert np.array_equal(uniq, det.slot + first)
        assert np.array_equal(rebuilt, det.pattern)
        record_slots, record_bases = receiver.bob_basis_record()
        assert np.array_equal(record_slots, uniq) and np.array_equal(record_bases, det.bob_basis)
        assert np.any(det.pattern == 3)  # double clicks give two tags in one slot
        assert np.diff(det.slot).min() > receiver.physics.dead_time_slots  # dead time
        # jitter per channel: the residuals have the configured spread
        residual = tags["timestamp_ps"] - (slots * receiver.period_ps + delay)
        for ch, sigma in ((1, 40.0), (2, 70.0)):
            r = residual[tags["channel"] == ch]
            assert abs(np.std(r) - sigma) < 6 * sigma / math.sqrt(2 * len(r))
        first += len(pattern)


def test_receiver_statistics_match_the_model_and_eve_switches_at_run_time() -> None:
    sim = _sim()
    receiver = Receiver(sim, LINK, role_rng(3, "bob"))
    alice = role_rng(3, "alice")
    for eve in ("none", "intercept-resend:0.5", "blinding"):
        receiver.set_eavesdropper(eve)
        det, _tags = receiver.receive(PreparedFrame(0, 0, draw_pattern(alice, 3 * 10**6, LINK)))
        phys = receiver.physics
        assert phys.eve == EveSpec.parse(eve).model.value
        assert_agrees(measure(det, phys.bob_key_probability), expected_statistics(phys), eve)
    assert receiver.photocurrent_a() > 100 * 1e-6  # blinding light shows on the monitor
    receiver.set_eavesdropper("none")
    assert receiver.photocurrent_a() == pytest.approx(1e-6)


def test_drift_is_off_by_default_and_a_random_walk_when_configured() -> None:
    still = Drift()
    still.step(10.0, np.random.default_rng(1))
    assert still.timing_ps == 0.0 and still.misalignment_offset == 0.0
    walks = []
    for seed in range(400):
        drift = Drift(timing_ps_per_sqrt_s=30.0, misalignment_per_sqrt_s=1e-3)
        rng = np.random.default_rng(seed)
        for _ in range(4):
            drift.step(0.25, rng)
        walks.append((drift.timing_ps, drift.misalignment_offset))
    t, m = np.array(walks).T
    # after 1 s: standard deviations 30 ps and 1e-3 (χ² spread over 400 walks ≈ 3.5 %)
    assert np.std(t) == pytest.approx(30.0, rel=0.2)
    assert np.std(m) == pytest.approx(1e-3, rel=0.2)


def test_drift_moves_the_tags_and_the_misalignment() -> None:
    sim = _sim(channel={"distance_km": 0.0, "timing_drift_ps_per_sqrt_s": 5e4,
                        "misalignment_drift_per_sqrt_s": 0.5})  # fmt: skip
    receiver = Receiver(sim, LINK, role_rng(4, "bob"))
    start = receiver.delay_ps
    pattern = draw_pattern(role_rng(4, "alice"), 10**6, LINK)
    receiver.receive(PreparedFrame(0, 0, pattern))
    receiver.receive(PreparedFrame(1, len(pattern), pattern))
    assert receiver.delay_ps != start
    assert receiver.physics.misalignment != sim.channel.misalignment


def test_config_resolves_to_per_slot_physics() -> None:
    sim = _sim(receiver={"basis_choice": "passive", "optics_efficiency": 0.5},
               detectors={"efficiency": [0.1, 0.2, 0.3, 0.4], "dead_time_ns": 50.0})  # fmt: skip
    phys = physics_from_config(sim, LINK)
    assert phys.passive and phys.detectors == 4
    assert phys.efficiency == pytest.approx((0.05, 0.1, 0.15, 0.2))
    assert phys.dead_time_slots == 50
    assert phys.eta_channel == pytest.approx(10 ** (-0.2))
    eve = physics_from_config(sim, LINK, EveSpec.parse("pns:0.25"))
    assert (eve.eve, eve.eve_fraction) == ("pns", 0.25)


@pytest.mark.parametrize(
    ("text", "message"),
    [("mallory", "unknown eavesdropper"), ("pns:x", "not a number"), ("pns:1.5", "lie in")],
)
def test_eve_spec_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EveSpec.parse(text)


def test_detector_lists_must_fit_the_receiver() -> None:
    with pytest.raises(ValueError, match="4 detectors"):
        SimulationConfig.model_validate(
            {"receiver": {"basis_choice": "passive"}, "detectors": {"efficiency": [0.1, 0.2]}}
        )


def test_frame_pattern_is_what_the_source_sends() -> None:
    # the fibre carries FramePattern itself: its repr never shows Alice's choices
    ones = np.ones(8, dtype=np.uint8)
    assert repr(FramePattern(basis=ones, bit=ones, intensity=ones)) == "<FramePattern slots=8>"


def test_timestamps_stay_exact_after_days_of_slots() -> None:
    from qkdd.physics.link import tags_from_detections
    from qkdd.physics.simulator import ClickSimulator

    phys = physics_from_config(_sim(), LINK)
    det = ClickSimulator(phys, np.random.default_rng(1)).run(10**5)
    first = 3 * 24 * 3600 * 10**9  # three days of slots at 1 GHz: 2.6e17 ps
    tags = tags_from_detections(
        det, first_slot=first, period_ps=1000.0, delay_ps=0.0, jitter_ps=(0.0, 0.0),
        rng=np.random.default_rng(2),
    )  # fmt: skip
    assert np.all((tags["timestamp_ps"] - first * 1000) % 1000 == 0)
    assert np.array_equal(np.unique(tags["timestamp_ps"] // 1000 - first), det.slot)


def test_a_tcp_fibre_needs_its_port() -> None:
    with pytest.raises(ValueError, match="loopback port"):
        SimulationConfig.model_validate({"fibre": "tcp"})
    sim = SimulationConfig.model_validate({"fibre": "tcp", "fibre_path": "47001"})
    from qkdd.instruments.twins.link import fibre_address

    assert fibre_address(sim, "l").port == 47001


def test_receiver_repr_holds_no_frame_data() -> None:
    receiver = Receiver(_sim(), LINK, role_rng(1, "bob"))
    pattern = draw_pattern(role_rng(1, "alice"), 10_000, LINK)
    receiver.receive(PreparedFrame(0, 0, pattern))
    text = repr(receiver)
    assert "array" not in text and "Generator" not in text
