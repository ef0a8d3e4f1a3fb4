"""Timing tracking after calibration: the window follows drift in bounded steps, a
per-detector shift warns (``timing_shift``), a window beyond its bounds is lost."""

from __future__ import annotations

import numpy as np
import pytest

from qkdd.link.calibration import DetectorTiming, TimingTracker, detector_timing

PERIOD = 1000.0  # ps: a 1 GHz source


def _tags(
    rng: np.random.Generator, shifts: dict[int, float], n: int = 5000, delay: float = 2e6
) -> tuple[np.ndarray, np.ndarray]:
    times, channels = [], []
    for ch, shift in shifts.items():
        slots = rng.integers(0, 10**7, n)
        times.append(np.rint(slots * PERIOD + delay + shift + rng.normal(0, 50, n)))
        channels.append(np.full(n, ch))
    # dark counts anywhere in the slot
    dark = rng.integers(0, 10**10, n // 20)
    return (
        np.concatenate([*times, dark]).astype(np.int64),
        np.concatenate([*channels, rng.integers(1, len(shifts) + 1, n // 20)]),
    )


def test_detector_timing_finds_each_peak_despite_dark_counts() -> None:
    rng = np.random.default_rng(1)
    times, channels = _tags(rng, {1: 0.0, 2: 180.0, 3: -40.0})
    timing = detector_timing(times, channels, period_ps=PERIOD, delay_ps=2e6)
    assert timing[1].offset_ps == pytest.approx(0, abs=10)
    assert timing[2].offset_ps == pytest.approx(180, abs=10)
    assert timing[3].offset_ps == pytest.approx(-40, abs=10)
    assert 40 < timing[1].spread_ps < 70
    assert detector_timing(times[:0], channels[:0], period_ps=PERIOD, delay_ps=0) == {}


def _at(offsets: dict[int, float], clicks: int = 5000) -> dict[int, DetectorTiming]:
    return {ch: DetectorTiming(off, 50.0, clicks) for ch, off in offsets.items()}


def test_slow_drift_is_followed_in_bounded_steps_without_a_warning() -> None:
    tracker = TimingTracker(PERIOD)
    tracker.calibrated(2e6)
    true_delay = 2e6
    for _ in range(40):
        true_delay += 2.0  # 2 ps per frame
        offset = true_delay - tracker.delay_ps
        update = tracker.update(_at({1: offset, 2: offset}))
        assert update.lost is None and not update.shifted
    assert tracker.delay_ps == pytest.approx(true_delay, abs=1)
    # A jump is followed at most max_step per frame.
    before = tracker.delay_ps
    tracker.update(_at({1: 150.0, 2: 150.0}))
    assert tracker.delay_ps - before == pytest.approx(tracker.max_step_ps)


def test_one_detector_shifting_warns() -> None:
    tracker = TimingTracker(PERIOD)
    tracker.calibrated(2e6)
    update = tracker.update(_at({1: 0.0, 2: 0.0, 3: 300.0, 4: 0.0}))
    assert update.lost is None
    assert set(update.shifted) == {3}
    assert update.values["detector_3_shift_ps"] == pytest.approx(225)


def test_a_shift_within_noise_does_not_warn() -> None:
    tracker = TimingTracker(PERIOD)
    tracker.calibrated(2e6)
    # 20 clicks with a 300 ps spread: a 150 ps offset is not evidence of anything.
    few = {1: DetectorTiming(150.0, 300.0, 20), 2: DetectorTiming(0.0, 50.0, 5000)}
    assert not TimingTracker(PERIOD, min_clicks=10).update(few).shifted
    # Below min_clicks a detector is not judged at all.
    assert not tracker.update({1: DetectorTiming(400.0, 50.0, 10)}).shifted


def test_window_beyond_its_bounds_is_lost() -> None:
    tracker = TimingTracker(PERIOD)
    tracker.calibrated(2e6)
    update = tracker.update(_at({1: 350.0, 2: 350.0}))
    assert update.lost is not None and "window lost" in update.lost
    assert tracker.delay_ps == 2e6  # a lost window is not followed
    # Drift accumulated step by step past the bound is lost as well.
    tracker = TimingTracker(PERIOD)
    tracker.calibrated(2e6)
    for _ in range(200):
        update = tracker.update(_at({1: 20.0, 2: 20.0}))
        if update.lost:
            break
    assert update.lost is not None
    assert abs(tracker.delay_ps - 2e6) <= tracker.lost_ps + tracker.max_step_ps
