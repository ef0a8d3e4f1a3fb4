"""The windowed QBER alarm test: false-alarm rate, detection power, clearing, CUSUM warning."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from qkdd.link.alarms import (
    AlarmKind,
    AlarmLevel,
    QberAlarmTest,
    alarm_threshold,
    qber_lower_bound,
)


def test_threshold_is_the_least_count_at_the_significance() -> None:
    k = alarm_threshold(512, 0.05, 1e-9)
    assert binom.sf(k - 1, 512, 0.05) <= 1e-9 < binom.sf(k - 2, 512, 0.05)


def test_design_detection_claims_hold_for_the_default_window() -> None:
    k = alarm_threshold(512, 0.05, 1e-9)
    # intercept-resend on every pulse (QBER 25 %): caught by the first full window
    assert binom.sf(k - 1, 512, 0.25) > 0.9999
    # QBER 15 %: caught with probability 0.98
    assert binom.sf(k - 1, 512, 0.15) >= 0.98


def test_levels_follow_the_design_lists() -> None:
    aborts = {k for k in AlarmKind if k.level is AlarmLevel.ABORT}
    assert aborts == {
        AlarmKind.QBER_HIGH,
        AlarmKind.KEY_LENGTH_ZERO,
        AlarmKind.AUTH_FAILURE,
        AlarmKind.BLINDING_SUSPECT,
        AlarmKind.DEVICE_FAULT,
        AlarmKind.PEER_LOST,
    }


def test_honest_link_at_the_ceiling_does_not_alarm() -> None:
    rng = np.random.default_rng(11)
    test = QberAlarmTest()
    for _ in range(200):  # 200 frames × 2000 bits ≈ 4e5 overlapping windows
        result = test.observe(rng.random(2000) < 0.05)
        assert not any(e.kind is AlarmKind.QBER_HIGH for e in result.events)
    assert not test.alarm_active


def test_intercept_resend_is_caught_in_the_first_window_after_it_starts() -> None:
    rng = np.random.default_rng(5)
    test = QberAlarmTest()
    test.observe(rng.random(3000) < 0.02)  # honest history
    attacked = rng.random(512) < 0.25
    result = test.observe(attacked)
    raised = [e for e in result.events if e.kind is AlarmKind.QBER_HIGH and e.active]
    assert raised and test.alarm_active
    assert raised[0].values["qber_lower_bound"] > 0.05


def test_alarm_clears_only_after_a_full_clean_window_sent_after_it() -> None:
    test = QberAlarmTest()
    test.observe(np.ones(512, dtype=np.int8))  # the alarm fires on the 512th bit
    assert test.alarm_active
    # 511 clean bits sent after it are not a full window: still in alarm
    result = test.observe(np.zeros(511, dtype=np.int8))
    assert test.alarm_active
    assert all(e.kind is not AlarmKind.QBER_HIGH for e in result.events)
    result = test.observe(np.zeros(1, dtype=np.int8))
    cleared = [e for e in result.events if e.kind is AlarmKind.QBER_HIGH and not e.active]
    assert cleared and not test.alarm_active
    # the next window counts only bits sent after the clearing
    result = test.observe(np.ones(60, dtype=np.int8))
    assert not test.alarm_active


def test_bits_before_the_clearing_never_count_again() -> None:
    test = QberAlarmTest()
    test.observe(np.ones(100, dtype=np.int8))  # 100 errors in < a window: no alarm yet
    assert not test.alarm_active
    test.observe(np.zeros(412, dtype=np.int8))  # first full window: 100 errors ≥ 61
    assert test.alarm_active


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 1), min_size=0, max_size=3000),
    st.lists(st.integers(0, 3000), max_size=6),
)
def test_frame_boundaries_do_not_change_any_transition(bits: list[int], cuts: list[int]) -> None:
    def run(parts: list[np.ndarray]) -> list[tuple[bool, int]]:
        test = QberAlarmTest(window_bits=64, qber_ceiling=0.1, p_value=1e-3)
        seen = []
        for part in parts:
            seen += [
                (e.active, int(e.values["window_errors"]))
                for e in test.observe(part).events
                if e.kind is AlarmKind.QBER_HIGH
            ]
        return seen

    arr = np.array(bits, dtype=np.int8)
    assert run(np.split(arr, sorted(c for c in cuts if c <= arr.size))) == run([arr])


def test_cusum_warns_on_a_drift_before_the_alarm() -> None:
    rng = np.random.default_rng(3)
    test = QberAlarmTest()
    warned_at = alarmed_at = None
    for frame in range(400):
        result = test.observe(rng.random(200) < 0.045)  # just under the ceiling
        kinds = {e.kind for e in result.events}
        if AlarmKind.QBER_WARNING in kinds and warned_at is None:
            warned_at = frame
        if AlarmKind.QBER_HIGH in kinds and alarmed_at is None:
            alarmed_at = frame
    assert warned_at is not None
    assert alarmed_at is None


def test_cusum_warning_clears_after_clean_bits_and_returns_with_a_new_drift() -> None:
    """Raised on a drift, the warning is a state: it clears once warning_clear_bits
    test bits pass with no new crossing, and a new drift raises it again."""
    rng = np.random.default_rng(5)
    test = QberAlarmTest(window_bits=512)
    events: list[tuple[int, bool]] = []
    for frame in range(600):
        qber = 0.045 if frame < 100 or frame >= 400 else 0.005
        for e in test.observe(rng.random(200) < qber).events:
            if e.kind is AlarmKind.QBER_WARNING:
                events.append((frame, e.active))
    changes = [e for i, e in enumerate(events) if i == 0 or e[1] != events[i - 1][1]]
    assert changes[0][1] is True and changes[0][0] < 100
    # the drift ends at frame 100: cleared within warning_clear_bits (200 bits a frame)
    last_raise = max(f for f, active in events if active and f < 100)
    clear = next(f for f, active in changes if not active and f >= 100)
    assert clear <= last_raise + test.warning_clear_bits // 200 + 1
    assert not any(f for f, active in events if 150 <= f < 400)  # quiet on a good link
    assert any(active and f >= 400 for f, active in events)  # the second drift


def test_cusum_quiet_on_a_good_link() -> None:
    rng = np.random.default_rng(4)
    test = QberAlarmTest()
    warnings = sum(
        any(e.kind is AlarmKind.QBER_WARNING for e in test.observe(rng.random(500) < 0.01).events)
        for _ in range(200)
    )
    assert warnings == 0


def test_lower_bound_is_conservative() -> None:
    assert qber_lower_bound(0, 512, 1e-9) == 0.0
    lb = qber_lower_bound(128, 512, 1e-9)
    assert 0.05 < lb < 128 / 512
    assert binom.sf(127, 512, lb) == pytest.approx(1e-9, rel=1e-3)


def test_rejects_non_binary_input() -> None:
    with pytest.raises(ValueError):
        QberAlarmTest().observe(np.array([0, 2]))


def _reference(bits: list[int], n: int, threshold: int) -> list[bool]:
    """Bit by bit: after each bit, test the latest full window of bits since the last transition."""
    window: list[int] = []
    active = False
    transitions = []
    for bit in bits:
        window.append(bit)
        if len(window) < n:
            continue
        errors = sum(window[-n:])
        if (not active and errors >= threshold) or (active and errors < threshold):
            active = not active
            transitions.append(active)
            window = []
    return transitions


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1), max_size=1500), st.integers(1, 400))
def test_matches_a_bit_by_bit_reference(bits: list[int], frame: int) -> None:
    test = QberAlarmTest(window_bits=32, qber_ceiling=0.1, p_value=1e-3)
    arr = np.array(bits, dtype=np.int8)
    seen = []
    for start in range(0, max(arr.size, 1), frame):
        seen += [
            e.active
            for e in test.observe(arr[start : start + frame]).events
            if e.kind is AlarmKind.QBER_HIGH
        ]
    assert seen == _reference(bits, 32, test.threshold)


# -- decoy_ratio_shift ------------------------------------------------------------------

_MU = (0.5, 0.1, 0.0002)
_P_CLASS = (0.5, 0.3, 0.2)


def _expected_sifted(distance_km: float, eve: str = "none", **extra: object) -> np.ndarray:
    from qkdd.physics.expected import LinkPhysics, expected_statistics, fibre_transmittance

    phys = LinkPhysics(
        mu=_MU,
        p_class=_P_CLASS,
        p_key=0.85,
        eta_channel=fibre_transmittance(0.2, distance_km),
        efficiency=(0.2, 0.2),
        dark_count=(1e-7, 1e-7),
        misalignment=0.005,
        dead_time_slots=10,
        eve=eve,
        **extra,  # type: ignore[arg-type]
    )
    return np.asarray(expected_statistics(phys).sifted_gain)


@pytest.mark.parametrize("distance_km", [0.0, 2.0, 25.0, 50.0, 100.0])
def test_decoy_ratio_of_an_honest_link_is_consistent(distance_km: float) -> None:
    from qkdd.link.alarms import decoy_ratio_check

    sent = np.array(_P_CLASS) * 1e8
    rng = np.random.default_rng(int(distance_km))
    gain = _expected_sifted(distance_km, afterpulse=(0.02, 0.02), afterpulse_memory=0.5)
    for _ in range(50):  # binomial noise on every class
        detected = rng.binomial(sent.astype(np.int64), gain)
        assert decoy_ratio_check(sent, detected, _MU) is None


@pytest.mark.parametrize(("distance_km", "direction"), [(2.0, 1), (25.0, -1), (50.0, -1)])
def test_pns_shifts_the_decoy_ratio(distance_km: float, direction: int) -> None:
    from qkdd.link.alarms import decoy_ratio_check

    sent = np.array(_P_CLASS) * 1e8
    event = decoy_ratio_check(sent, _expected_sifted(distance_km, "pns") * sent, _MU)
    assert event is not None and event.kind is AlarmKind.DECOY_RATIO_SHIFT
    assert event.level is AlarmLevel.WARNING and event.active
    # Short links: PNS forwards extra multi-photon light (decoy gain up); long links: it
    # blocks single photons (decoy gain down, about a quarter of the expected at 50 km).
    assert (event.values["ratio"] - 1) * direction > 0.1


def test_decoy_ratio_needs_evidence_beyond_noise() -> None:
    from qkdd.link.alarms import decoy_ratio_check

    # 1000 pulses per class: a 30 % shift is well within the statistical bound.
    sent = np.array([1000, 1000, 1000])
    assert decoy_ratio_check(sent, [60, 8, 0], _MU) is None
    # Undecidable inputs give no warning rather than an exception.
    assert decoy_ratio_check([0, 10, 10], [0, 1, 0], _MU) is None
    assert decoy_ratio_check(sent, [0, 0, 0], _MU) is None


def test_honest_simulated_link_runs_many_windows_without_a_false_qber_high() -> None:
    """The physics simulator's test-basis bits (misalignment 3 %, dark counts, dead time,
    afterpulses) through the windowed test: hundreds of disjoint windows and ~10^5
    overlapping ones, never an alarm."""
    from qkdd.physics.expected import LinkPhysics, fibre_transmittance
    from qkdd.physics.simulator import ClickSimulator

    phys = LinkPhysics(
        mu=_MU,
        p_class=_P_CLASS,
        p_key=0.5,
        eta_channel=fibre_transmittance(0.2, 10.0),
        efficiency=(0.2, 0.2),
        dark_count=(1e-6, 1e-6),
        misalignment=0.03,
        afterpulse=(0.01, 0.01),
        afterpulse_memory=0.5,
        dead_time_slots=10,
    )
    sim = ClickSimulator(phys, np.random.default_rng(2026))
    test = QberAlarmTest()
    bits = errors = 0
    while bits < 400 * test.window_bits:
        frame = sim.run(2_000_000)
        t = (frame.alice_basis == 1) & (frame.bob_basis == 1) & (frame.intensity != 2)
        wrong = (frame.alice_bit[t] != frame.bob_bit[t]).astype(np.int8)
        result = test.observe(wrong)
        assert not any(e.kind is AlarmKind.QBER_HIGH for e in result.events), result
        bits += wrong.size
        errors += int(wrong.sum())
    assert not test.alarm_active
    assert 0.02 < errors / bits < 0.04  # the link really ran at its 3 % misalignment
