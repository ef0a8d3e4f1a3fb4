"""Sifting: exact small cases, conservation and no cross-basis leakage (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdd.postprocessing.sifting import (
    BASIS_K,
    BASIS_T,
    BlockStatistics,
    Detections,
    FramePattern,
    accumulate,
    match_bases,
    sift,
)


def test_small_frame_exact() -> None:
    # slot:            0  1  2  3  4  5  6  7
    pattern = FramePattern(
        basis=[0, 1, 0, 1, 0, 0, 1, 1],
        bit=[1, 0, 0, 1, 1, 0, 1, 0],
        intensity=[0, 0, 1, 2, 0, 1, 2, 1],
    )
    det = Detections(
        slot=np.array([0, 1, 2, 3, 5, 6, 7]),
        basis=[0, 1, 1, 1, 0, 0, 1],  # slot 2 and 6 mismatch
        bit=[1, 1, 0, 1, 1, 0, 0],
    )
    frame = sift(det, pattern)
    # K matched: slots 0 (class 0) and 5 (class 1); T matched: 1 (0), 3 (2), 7 (1)
    assert frame.key_alice.tolist() == [1, 0]
    assert frame.key_bob.tolist() == [1, 1]
    assert frame.key_class.tolist() == [0, 1]
    assert frame.test_alice.tolist() == [0, 1, 0]
    assert frame.test_bob.tolist() == [1, 1, 0]
    assert frame.test_class.tolist() == [0, 2, 1]
    s = frame.statistics
    assert s.pulses == 8
    assert s.sent_per_class.tolist() == [3, 3, 2]
    assert s.key_counts.tolist() == [1, 1, 0]
    assert s.test_counts.tolist() == [1, 1, 1]
    assert s.test_errors.tolist() == [1, 0, 0]
    assert frame.key_errors() == 1
    assert [b.tolist() for b in frame.key_for_class(1)] == [[0], [1]]


def test_repr_shows_no_bits() -> None:
    pattern = FramePattern(basis=[0, 0], bit=[1, 1], intensity=[0, 0])
    frame = sift(Detections(slot=np.array([0, 1]), basis=[0, 0], bit=[1, 1]), pattern)
    assert repr(frame) == "SiftedFrame(n_key=2, n_test=0, pulses=2)"


@pytest.mark.parametrize(
    ("slot", "basis", "bit", "message"),
    [
        ([1, 1], [0, 0], [0, 0], "strictly increasing"),
        ([2, 1], [0, 0], [0, 0], "strictly increasing"),
        ([0, 9], [0, 0], [0, 0], "outside the frame"),
        ([0, 1], [0, 2], [0, 0], "basis values"),
        ([0, 1], [0, 1], [0, -1], "bit values"),
        ([0, 1], [0], [0, 0], "same length"),
    ],
)
def test_bad_detections_are_rejected(
    slot: list[int], basis: list[int], bit: list[int], message: str
) -> None:
    pattern = FramePattern(basis=[0, 1, 0], bit=[0, 0, 0], intensity=[0, 1, 2])
    with pytest.raises(ValueError, match=message):
        sift(Detections(slot=np.array(slot), basis=basis, bit=bit), pattern)


def test_given_class_totals_are_used_and_checked() -> None:
    pattern = FramePattern(
        basis=[0, 1, 0], bit=[0, 0, 0], intensity=[0, 1, 1], class_totals=[1, 2, 0]
    )
    det = Detections(slot=np.array([0]), basis=[0], bit=[0])
    assert sift(det, pattern).statistics.sent_per_class.tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="class_totals"):
        FramePattern(basis=[0, 1], bit=[0, 0], intensity=[0, 1], class_totals=[1, 0, 0])


def test_bad_pattern_and_statistics_are_rejected() -> None:
    with pytest.raises(ValueError, match="intensity values"):
        FramePattern(basis=[0], bit=[0], intensity=[3])
    with pytest.raises(ValueError, match="more test errors"):
        BlockStatistics(10, [5, 3, 2], [1, 1, 1], [1, 1, 1], [2, 0, 0])


@st.composite
def frames(draw: st.DrawFn) -> tuple[Detections, FramePattern]:
    n = draw(st.integers(min_value=1, max_value=400))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rate = draw(st.floats(min_value=0.0, max_value=1.0))
    rng = np.random.default_rng(seed)
    pattern = FramePattern(
        basis=rng.integers(0, 2, n, dtype=np.uint8),
        bit=rng.integers(0, 2, n, dtype=np.uint8),
        intensity=rng.integers(0, 3, n, dtype=np.uint8),
    )
    slot = np.flatnonzero(rng.random(n) < rate)
    det = Detections(
        slot=slot,
        basis=rng.integers(0, 2, len(slot), dtype=np.uint8),
        bit=rng.integers(0, 2, len(slot), dtype=np.uint8),
    )
    return det, pattern


@settings(max_examples=150, deadline=None)
@given(frames())
def test_sifting_matches_a_per_event_reference(case: tuple[Detections, FramePattern]) -> None:
    det, pattern = case
    frame = sift(det, pattern)
    ref: dict[int, list[tuple[int, int, int]]] = {BASIS_K: [], BASIS_T: []}
    mismatched = 0
    for s, b, x in zip(det.slot.tolist(), det.basis.tolist(), det.bit.tolist(), strict=True):
        if pattern.basis[s] != b:
            mismatched += 1
            continue
        ref[b].append((int(pattern.bit[s]), x, int(pattern.intensity[s])))
    key = list(
        zip(frame.key_alice.tolist(), frame.key_bob.tolist(), frame.key_class.tolist(), strict=True)
    )
    test = list(
        zip(
            frame.test_alice.tolist(),
            frame.test_bob.tolist(),
            frame.test_class.tolist(),
            strict=True,
        )
    )
    assert key == ref[BASIS_K]
    assert test == ref[BASIS_T]
    stats = frame.statistics
    # Conservation: every detection is either K-matched, T-matched or discarded.
    assert stats.n_key + stats.n_test + mismatched == len(det)
    assert stats.sent_per_class.sum() == pattern.n_slots
    for k in range(3):
        assert stats.key_counts[k] == sum(1 for e in ref[BASIS_K] if e[2] == k)
        assert stats.test_errors[k] == sum(1 for e in ref[BASIS_T] if e[2] == k and e[0] != e[1])


@settings(max_examples=80, deadline=None)
@given(frames())
def test_no_cross_basis_leakage(case: tuple[Detections, FramePattern]) -> None:
    det, pattern = case
    idx = match_bases(det, pattern)
    key_slots = det.slot[idx.key]
    test_slots = det.slot[idx.test]
    assert np.all(pattern.basis[key_slots] == BASIS_K)
    assert np.all(det.basis[idx.key] == BASIS_K)
    assert np.all(pattern.basis[test_slots] == BASIS_T)
    assert np.all(det.basis[idx.test] == BASIS_T)
    assert not set(key_slots.tolist()) & set(test_slots.tolist())
    # Each end applies the same public indices to its own bits.
    assert np.array_equal(idx.key_bits(det.bit), sift(det, pattern).key_bob)


@settings(max_examples=40, deadline=None)
@given(st.lists(frames(), min_size=1, max_size=5))
def test_accumulated_frames_equal_one_long_frame(
    cases: list[tuple[Detections, FramePattern]],
) -> None:
    per_frame = [sift(d, p).statistics for d, p in cases]
    offset = 0
    slots, bases, bits, pb, px, pi = [], [], [], [], [], []
    for d, p in cases:
        slots.append(d.slot + offset)
        bases.append(d.basis)
        bits.append(d.bit)
        pb.append(p.basis)
        px.append(p.bit)
        pi.append(p.intensity)
        offset += p.n_slots
    joined = sift(
        Detections(np.concatenate(slots), np.concatenate(bases), np.concatenate(bits)),
        FramePattern(np.concatenate(pb), np.concatenate(px), np.concatenate(pi)),
    ).statistics
    total = accumulate(per_frame)
    assert total.pulses == joined.pulses
    for name in ("sent_per_class", "key_counts", "test_counts", "test_errors"):
        assert np.array_equal(getattr(total, name), getattr(joined, name))
    assert total == joined
    assert accumulate([]) == BlockStatistics.empty()
    assert accumulate(per_frame[:1]) != BlockStatistics.empty() or per_frame[0].pulses == 0
