"""Simulate only the clicks: the fast simulator, and a slow photon-by-photon reference.

The fast simulator never visits a slot where nothing happens. While the set P
of detectors holding a pending afterpulse stays the same, every live slot
clicks independently with probability h(σ, P) ≤ h_max(P), so candidate slots
are a geometric stream at rate h_max(P) and each is accepted with probability
h(σ, P)/h_max(P) (thinning); the click pattern is then drawn from its exact
conditional distribution (:func:`qkdd.physics.expected.live_slot_patterns`).
Its cost grows with the detections, not the slots.

Two ways to get the settings σ of a candidate slot: from a frame pattern that
Alice prepared (what the simulated fibre carries), or drawn on the spot from
the setting probabilities (``qkdd simulate``, benchmarks) — the slots are
independent, so both give the same statistics.

:func:`reference_simulate` walks every slot and every photon with none of the
tables, as an independent check of the fast simulator and the closed forms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from numba import njit

from qkdd.frames import FramePattern
from qkdd.physics.expected import (
    EVE_BIASED_INTERCEPT_RESEND,
    EVE_BLINDING,
    EVE_INTERCEPT_RESEND,
    EVE_NONE,
    EVE_PNS,
    N_CLASSES,
    ExpectedStatistics,
    LinkPhysics,
    blinding_trigger_probability,
    expected_statistics,
    live_slot_patterns,
    pns_parameters,
    setting_table,
)

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True, eq=False)
class FrameDetections:
    """Registered detections of one frame, in slot order.

    ``pattern[i]`` is the bit mask of the detectors that clicked (a double
    click has two bits); ``bob_basis``/``bob_bit`` are Bob's squashed result.
    ``alice`` holds Alice's (basis, bit, class) at the detections and
    ``sent[k, a]`` the pulses sent per class and basis: the simulator's ground
    truth, never given to Bob's protocol code.
    """

    n_slots: int
    slot: I64
    pattern: U8
    bob_basis: U8
    bob_bit: U8
    alice_basis: U8 = field(repr=False)
    alice_bit: U8 = field(repr=False)
    intensity: U8 = field(repr=False)
    sent: I64 = field(repr=False)

    def __len__(self) -> int:
        return len(self.slot)

    def __repr__(self) -> str:
        return f"<FrameDetections slots={self.n_slots} detections={len(self)}>"


@njit(cache=True)
def _click_kernel(  # noqa: PLR0917 (a numba kernel takes plain arrays)
    n_slots: int,
    start: int,
    pending: int,
    pat_basis: U8,
    pat_bit: U8,
    pat_int: U8,
    sigma_cdf: F64,
    p_bob_key: float,
    passive: bool,
    h: F64,
    rate: F64,
    log_miss: F64,
    cdf: F64,
    p_ap: F64,
    survive: float,
    dead: int,
    seed: int,
    out_slot: I64,
    out_z: U8,
    out_b: U8,
    out_y: U8,
    out_a: U8,
    out_x: U8,
    out_k: U8,
) -> tuple[int, int, int]:
    np.random.seed(seed)
    free = pat_basis.shape[0] == 0
    n_patterns = cdf.shape[2]
    d = p_ap.shape[0]
    cap = out_slot.shape[0]
    n = 0
    s = start
    while s < n_slots:
        hm = rate[pending]
        if hm <= 0.0:
            s = n_slots
            break
        if hm < 1.0:
            u = np.random.random()
            s += math.floor(math.log1p(-u) / log_miss[pending])
            if s >= n_slots:
                s = n_slots  # no click before the frame ends (memoryless: nothing to carry)
                break
        b = 0
        if free:
            # the setting of a slot that clicks, drawn from p(σ)·h(σ, P) directly
            found = np.searchsorted(sigma_cdf[pending], np.random.random(), side="right")
            sig = min(int(found), sigma_cdf.shape[1] - 1)
            base = sig if passive else sig // 2
            if not passive:
                b = sig % 2
            a = base // 6
            x = (base // 3) % 2
            k = base % 3
        else:
            a = int(pat_basis[s])
            x = int(pat_bit[s])
            k = int(pat_int[s])
            base = (a * 2 + x) * 3 + k
            if passive:
                sig = base
            else:
                b = 0 if np.random.random() < p_bob_key else 1
                sig = base * 2 + b
            # thinning: candidates come at rate max_σ h(σ, P)
            if np.random.random() * hm >= h[sig, pending]:
                s += 1
                continue
        v = np.random.random()
        z = 1
        while z < n_patterns - 1 and cdf[sig, pending, z] <= v:
            z += 1
        if passive:
            kz = z & 3
            tz = z >> 2
            if kz != 0 and tz != 0:
                b = 0 if np.random.random() < 0.5 else 1
                y = 0 if np.random.random() < 0.5 else 1
            else:
                b = 0 if kz != 0 else 1
                arm = kz if kz != 0 else tz
                y = (0 if np.random.random() < 0.5 else 1) if arm == 3 else arm >> 1
        elif z == 3:
            y = 0 if np.random.random() < 0.5 else 1
        else:
            y = z >> 1
        if n == cap:
            return -1, pending, s
        out_slot[n] = s
        out_z[n] = z
        out_b[n] = b
        out_y[n] = y
        out_a[n] = a
        out_x[n] = x
        out_k[n] = k
        n += 1
        new = 0
        for j in range(d):
            bit = 1 << j
            if z & bit:
                if np.random.random() < p_ap[j]:
                    new |= bit
            elif pending & bit:
                new |= bit
        if dead > 0 and new != 0:
            for j in range(d):
                bit = 1 << j
                if new & bit and np.random.random() >= survive:
                    new &= ~bit
        pending = new
        s += 1 + dead
    return n, pending, s


class ClickSimulator:
    """Bob's receiver: turns frames of prepared pulses into registered detections.

    Carries the detectors' state (pending afterpulses, a dead time running
    past the end of a frame) from one frame to the next. Change the physics
    (an eavesdropper switched on, drifted misalignment) with :meth:`set_physics`.
    """

    def __init__(self, physics: LinkPhysics, rng: np.random.Generator) -> None:
        self._rng = rng
        self.pending = 0
        self.dead_carry = 0
        self.set_physics(physics)

    @property
    def physics(self) -> LinkPhysics:
        return self._physics

    def set_physics(self, physics: LinkPhysics) -> None:
        """Recompute the sampling tables for new physics (cheap: a few hundred numbers)."""
        self._physics = physics
        qt = live_slot_patterns(physics)
        h = 1.0 - qt[:, :, 0]
        hmax = h.max(axis=0)
        cond = qt.copy()
        cond[:, :, 0] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            cond /= h[:, :, None]
        cdf = np.nan_to_num(np.cumsum(cond, axis=2))
        self._h = np.ascontiguousarray(h)
        self._hmax = np.ascontiguousarray(hmax)
        self._cdf = np.ascontiguousarray(cdf)
        # settings drawn at the clicks: p(σ | click, P) ∝ p(σ)·h(σ, P), clicks at rate h̄(P)
        weighted = setting_table(physics).prob[:, None] * h
        self._hbar = np.ascontiguousarray(weighted.sum(axis=0))
        with np.errstate(invalid="ignore", divide="ignore"):
            sigma_cdf = np.nan_to_num(np.cumsum(weighted, axis=0) / self._hbar)
        self._sigma_cdf = np.ascontiguousarray(sigma_cdf.T)
        self._p_ap = np.asarray(physics.effective_afterpulse, dtype=np.float64)
        self._survive = float(physics.afterpulse_memory**physics.dead_time_slots)
        # registered detections per slot, to size the output arrays
        self._rate = float(np.dot(physics.p_class, expected_statistics(physics).gain))

    def run(self, n_slots: int, pattern: FramePattern | None = None) -> FrameDetections:
        """Detections of one frame of ``n_slots`` pulses (Alice's ``pattern`` if given)."""
        phys = self._physics
        if pattern is not None:
            if len(pattern) != n_slots:
                raise ValueError("the frame pattern must have n_slots entries")
            p_basis, p_bit, p_int = pattern.basis, pattern.bit, pattern.intensity
        else:
            p_basis = p_bit = p_int = np.empty(0, dtype=np.uint8)
        if self.dead_carry >= n_slots:  # the whole frame falls in a dead time
            self.dead_carry -= n_slots
            return self._empty(n_slots, pattern)
        expected = self._rate * n_slots
        cap = min(n_slots + 1, int(1.05 * expected + 10.0 * math.sqrt(expected) + 1024))
        seed = int(self._rng.integers(0, 2**31 - 1))
        rate = self._hmax if pattern is not None else self._hbar
        with np.errstate(divide="ignore"):
            log_miss = np.log1p(-np.minimum(rate, 1.0))
        while True:
            slots_out = np.empty(cap, dtype=np.int64)
            out8 = [np.empty(cap, dtype=np.uint8) for _ in range(6)]
            n, pending, nxt = _click_kernel(
                n_slots,
                self.dead_carry,
                self.pending,
                p_basis,
                p_bit,
                p_int,
                self._sigma_cdf,
                phys.bob_key_probability,
                phys.passive,
                self._h,
                rate,
                log_miss,
                self._cdf,
                self._p_ap,
                self._survive,
                phys.dead_time_slots,
                seed,
                slots_out,
                *out8,
            )
            if n >= 0:
                break
            cap *= 2
        self.pending = pending
        self.dead_carry = max(0, nxt - n_slots)  # a dead time running into the next frame
        if pattern is not None:
            counts = _sent_counts(pattern)
            slots = slots_out[:n]
            alice: tuple[U8, U8, U8] = (
                pattern.basis[slots],
                pattern.bit[slots],
                pattern.intensity[slots],
            )
        else:
            p_sent = np.outer(phys.p_class, [phys.p_key, 1.0 - phys.p_key]).ravel()
            counts = self._rng.multinomial(n_slots, p_sent).reshape(N_CLASSES, 2)
            alice = (out8[3][:n].copy(), out8[4][:n].copy(), out8[5][:n].copy())
        return FrameDetections(
            n_slots=n_slots,
            slot=slots_out[:n].copy(),
            pattern=out8[0][:n].copy(),
            bob_basis=out8[1][:n].copy(),
            bob_bit=out8[2][:n].copy(),
            alice_basis=alice[0],
            alice_bit=alice[1],
            intensity=alice[2],
            sent=counts,
        )

    def _empty(self, n_slots: int, pattern: FramePattern | None) -> FrameDetections:
        phys = self._physics
        if pattern is not None:
            counts = _sent_counts(pattern)
        else:
            p_sent = np.outer(phys.p_class, [phys.p_key, 1.0 - phys.p_key]).ravel()
            counts = self._rng.multinomial(n_slots, p_sent).reshape(N_CLASSES, 2)
        none8 = np.empty(0, dtype=np.uint8)
        return FrameDetections(
            n_slots, np.empty(0, dtype=np.int64), none8, none8, none8, none8, none8, none8, counts
        )


def _sent_counts(pattern: FramePattern) -> I64:
    """Pulses sent per class and basis (count_nonzero passes: no wide temporaries)."""
    counts = np.zeros((N_CLASSES, 2), dtype=np.int64)
    for k in range(N_CLASSES):
        in_class = pattern.intensity == k
        t = int(np.count_nonzero(in_class & (pattern.basis == 1)))
        counts[k] = (int(np.count_nonzero(in_class)) - t, t)
    return counts


@dataclass(frozen=True, slots=True)
class MeasuredStatistics:
    """Counts of one or more frames, and the rates :class:`ExpectedStatistics` predicts."""

    sent: I64  # [k, a]
    detections: I64  # [k]
    matched: I64  # [k, β]: Bob's basis = Alice's = β
    errors: I64  # [k, β]
    p_bob_key: float

    @property
    def gain(self) -> F64:
        out: F64 = self.detections / self.sent.sum(axis=1)
        return out

    @property
    def basis_gain(self) -> F64:
        p_bob = np.array([self.p_bob_key, 1.0 - self.p_bob_key])
        out: F64 = self.matched / self.sent / p_bob
        return out

    @property
    def basis_qber(self) -> F64:
        with np.errstate(invalid="ignore", divide="ignore"):
            out: F64 = self.errors / self.matched
        return out

    @property
    def qber(self) -> F64:
        with np.errstate(invalid="ignore", divide="ignore"):
            out: F64 = self.errors.sum(axis=1) / self.matched.sum(axis=1)
        return out

    def __add__(self, other: MeasuredStatistics) -> MeasuredStatistics:
        return MeasuredStatistics(
            sent=self.sent + other.sent,
            detections=self.detections + other.detections,
            matched=self.matched + other.matched,
            errors=self.errors + other.errors,
            p_bob_key=self.p_bob_key,
        )

    def z_scores(self, expected: ExpectedStatistics) -> dict[str, F64]:
        """(measured − expected)/σ for gain, basis gain and basis QBER (binomial σ)."""
        n_k = self.sent.sum(axis=1)
        p = expected.gain
        z_gain = (self.detections - n_k * p) / np.sqrt(np.maximum(n_k * p * (1 - p), 1e-300))
        p_bob = np.array([self.p_bob_key, 1.0 - self.p_bob_key])
        pm = expected.basis_gain * p_bob
        z_bg = (self.matched - self.sent * pm) / np.sqrt(
            np.maximum(self.sent * pm * (1 - pm), 1e-300)
        )
        e = np.nan_to_num(expected.basis_qber)
        z_q = (self.errors - self.matched * e) / np.sqrt(
            np.maximum(self.matched * e * (1 - e), 1e-300)
        )
        z_q = np.where(self.matched > 0, z_q, 0.0)
        return {"gain": z_gain, "basis_gain": z_bg, "basis_qber": z_q}


def measure(frame: FrameDetections, p_bob_key: float) -> MeasuredStatistics:
    """Count detections, basis-matched detections and errors per class and basis."""
    k = frame.intensity.astype(np.int64)
    a = frame.alice_basis.astype(np.int64)
    match = frame.bob_basis == frame.alice_basis
    err = match & (frame.bob_bit != frame.alice_bit)
    detections = np.bincount(k, minlength=N_CLASSES)
    matched = np.bincount(k[match] * 2 + a[match], minlength=2 * N_CLASSES).reshape(N_CLASSES, 2)
    errors = np.bincount(k[err] * 2 + a[err], minlength=2 * N_CLASSES).reshape(N_CLASSES, 2)
    return MeasuredStatistics(
        sent=np.asarray(frame.sent, dtype=np.int64),
        detections=detections.astype(np.int64),
        matched=matched.astype(np.int64),
        errors=errors.astype(np.int64),
        p_bob_key=p_bob_key,
    )


def reference_simulate(
    phys: LinkPhysics, n_slots: int, rng: np.random.Generator
) -> FrameDetections:
    """Slot by slot and photon by photon, without the closed-form tables (small frames only).

    An independent implementation of the same physics: Poisson photon numbers,
    the eavesdropper acting on photons, binomial loss, per-photon misalignment
    and basis routing, dark counts, afterpulses with a geometric delay, the
    common dead time, squashing.
    """
    d = phys.detectors
    eff = np.asarray(phys.efficiency)
    dark = np.asarray(phys.dark_count)
    p_ap = np.asarray(phys.effective_afterpulse)
    f = phys.eve_fraction if phys.eve != EVE_NONE else 0.0
    block, forward = pns_parameters(phys) if phys.eve == EVE_PNS and f > 0 else (0.0, 1.0)
    trigger = blinding_trigger_probability(phys) if phys.eve == EVE_BLINDING and f > 0 else 0.0
    p_bob = phys.bob_key_probability
    out: dict[str, list[int]] = {key: [] for key in ("slot", "z", "b", "y", "a", "x", "k")}
    sent = np.zeros((N_CLASSES, 2), dtype=np.int64)
    pending = np.zeros(d, dtype=bool)
    dead_until = -1
    for s in range(n_slots):
        a = int(rng.random() >= phys.p_key)
        x = int(rng.integers(2))
        k = int(rng.choice(N_CLASSES, p=phys.p_class))
        sent[k, a] += 1
        n = int(rng.poisson(phys.mu[k]))
        attacked = f > 0 and rng.random() < f
        state_basis, state_bit = a, x
        blinded_click = -1
        b_active = int(rng.random() >= p_bob)
        if attacked and phys.eve in (EVE_INTERCEPT_RESEND, EVE_BIASED_INTERCEPT_RESEND):
            n = int(rng.binomial(n, phys.eta_channel))  # Eve sits just before Bob
            q = 0.5 if phys.eve == EVE_INTERCEPT_RESEND else phys.p_key
            state_basis = int(rng.random() >= q)
            if state_basis != a:
                state_bit = int(rng.integers(2))
            at_bob = n
        elif attacked and phys.eve == EVE_PNS:
            if n == 1:
                at_bob = 0 if rng.random() < block else 1
            elif n >= 2:
                at_bob = n - 1 if rng.random() < forward else 0
            else:
                at_bob = 0
        elif attacked and phys.eve == EVE_BLINDING:
            at_bob = 0
            if n >= 1 and rng.random() < trigger:
                beta = int(rng.integers(2))
                y_eve = x if beta == a else int(rng.integers(2))
                if phys.passive:
                    blinded_click = 2 * beta + y_eve
                elif beta == b_active:
                    blinded_click = y_eve
        else:
            at_bob = int(rng.binomial(n, phys.eta_channel))
        clicks = np.zeros(d, dtype=bool)
        for _ in range(at_bob):
            beta = int(rng.random() >= p_bob) if phys.passive else b_active
            if beta == state_basis:
                y = state_bit ^ int(rng.random() < phys.misalignment)
            else:
                y = int(rng.integers(2))
            j = 2 * beta + y if phys.passive else y
            if rng.random() < eff[j]:
                clicks[j] = True
        if attacked and phys.eve == EVE_BLINDING:
            if blinded_click >= 0:
                clicks[blinded_click] = True
        else:
            clicks |= rng.random(d) < dark
        # pending afterpulses fire with probability 1 − r in every slot; in dead slots they are lost
        fire = pending & (rng.random(d) >= phys.afterpulse_memory)
        pending &= ~fire
        if s <= dead_until:
            continue
        clicks |= fire
        if not clicks.any():
            continue
        z = int(sum(1 << j for j in range(d) if clicks[j]))
        if phys.passive:
            kz, tz = z & 3, z >> 2
            if kz and tz:
                b, y = int(rng.integers(2)), int(rng.integers(2))
            else:
                b = 0 if kz else 1
                arm = kz or tz
                y = int(rng.integers(2)) if arm == 3 else arm >> 1
        else:
            b = b_active
            y = int(rng.integers(2)) if z == 3 else z >> 1
        for key, value in zip(out, (s, z, b, y, a, x, k), strict=True):
            out[key].append(value)
        for j in range(d):
            if clicks[j]:
                pending[j] = rng.random() < p_ap[j]
        dead_until = s + phys.dead_time_slots
    u8 = {key: np.array(out[key], dtype=np.uint8) for key in "zbyaxk"}
    return FrameDetections(
        n_slots=n_slots,
        slot=np.array(out["slot"], dtype=np.int64),
        pattern=u8["z"],
        bob_basis=u8["b"],
        bob_bit=u8["y"],
        alice_basis=u8["a"],
        alice_bit=u8["x"],
        intensity=u8["k"],
        sent=sent,
    )
