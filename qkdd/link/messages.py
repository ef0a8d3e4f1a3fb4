"""The peer messages of the key-exchange protocol (DESIGN §4).

Every message declares how the channel authenticates it (``auth``):

* ``HANDSHAKE`` — the hello after each (re)connect, tagged at an index announced in
  clear (:meth:`~qkdd.auth.session.AuthSession.sign_handshake`);
* ``SINGLE`` — tagged individually (block start, vote, commit, abort, decision
  query and answer);
* ``REPORT`` — Bob's detection report of a frame, tagged individually under the
  block's hash key and verified before Alice reveals anything about the frame;
* ``TRANSCRIPT`` — not tagged alone, but bound into the block's running transcript,
  whose tag is checked before anything of the block is committed;
* ``TRANSCRIPT_TAG`` — carries a transcript tag (the tag is the content);
* ``CLEAR`` — hints that need no authentication (a stale-index refusal carries only
  a number the receiver bounds; a refusal reason ends the connection anyway).

The receiver checks that a frame's mode is the one its kind declares, so a forged
frame cannot downgrade itself to an unauthenticated kind.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

from pydantic import Field

from qkdd.link.wire import PeerMessage

PROTOCOL_VERSION = 1


class AuthMode(enum.IntEnum):
    CLEAR = 0
    HANDSHAKE = 1
    SINGLE = 2
    REPORT = 3
    TRANSCRIPT = 4
    TRANSCRIPT_TAG = 5


class LinkMessage(PeerMessage):
    """A message of the link protocol; subclasses set ``kind`` and ``auth``."""

    auth: ClassVar[AuthMode]


class Hello(LinkMessage):
    """Handshake: who we are and every parameter both ends must hold identically."""

    kind: ClassVar[str] = "hello"
    auth: ClassVar[AuthMode] = AuthMode.HANDSHAKE

    link: str
    role: str
    protocol_version: int
    secret_id: str
    consumers: list[str]
    protocol: dict[str, Any]
    simulation: dict[str, Any] | None = None
    index: int = Field(ge=0, description="index of this hello's tag, announced in clear")
    marks: dict[str, int]
    simulated: bool


class HelloVerdict(LinkMessage):
    """The answer to the peer's hello, in clear: accepted, stale (with this end's
    high-water mark, a hint the peer bounds) or refused (with the reason)."""

    kind: ClassVar[str] = "hello-verdict"
    auth: ClassVar[AuthMode] = AuthMode.CLEAR

    accepted: bool
    stale_mark: int | None = None
    refusal: str | None = None


class BlockStart(LinkMessage):
    """Alice opens a block: its id (never reused) and its fixed size in frames."""

    kind: ClassVar[str] = "block-start"
    auth: ClassVar[AuthMode] = AuthMode.SINGLE

    block_id: int = Field(gt=0)
    frames: int = Field(gt=0)
    frame_slots: int = Field(gt=0)


class DetectionReport(LinkMessage):
    """Bob's detections of one frame: slot and basis of each, and his bits of the
    T-basis detections (all T bits are revealed; K bits never are)."""

    kind: ClassVar[str] = "detection-report"
    auth: ClassVar[AuthMode] = AuthMode.REPORT
    arrays: ClassVar[tuple[str, ...]] = ("slot", "basis", "test_bits")

    block_id: int
    frame: int
    slot: Any
    basis: Any
    test_bits: Any


class SiftReply(LinkMessage):
    """Alice's answer for one frame: which detections matched her basis, their
    intensity classes, her bits of the matched T detections, and the pulses sent per
    class (public, the decoy estimate needs them at both ends)."""

    kind: ClassVar[str] = "sift-reply"
    auth: ClassVar[AuthMode] = AuthMode.TRANSCRIPT
    arrays: ClassVar[tuple[str, ...]] = ("matched", "classes", "test_bits", "sent_per_class")

    block_id: int
    frame: int
    matched: Any
    classes: Any
    test_bits: Any
    sent_per_class: Any


class Reconcile(LinkMessage):
    """One message of the reconciliation exchange: its key-dependent bits
    (``disclosed``, concatenated, with names and sizes) and its public values."""

    kind: ClassVar[str] = "reconcile"
    auth: ClassVar[AuthMode] = AuthMode.TRANSCRIPT
    arrays: ClassVar[tuple[str, ...]] = ("disclosed", "public_ints")

    block_id: int
    sender: str
    step: str
    disclosed_names: list[str]
    disclosed_sizes: list[int]
    public: dict[str, int | float | str]
    public_int_names: list[str]
    public_int_sizes: list[int]
    credit: int
    disclosed: Any
    public_ints: Any


class VerificationTag(LinkMessage):
    """Alice's verification hash of her reconciled key under a fresh public seed."""

    kind: ClassVar[str] = "verification-tag"
    auth: ClassVar[AuthMode] = AuthMode.TRANSCRIPT

    block_id: int
    seed: str  # hex
    tag: str  # hex
    tag_bits: int


