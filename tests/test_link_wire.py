"""Peer wire format: round trips, any chunking, malformed input always rejected cleanly."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qkdd.link.wire import (
    FrameReader,
    PeerMessage,
    WireError,
    decode_body,
    encode_body,
    encode_frame,
)


class ProbeReport(PeerMessage):
    kind: ClassVar[str] = "test-probe-report"
    arrays: ClassVar[tuple[str, ...]] = ("slots", "bases")

    frame: int
    note: str
    slots: Any
    bases: Any


def _message(slots: np.ndarray, bases: np.ndarray, frame: int = 7) -> ProbeReport:
    return ProbeReport(frame=frame, note="x", slots=slots, bases=bases)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.int64, st.integers(0, 300)),
    hnp.arrays(np.uint8, st.integers(0, 300)),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**31),
)
def test_round_trip(slots: np.ndarray, bases: np.ndarray, sequence: int, frame: int) -> None:
    seq, decoded = decode_body(encode_body(_message(slots, bases, frame), sequence))
    assert seq == sequence
    assert isinstance(decoded, ProbeReport)
    assert decoded.frame == frame
    np.testing.assert_array_equal(decoded.slots, slots)
    np.testing.assert_array_equal(decoded.bases, bases)
    assert decoded.slots.dtype == np.int64


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=5), st.data())
def test_reader_reassembles_any_chunking(sizes: list[int], data: st.DataObject) -> None:
    frames = [
        encode_frame(_message(np.arange(n, dtype=np.int64), np.zeros(n, np.uint8), n), i)
        for i, n in enumerate(sizes)
    ]
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    reader = FrameReader()
    bodies: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        bodies += reader.feed(stream[start:cut])
        start = cut
    assert [decode_body(b)[1].frame for b in bodies] == sizes  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_is_rejected_never_crashes(garbage: bytes) -> None:
    with pytest.raises(WireError):
        decode_body(garbage)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_corruption_is_rejected_or_decodes_to_a_valid_message(data: st.DataObject) -> None:
    body = bytearray(encode_body(_message(np.arange(5, dtype=np.int64), np.ones(5, np.uint8)), 1))
    position = data.draw(st.integers(0, len(body) - 1))
    body[position] ^= data.draw(st.integers(1, 255))
    try:
        _, message = decode_body(bytes(body))
    except WireError:
        return
    assert isinstance(message, ProbeReport)  # e.g. a flipped array byte: the tag catches that


def test_specific_malformations() -> None:
    good = encode_body(_message(np.arange(3, dtype=np.int64), np.ones(3, np.uint8)), 1)
    with pytest.raises(WireError, match="bad magic"):
        decode_body(b"XXXX" + good[4:])
    with pytest.raises(WireError, match="trailing"):
        decode_body(good + b"\0")
    with pytest.raises(WireError, match="runs past"):
        decode_body(good[:-1])
    with pytest.raises(WireError, match="exceeds the limit"):
        FrameReader(max_frame_bytes=10).feed(b"\x00\x00\x01\x00")


def test_objects_cannot_be_sent_and_repr_hides_arrays() -> None:
    message = _message(np.array([1, 2], dtype=object), np.ones(2, np.uint8))
    with pytest.raises(WireError, match="cannot be sent"):
        encode_body(message, 0)
    assert "1, 2" not in repr(_message(np.array([1, 2]), np.array([1, 1], np.uint8)))


def test_duplicate_kind_is_a_definition_error() -> None:
    with pytest.raises(TypeError, match="defined twice"):

        class Again(PeerMessage):
            kind: ClassVar[str] = "test-probe-report"
