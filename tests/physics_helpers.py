"""Shared by the physics tests: scenarios of the simulated link and z-score assertions."""

from __future__ import annotations

import numpy as np

from qkdd.physics.expected import ExpectedStatistics, LinkPhysics, fibre_transmittance
from qkdd.physics.simulator import MeasuredStatistics

#: Gaussian z-scores need a few dozen expected events; below that a count says little.
MIN_EXPECTED = 40
Z_MAX = 5.0


def physics(
    distance_km: float = 0.0,
    *,
    effects: str = "off",
    eve: str = "none",
    eve_fraction: float = 1.0,
    passive: bool = False,
    p_key: float = 0.7,
) -> LinkPhysics:
    """A link at ``distance_km`` with one effect, all of them (``"all"``) or none (``"off"``)."""
    d = 4 if passive else 2
    on = (
        {effects}
        if effects != "all"
        else {"dark", "misalignment", "mismatch", "afterpulse", "dead"}
    )
    efficiency = (0.25, 0.2, 0.22, 0.18)[:d] if "mismatch" in on else (0.2,) * d
    return LinkPhysics(
        mu=(0.5, 0.1, 0.0002),
        p_class=(0.6, 0.25, 0.15),
        p_key=p_key,
        eta_channel=fibre_transmittance(0.2, distance_km),
        efficiency=efficiency,
        dark_count=(1e-5, 3e-5, 2e-5, 1e-5)[:d] if "dark" in on else (0.0,) * d,
        misalignment=0.02 if "misalignment" in on else 0.0,
        afterpulse=(0.05, 0.08, 0.05, 0.06)[:d] if "afterpulse" in on else (0.0,) * d,
        afterpulse_memory=0.98 if "afterpulse" in on else 0.0,
        dead_time_slots=20 if "dead" in on else 0,
        passive=passive,
        eve=eve,
        eve_fraction=eve_fraction,
    )


def z_scores(measured: MeasuredStatistics, expected: ExpectedStatistics) -> list[tuple[str, float]]:
    """Every z-score whose expected count is large enough to be Gaussian, with its name."""
    out = []
    n_k = measured.sent.sum(axis=1)
    p_bob = np.array([measured.p_bob_key, 1.0 - measured.p_bob_key])
    z = measured.z_scores(expected)
    for k in range(3):
        if n_k[k] * expected.gain[k] >= MIN_EXPECTED:
            out.append((f"gain[{k}]", float(z["gain"][k])))
        for b in range(2):
            matched = measured.sent[k, b] * expected.basis_gain[k, b] * p_bob[b]
            if matched >= MIN_EXPECTED:
                out.append((f"basis_gain[{k},{b}]", float(z["basis_gain"][k, b])))
            e = float(np.nan_to_num(expected.basis_qber[k, b]))
            if matched * min(e, 1 - e) >= MIN_EXPECTED:
                out.append((f"basis_qber[{k},{b}]", float(z["basis_qber"][k, b])))
    return out


def assert_agrees(measured: MeasuredStatistics, expected: ExpectedStatistics, what: str) -> int:
    """Measured gains and QBERs within Z_MAX σ of the model; returns how many were checked."""
    scores = z_scores(measured, expected)
    assert scores, f"{what}: nothing to compare (too few events)"
    bad = [(name, round(z, 2)) for name, z in scores if abs(z) > Z_MAX]
    assert not bad, f"{what}: z-scores beyond {Z_MAX}: {bad}"
    impossible = np.nan_to_num(expected.basis_qber) == 0.0
    assert not np.any(measured.errors[impossible]), f"{what}: errors where the model has none"
    return len(scores)