class VerificationResult(LinkMessage):
    kind: ClassVar[str] = "verification-result"
    auth: ClassVar[AuthMode] = AuthMode.TRANSCRIPT

    block_id: int
    equal: bool


class AmplificationSeed(LinkMessage):
    """The Toeplitz seed (n + ℓ − 1 bits, packed) drawn by Alice after Bob's reports."""

    kind: ClassVar[str] = "amplification-seed"
    auth: ClassVar[AuthMode] = AuthMode.TRANSCRIPT
    arrays: ClassVar[tuple[str, ...]] = ("seed",)

    block_id: int
    secret_bits: int
    seed_bits: int
    seed: Any


class TranscriptTag(LinkMessage):
    kind: ClassVar[str] = "transcript-tag"
    auth: ClassVar[AuthMode] = AuthMode.TRANSCRIPT_TAG

    block_id: int


class Prepare(LinkMessage):
    """Alice asks Bob to store the block's keys as pending and vote. Carries what both
    ends need to split the key identically: ℓ, the replenishment need, ε_auth."""

    kind: ClassVar[str] = "prepare"
    auth: ClassVar[AuthMode] = AuthMode.SINGLE

    block_id: int
    secret_bits: int
    need_ab: int = Field(ge=0)
    need_ba: int = Field(ge=0)
    eps_auth: float = Field(ge=0)
    qber: float = Field(ge=0, le=1)


class Vote(LinkMessage):
    kind: ClassVar[str] = "vote"
    auth: ClassVar[AuthMode] = AuthMode.SINGLE

    block_id: int
    yes: bool
    reason: str = ""


class Decision(LinkMessage):
    """The coordinator's decision on a block (after a vote, or answering a query)."""

    kind: ClassVar[str] = "decision"
    auth: ClassVar[AuthMode] = AuthMode.SINGLE

    block_id: int
    commit: bool


class DecisionQuery(LinkMessage):
    """A participant that voted yes asks, after a reconnect, what was decided."""

    kind: ClassVar[str] = "decision-query"
    auth: ClassVar[AuthMode] = AuthMode.SINGLE

    block_ids: list[int]


class Abort(LinkMessage):
    """Either end abandons the block (an abort-level alarm, a fault, shutdown)."""

    kind: ClassVar[str] = "abort"
    auth: ClassVar[AuthMode] = AuthMode.SINGLE

    block_id: int
    reason: str


class Ready(LinkMessage):
    """After the handshake and any decision queries: this end is ready for blocks."""

    kind: ClassVar[str] = "ready"
    auth: ClassVar[AuthMode] = AuthMode.SINGLE

    pending_queries: int = 0


class CalibrationStart(LinkMessage):
    """Alice is about to send a calibration frame from this public seed."""

    kind: ClassVar[str] = "calibration-start"
    auth: ClassVar[AuthMode] = AuthMode.SINGLE

    seed: str  # hex
    n_slots: int = Field(gt=0)
    attempt: int = Field(ge=0)


class Calibrated(LinkMessage):
    """Bob's result: whether the delay was found (and how clearly)."""

    kind: ClassVar[str] = "calibrated"
    auth: ClassVar[AuthMode] = AuthMode.SINGLE

    found: bool
    peak_z: float
    detections: int
