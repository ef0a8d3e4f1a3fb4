"""Alarms: their kinds and levels, and the windowed QBER test that raises the fastest one.

DESIGN §4. The test-basis bits of every frame (all revealed; the vacuum class
excluded) feed a window of the latest ``n_w`` bits, counted only from bits sent
after the previous alarm cleared. Under the null hypothesis "QBER ≤ q0" an
alarm ``qber_high`` fires when P(≥ observed errors | n_w, q0) ≤ p (10^-9 by
default): an honest link at q0 false-alarms at most once in 1/p windows,
while intercept-resend (QBER ≈ 25 %) is caught by the first full window.
A Bernoulli CUSUM on the same stream drives the warning ``qber_warning``.
Pure numpy/scipy: the link engine feeds it; it does no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import beta, binom, norm

# The kinds, levels and events live in a light module (no scipy) so that the health
# snapshot, the metrics and the config load fast; re-exported here.
from qkdd.link.alarm_kinds import AlarmEvent, AlarmKind, AlarmLevel

__all__ = [
    "AlarmEvent",
    "AlarmKind",
    "AlarmLevel",
    "FrameAlarmResult",
    "QberAlarmTest",
    "alarm_threshold",
    "qber_lower_bound",
]


def alarm_threshold(window_bits: int, qber_ceiling: float, p_value: float) -> int:
    """Least error count k with P(X ≥ k) ≤ p for X ~ Binomial(n_w, q0)."""
    k = int(binom.isf(p_value, window_bits, qber_ceiling))
    while binom.sf(k - 1, window_bits, qber_ceiling) > p_value:  # P(X >= k) too large
        k += 1
    while k > 0 and binom.sf(k - 2, window_bits, qber_ceiling) <= p_value:
        k -= 1
    return k


def qber_lower_bound(errors: int, bits: int, confidence_tail: float) -> float:
    """One-sided Clopper–Pearson lower bound on the QBER at confidence 1 − tail."""
    if errors <= 0:
        return 0.0
    return float(beta.ppf(confidence_tail, errors, bits - errors + 1))


@dataclass
class FrameAlarmResult:
    """What the test saw in one frame."""

    events: list[AlarmEvent]
    window_errors: int  # errors in the latest full window (or so far, if not yet full)
    window_bits: int
    window_qber: float
    window_lower_bound: float
    alarm_active: bool


#: The CUSUM warning clears after this many windows of test bits without a crossing.
WARNING_CLEAR_WINDOWS = 16


class QberAlarmTest:
    """The windowed binomial test and the CUSUM warning over test-basis error bits."""

    def __init__(
        self,
        *,
        window_bits: int = 512,
        qber_ceiling: float = 0.05,
        p_value: float = 1e-9,
        cusum_reference: float | None = None,
        cusum_threshold: float = 12.0,
    ) -> None:
        if not 0 < qber_ceiling < 0.5:
            raise ValueError("the QBER ceiling q0 lies in (0, 0.5)")
        self.window_bits = window_bits
        self.qber_ceiling = qber_ceiling
        self.p_value = p_value
        self.threshold = alarm_threshold(window_bits, qber_ceiling, p_value)
        # CUSUM: log-likelihood ratio of "QBER = q0" against "QBER = q_ref", so it
        # warns on a drift towards the ceiling well before the alarm test fires.
        q_ref = cusum_reference if cusum_reference is not None else qber_ceiling / 2
        if not 0 < q_ref < qber_ceiling:
            raise ValueError("the CUSUM reference lies below the QBER ceiling")
        self._llr_error = math.log(qber_ceiling / q_ref)
        self._llr_correct = math.log((1 - qber_ceiling) / (1 - q_ref))
        self.cusum_threshold = cusum_threshold
        self._cusum = 0.0
        self._recent = np.empty(0, dtype=np.int8)  # at most window_bits - 1 bits carried over
        self.alarm_active = False
        self.warning_active = False
        self._bits_since_warning = 0
        # A drift keeps re-crossing: at a QBER of 4.5 % (ceiling 5 %, reference 2.5 %)
        # about every 2,000 bits; one window would clear and raise it in turn.
        self.warning_clear_bits = WARNING_CLEAR_WINDOWS * window_bits

    def reset(self) -> None:
        """Forget every bit (a fresh start, e.g. after recalibration)."""
        self._recent = np.empty(0, dtype=np.int8)
        self._cusum = 0.0
        self.alarm_active = False
        self.warning_active = False
        self._bits_since_warning = 0

    def observe(self, errors: npt.ArrayLike) -> FrameAlarmResult:
        """Feed one frame's test-basis error indicators (1 = Alice's and Bob's bits differ), in
        the order the bits were sent (vacuum class already excluded)."""
        new = np.asarray(errors, dtype=np.int8)
        if new.ndim != 1 or (new.size and (new.min() < 0 or new.max() > 1)):
            raise ValueError("errors are a 1-D array of 0/1")
        events: list[AlarmEvent] = []
        stream = np.concatenate((self._recent, new))
        n = self.window_bits
        # Windows ending inside the carried-over bits were tested by earlier calls.
        first_end = max(n, self._recent.size + 1)
        while stream.size >= first_end:
            csum = np.concatenate(([0], np.cumsum(stream, dtype=np.int64)))
            ends = np.arange(first_end, stream.size + 1)
            sums = csum[ends] - csum[ends - n]
            # Raising looks for a window at or above the threshold, clearing for one below.
            decisive = sums < self.threshold if self.alarm_active else sums >= self.threshold
            hits = np.flatnonzero(decisive)
            if hits.size == 0:
                break
            errors = int(sums[hits[0]])
            events.append(self._clear(errors) if self.alarm_active else self._raise(errors))
            # Only bits sent after a transition count towards the next one.
            stream = stream[int(ends[hits[0]]) :]
            first_end = n
        last_sum = int(stream[-n:].sum()) if stream.size else 0
        events += self._cusum_step(new)
        self._recent = stream[-(n - 1) :].copy() if n > 1 else stream[:0].copy()
        window = min(stream.size, n)
        return FrameAlarmResult(
            events=events,
            window_errors=last_sum,
            window_bits=window,
            window_qber=last_sum / window if window else 0.0,
            window_lower_bound=qber_lower_bound(last_sum, window, self.p_value) if window else 0.0,
            alarm_active=self.alarm_active,
        )

    def _raise(self, errors: int) -> AlarmEvent:
        self.alarm_active = True
        return AlarmEvent(
            AlarmKind.QBER_HIGH,
            True,
            {
                "window_errors": errors,
                "window_bits": self.window_bits,
                "threshold": self.threshold,
                "qber": errors / self.window_bits,
                "qber_lower_bound": qber_lower_bound(errors, self.window_bits, self.p_value),
                "qber_ceiling": self.qber_ceiling,
            },
        )

    def _clear(self, errors: int) -> AlarmEvent:
        self.alarm_active = False
        return AlarmEvent(
            AlarmKind.QBER_HIGH,
            False,
            {"window_errors": errors, "window_bits": self.window_bits, "threshold": self.threshold},
        )

    @staticmethod
    def _cusum_path(steps: npt.NDArray[np.float64], start: float) -> npt.NDArray[np.float64]:
        """S_n = max(0, S_{n-1} + z_n) from S_0 = start, for every n, without a Python loop."""
        cumulative = np.cumsum(steps)
        return cumulative - np.minimum(np.minimum.accumulate(cumulative), -start)

    def _cusum_step(self, new: npt.NDArray[np.int8]) -> list[AlarmEvent]:
        """Advance the CUSUM; at most one warning per frame, then the statistic restarts.
        The warning clears once ``warning_clear_bits`` bits have passed without one."""
        if new.size == 0:
            return []
        steps = np.where(new == 1, self._llr_error, self._llr_correct)
        path = self._cusum_path(steps, self._cusum)
        crossed = np.flatnonzero(path >= self.cusum_threshold)
        if crossed.size == 0:
            self._cusum = float(path[-1])
            self._bits_since_warning += new.size
            if self.warning_active and self._bits_since_warning >= self.warning_clear_bits:
                self.warning_active = False
                return [
                    AlarmEvent(
                        AlarmKind.QBER_WARNING,
                        False,
                        {"clean_bits": self._bits_since_warning, "cusum": self._cusum},
                    )
                ]
            return []
        rest = steps[crossed[0] + 1 :]
        self._cusum = float(self._cusum_path(rest, 0.0)[-1]) if rest.size else 0.0
        self.warning_active = True
        self._bits_since_warning = int(rest.size)
        return [
            AlarmEvent(
                AlarmKind.QBER_WARNING,
                True,
                {"cusum": float(path[crossed[0]]), "threshold": self.cusum_threshold},
            )
        ]


# -- decoy_ratio_shift: the gains per intensity class against the link's own model ------


def _decoy_prediction(
    gain: tuple[float, float, float], mu: tuple[float, float, float]
) -> tuple[float, float, float] | None:
    """Class-2 gain (μ2) predicted from the signal and weak classes, and its partial
    derivatives in Q1 and Q3; None when the two do not determine a transmittance."""
    q1, _, q3 = gain
    if not 0.0 <= q3 < q1 < 1.0 or mu[0] <= mu[2]:
        return None
    # Q_k = 1 − (1 − Y0)·e^(−η·μ_k): η and Y0 from Q1 and Q3, then Q2. A common factor
    # on every class (dead time, basis sifting) cancels to first order, which is why
    # the ratio, not the absolute gain, is what is tested.
    a = (mu[1] - mu[2]) / (mu[0] - mu[2])  # weight of Q1 in the interpolation exponent
    r1, r3 = 1.0 - q1, 1.0 - q3
    predicted = 1.0 - r1**a * r3 ** (1.0 - a)
    d_q1 = a * r1 ** (a - 1.0) * r3 ** (1.0 - a)
    d_q3 = (1.0 - a) * r1**a * r3 ** (-a)
    return predicted, d_q1, d_q3


def decoy_ratio_check(
    sent_per_class: npt.ArrayLike,
    detected_per_class: npt.ArrayLike,
    mu: tuple[float, float, float],
    *,
    tolerance: float = 0.05,
    p_value: float = 1e-9,
) -> AlarmEvent | None:
    """``decoy_ratio_shift`` when the decoy class's detection/sent ratio disagrees with the
    one the signal and weak classes imply for an honest channel (a photon-number-splitting
    signature), beyond ``tolerance`` (relative: the model's own inaccuracy, afterpulses,
    intensity errors) plus the statistical bound at ``p_value`` (two-sided, normal).

    Returns the warning (``active``) or None when consistent or undecidable.
    """
    sent = np.asarray(sent_per_class, dtype=np.float64)
    det = np.asarray(detected_per_class, dtype=np.float64)
    if sent.shape != (3,) or det.shape != (3,) or bool((sent <= 0).any()):
        return None
    q = det / sent
    prediction = _decoy_prediction((float(q[0]), float(q[1]), float(q[2])), mu)
    if prediction is None:
        return None
    expected, d_q1, d_q3 = prediction
    if expected <= 0.0:
        return None
    # Binomial variances of the three observed gains, propagated (delta method).
    var = (
        expected * (1.0 - expected) / sent[1]
        + d_q1**2 * q[0] * (1.0 - q[0]) / sent[0]
        + d_q3**2 * q[2] * (1.0 - q[2]) / sent[2]
    )
    sigma = math.sqrt(max(var, 0.0))
    z_crit = float(norm.isf(p_value / 2.0))
    deviation = float(q[1]) - expected
    bound = tolerance * expected + z_crit * sigma
    if abs(deviation) <= bound:
        return None
    return AlarmEvent(
        AlarmKind.DECOY_RATIO_SHIFT,
        True,
        {
            "decoy_gain": float(q[1]),
            "expected_decoy_gain": expected,
            "ratio": float(q[1]) / expected,
            "z": deviation / sigma if sigma > 0 else math.inf,
            "tolerance": tolerance,
        },
    )
