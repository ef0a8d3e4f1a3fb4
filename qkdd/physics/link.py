"""The simulated link end to end: Alice's source, the fibre's physics, Bob's receiver.

Pure (numpy, no I/O): the instrument twins and the simulated-fibre transport
call into it. Alice's side draws frame patterns; Bob's side turns prepared
frames into detections and then into time tags exactly as a tagger would
deliver them (channel, timestamp in ps), with the fibre's delay, the unknown
cable offset, timing drift and jitter. The eavesdropper acts on the light in
the fibre, so it lives with the receiver's physics and can be switched while
the link runs.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from qkdd.frames import FramePattern
from qkdd.instruments.interfaces import TAG_DTYPE
from qkdd.physics.config import EveModel, EveSpec, SimulationConfig
from qkdd.physics.expected import LinkPhysics, expected_statistics, fibre_transmittance
from qkdd.physics.simulator import ClickSimulator, FrameDetections

ROLE_CODES = {"alice": 1, "bob": 2, "eve": 3}

TagArray = npt.NDArray[np.void]


def role_rng(seed: int | None, role: str) -> np.random.Generator:
    """The random stream of one role: derived from the shared seed and the role, never shared.

    Without a seed the OS CSPRNG seeds the stream (numpy's SeedSequence reads it).
    """
    if role not in ROLE_CODES:
        raise ValueError(f"unknown role {role!r}")
    seq = np.random.SeedSequence(seed, spawn_key=(ROLE_CODES[role],))
    return np.random.default_rng(seq)


@dataclass(frozen=True, slots=True)
class LinkParameters:
    """Protocol values the physics needs (from ``[protocol]``), kept free of the link package."""

    slot_rate_hz: float = 1e9
    p_key: float = 0.9
    mu: tuple[float, float, float] = (0.5, 0.1, 0.0002)
    p_class: tuple[float, float, float] = (0.7, 0.2, 0.1)


def physics_from_config(
    sim: SimulationConfig, link: LinkParameters, eve: EveSpec | None = None
) -> LinkPhysics:
    """Resolve the ``[simulation]`` section into per-slot model parameters."""
    ch, det = sim.channel, sim.detectors
    d = sim.receiver.detectors
    period_ns = 1e9 / link.slot_rate_hz
    eff = det.per_detector("efficiency", d)
    optics = sim.receiver.optics_efficiency
    spec = sim.eavesdropper if eve is None else eve
    return LinkPhysics(
        mu=link.mu,
        p_class=link.p_class,
        p_key=link.p_key,
        eta_channel=fibre_transmittance(ch.attenuation_db_per_km, ch.distance_km, ch.extra_loss_db),
        efficiency=tuple(optics * e for e in eff),
        dark_count=det.per_detector("dark_count", d),
        misalignment=ch.misalignment,
        afterpulse=det.per_detector("afterpulse", d),
        afterpulse_memory=math.exp(-period_ns / det.afterpulse_decay_ns),
        dead_time_slots=round(det.dead_time_ns / period_ns),
        passive=sim.receiver.basis_choice.value == "passive",
        eve=spec.model.value,
        eve_fraction=spec.fraction,
    )


def draw_pattern(rng: np.random.Generator, n_slots: int, link: LinkParameters) -> FramePattern:
    """Alice's per-slot basis (K with p_K), bit and intensity class from her random stream."""
    u = rng.random(n_slots, dtype=np.float32)
    basis = (u >= link.p_key).astype(np.uint8)
    bit = rng.integers(0, 2, n_slots, dtype=np.uint8)
    v = rng.random(n_slots, dtype=np.float32)
    c1 = link.p_class[0]
    intensity = (v >= c1).astype(np.uint8) + (v >= c1 + link.p_class[1]).astype(np.uint8)
    return FramePattern(basis=basis, bit=bit, intensity=intensity)


def pattern_from_random_bytes(data: bytes, n_slots: int, link: LinkParameters) -> FramePattern:
    """Alice's choices from raw bytes of the node's random source: 5 bytes per slot.

    16 bits decide the basis and 16 the class (thresholds p·2^16, so each
    probability is rounded to 1/65536), one byte's low bit the bit value.
    """
    if len(data) < 5 * n_slots:
        raise ValueError(f"{n_slots} slots need {5 * n_slots} random bytes, got {len(data)}")
    raw = np.frombuffer(data, dtype=np.uint8, count=5 * n_slots).reshape(n_slots, 5)
    u_basis = raw[:, 0].astype(np.uint32) << 8 | raw[:, 1]
    u_class = raw[:, 2].astype(np.uint32) << 8 | raw[:, 3]
    t1 = round(link.p_class[0] * 65536)
    t2 = round((link.p_class[0] + link.p_class[1]) * 65536)
    return FramePattern(
        basis=(u_basis >= round(link.p_key * 65536)).astype(np.uint8),
        bit=(raw[:, 4] & 1).astype(np.uint8),
        intensity=((u_class >= t1).astype(np.uint8) + (u_class >= t2).astype(np.uint8)),
    )


@dataclass(frozen=True, slots=True)
class PreparedFrame:
    """What the simulated fibre carries: Alice's prepared pulses of one frame.

    ``first_slot`` counts slots since the source started, so the receiver
    places the frame on the common clock.
    """

    index: int
    first_slot: int
    pattern: FramePattern

    def __repr__(self) -> str:
        return f"<PreparedFrame {self.index} slots={len(self.pattern)}>"


_HEADER = struct.Struct("!4sQQQ")
_MAGIC = b"QKDF"


def encode_frame(frame: PreparedFrame) -> bytes:
    """Wire form: a header and four bit planes (basis, bit, class low, class high)."""
    p = frame.pattern
    planes = [p.basis, p.bit, p.intensity & 1, p.intensity >> 1]
    body = b"".join(np.packbits(plane).tobytes() for plane in planes)
    return _HEADER.pack(_MAGIC, frame.index, frame.first_slot, len(p)) + body


def frame_size(header: bytes) -> int:
    """Body length announced by a frame header."""
    magic, _index, _first, n = _HEADER.unpack(header)
    if magic != _MAGIC:
        raise ValueError("not a simulated-fibre frame")
    return 4 * ((int(n) + 7) // 8)


HEADER_SIZE = _HEADER.size


def decode_frame(data: bytes) -> PreparedFrame:
    """Inverse of :func:`encode_frame`."""
    magic, index, first, n = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError("not a simulated-fibre frame")
    plane = (n + 7) // 8
    body = np.frombuffer(data, dtype=np.uint8, offset=HEADER_SIZE)
    if len(body) != 4 * plane:
        raise ValueError("truncated simulated-fibre frame")
    bits = [np.unpackbits(body[i * plane : (i + 1) * plane], count=n) for i in range(4)]
    intensity = (bits[2] | (bits[3] << 1)).astype(np.uint8)
    pattern = FramePattern(basis=bits[0], bit=bits[1], intensity=intensity)
    return PreparedFrame(index=index, first_slot=first, pattern=pattern)


@dataclass(slots=True)
class Drift:
    """Random walks of the arrival time (ps) and of the misalignment e_d, per elapsed second."""

    timing_ps_per_sqrt_s: float = 0.0
    misalignment_per_sqrt_s: float = 0.0
    timing_ps: float = 0.0
    misalignment_offset: float = 0.0

    def step(self, seconds: float, rng: np.random.Generator) -> None:
        if seconds <= 0:
            return
        scale = math.sqrt(seconds)
        if self.timing_ps_per_sqrt_s:
            self.timing_ps += float(rng.normal(0.0, self.timing_ps_per_sqrt_s * scale))
        if self.misalignment_per_sqrt_s:
            self.misalignment_offset += float(rng.normal(0.0, self.misalignment_per_sqrt_s * scale))


def fibre_delay_ps(sim: SimulationConfig) -> float:
    """True propagation delay: distance × delay per km plus the unknown cable offset."""
    ch = sim.channel
    return (ch.distance_km * ch.delay_ns_per_km + ch.cable_offset_ns) * 1e3


def tags_from_detections(
    det: FrameDetections,
    *,
    first_slot: int,
    period_ps: float,
    delay_ps: float,
    jitter_ps: tuple[float, ...],
    rng: np.random.Generator,
) -> TagArray:
    """Tags as a tagger reports them: one per clicked detector (channel j + 1), in time order."""
    d = len(jitter_ps)
    slots, chans = [], []
    for j in range(d):
        hit = (det.pattern >> j & 1).astype(bool)
        slots.append(det.slot[hit])
        chans.append(np.full(int(hit.sum()), j + 1, dtype=np.int16))
    slot = np.concatenate(slots) if slots else np.empty(0, np.int64)
    chan = np.concatenate(chans) if chans else np.empty(0, np.int16)
    sigma = np.asarray(jitter_ps)[chan - 1] if len(chan) else np.empty(0)
    offset = delay_ps + rng.normal(0.0, 1.0, len(slot)) * sigma
    tags = np.empty(len(slot), dtype=TAG_DTYPE)
    tags["channel"] = chan
    if float(period_ps).is_integer():
        # integer slot times: exact however long the link has run (float64 would lose ps)
        base = (first_slot + slot) * int(period_ps)
        tags["timestamp_ps"] = base + np.rint(offset).astype(np.int64)
    else:
        tags["timestamp_ps"] = np.rint((first_slot + slot) * period_ps + offset).astype(np.int64)
    order = np.argsort(tags["timestamp_ps"], kind="stable")
    out: TagArray = tags[order]
    return out


def slots_from_tags(tags: TagArray, *, period_ps: float, delay_ps: float) -> npt.NDArray[np.int64]:
    """The slot of each tag, given the delay (what calibration finds)."""
    out: npt.NDArray[np.int64] = np.rint(
        (tags["timestamp_ps"].astype(np.float64) - delay_ps) / period_ps
    ).astype(np.int64)
    return out


@dataclass(slots=True)
class Receiver:
    """Bob's simulated receiver: the fibre's physics, the eavesdropper and the detectors.

    :meth:`receive` turns one prepared frame into detections and time tags.
    It runs in Bob's process but hands Bob's protocol code only tags and
    Bob's own basis choices; Alice's choices stay inside the physics.
    """

    sim: SimulationConfig
    link: LinkParameters
    rng: np.random.Generator = field(repr=False)
    drift: Drift = field(init=False)
    eve: EveSpec = field(init=False)
    _clicks: ClickSimulator = field(init=False, repr=False)
    _base: LinkPhysics = field(init=False, repr=False)
    _bases: tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ch = self.sim.channel
        self.drift = Drift(ch.timing_drift_ps_per_sqrt_s, ch.misalignment_drift_per_sqrt_s)
        self.eve = self.sim.eavesdropper
        self._base = physics_from_config(self.sim, self.link, self.eve)
        self._clicks = ClickSimulator(self._base, self.rng)
        self._bases = (np.empty(0, np.int64), np.empty(0, np.uint8))

    @property
    def physics(self) -> LinkPhysics:
        """The physics in force now (drifted misalignment, current eavesdropper)."""
        return self._clicks.physics

    @property
    def period_ps(self) -> float:
        return 1e12 / self.link.slot_rate_hz

    @property
    def delay_ps(self) -> float:
        """The true arrival delay now, timing drift included."""
        return fibre_delay_ps(self.sim) + self.drift.timing_ps

    def set_eavesdropper(self, eve: EveSpec | str) -> None:
        """Switch the eavesdropper while the link runs (``"none"`` removes it)."""
        spec = EveSpec.parse(eve) if isinstance(eve, str) else eve
        self.eve = spec
        self._base = replace(self._base, eve=spec.model.value, eve_fraction=spec.fraction)
        self._apply()

    def _apply(self) -> None:
        e_d = min(0.5, max(0.0, self.sim.channel.misalignment + self.drift.misalignment_offset))
        self._clicks.set_physics(replace(self._base, misalignment=e_d))

    def receive(self, frame: PreparedFrame) -> tuple[FrameDetections, TagArray]:
        """Detections of one frame and the tags the tagger reports for them."""
        n = len(frame.pattern)
        if self.drift.misalignment_per_sqrt_s:
            self._apply()
        det = self._clicks.run(n, frame.pattern)
        tags = tags_from_detections(
            det,
            first_slot=frame.first_slot,
            period_ps=self.period_ps,
            delay_ps=self.delay_ps,
            jitter_ps=self.sim.detectors.per_detector("jitter_ps", self.sim.receiver.detectors),
            rng=self.rng,
        )
        self.drift.step(n / self.link.slot_rate_hz, self.rng)
        self._bases = (det.slot + frame.first_slot, det.bob_basis)
        return det, tags

    def bob_basis_record(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        """Bob's measurement basis at the detected slots of the last frame (absolute slots).

        Bob's own record: his random source drove the active basis choice (with a
        passive receiver, the clicked detector's arm). Contains nothing of Alice's.
        """
        return self._bases

    def photocurrent_a(self) -> float:
        """The detectors' bias/photocurrent monitor: µA-level dark current, mA when blinded."""
        base = 1.0e-6
        if self.eve.model is EveModel.BLINDING:
            return base + 2.0e-3 * self.eve.fraction
        return base

    def click_rates_per_slot(self) -> npt.NDArray[np.float64]:
        """Expected registered clicks per detector per slot (for count-rate readings)."""
        return expected_statistics(self.physics).detector_clicks
