"""The exact model of the simulated link: textbook limits, effect by effect, attack signatures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdd.physics.expected import (
    LinkPhysics,
    click_patterns,
    exact_error_gain,
    exact_gain,
    expected_statistics,
    live_slot_patterns,
    pending_distribution,
    pns_parameters,
    textbook_error_gain,
    textbook_gain,
)

from .physics_helpers import physics

MU = np.array([0.5, 0.1, 0.0002])


def test_every_effect_off_gives_the_textbook_forms_exactly() -> None:
    # no dark counts, no misalignment, no afterpulses, no dead time: Q = 1 − e^(−ημ), E = 0
    phys = physics(50.0, effects="off")
    eta = phys.eta_channel * phys.efficiency[0]
    stats = expected_statistics(phys)
    assert np.allclose(stats.gain, textbook_gain(MU, eta, 0.0), rtol=1e-12)
    assert np.allclose(stats.basis_gain, stats.gain[:, None], rtol=1e-12)
    assert np.all(stats.qber == 0.0)
    assert stats.live_fraction == 1.0


@pytest.mark.parametrize("distance_km", [0.0, 50.0, 100.0, 150.0])
def test_dark_counts_and_misalignment_reduce_to_the_textbook_with_y0(distance_km: float) -> None:
    p_dc, e_d = 1e-7, 0.01
    phys = LinkPhysics(
        mu=(0.5, 0.1, 0.0002),
        eta_channel=10 ** (-0.02 * distance_km),
        efficiency=(0.1, 0.1),
        dark_count=(p_dc, p_dc),
        misalignment=e_d,
    )
    eta = phys.eta_channel * 0.1
    stats = expected_statistics(phys)
    # the exact forms of the keyrate model, per detector p_dc
    assert np.allclose(stats.gain, exact_gain(MU, eta, p_dc), rtol=1e-9)
    assert np.allclose(stats.qber * stats.gain, exact_error_gain(MU, eta, p_dc, e_d), rtol=1e-9)
    # and the textbook Q ≈ Y0 + 1 − e^(−ημ), E·Q ≈ Y0/2 + e_d(1 − e^(−ημ)) with Y0 = 2 p_dc
    y0 = 2 * p_dc
    assert np.allclose(stats.gain, textbook_gain(MU, eta, y0), rtol=2e-3)
    assert np.allclose(
        stats.qber[:2] * stats.gain[:2], textbook_error_gain(MU[:2], eta, y0, e_d), rtol=2e-2
    )


def test_dead_time_scales_every_class_by_the_live_fraction() -> None:
    base = physics(0.0, effects="dark")
    dead = LinkPhysics(**{**_fields(base), "dead_time_slots": 50})
    s0, s1 = expected_statistics(base), expected_statistics(dead)
    mean_gain = float(np.dot(base.p_class, s0.gain))
    live = 1.0 / (1.0 + 50 * mean_gain)
    assert s1.live_fraction == pytest.approx(live, rel=1e-12)
    assert np.allclose(s1.gain, s0.gain * live, rtol=1e-12)
    assert np.allclose(s1.qber, s0.qber, rtol=1e-12)  # common dead time: no bit bias


def test_afterpulses_add_a_class_independent_background_with_error_one_half() -> None:
    base = physics(50.0, effects="off")
    p_ap = 0.04
    ap = LinkPhysics(**{**_fields(base), "afterpulse": (p_ap, p_ap), "afterpulse_memory": 0.5})
    s0, s1 = expected_statistics(base), expected_statistics(ap)
    extra = s1.gain - s0.gain
    mean_gain = float(np.dot(base.p_class, s0.gain))
    # first order: every click leaves p_ap afterpulses that land in a later slot of any class
    assert np.allclose(extra, p_ap * mean_gain, rtol=0.05)
    # the vacuum class is dominated by it (security review A.1)
    assert extra[2] > 10 * s0.gain[2]
    # an afterpulse lands on the detector that clicked before, whatever the new bit: error ½
    assert s1.qber[2] == pytest.approx(0.5, abs=0.01)


def test_passive_receiver_has_twice_the_dark_detectors_and_cross_clicks() -> None:
    p_dc = 1e-4
    active = LinkPhysics(eta_channel=0.0, efficiency=(0.1,) * 2, dark_count=(p_dc,) * 2)
    passive = LinkPhysics(
        eta_channel=0.0, efficiency=(0.1,) * 4, dark_count=(p_dc,) * 4,
        afterpulse=(0.0,) * 4, passive=True,
    )  # fmt: skip
    assert expected_statistics(active).gain[0] == pytest.approx(1 - (1 - p_dc) ** 2)
    stats = expected_statistics(passive)
    assert stats.gain[0] == pytest.approx(1 - (1 - p_dc) ** 4)
    # K-basis detectors clicking with T-basis ones: random basis, random bit
    assert np.allclose(stats.qber, 0.5)


def test_uniform_intercept_resend_moves_both_bases_as_design_says() -> None:
    e_d = 0.01
    for f in (1.0, 0.4):
        phys = LinkPhysics(
            eta_channel=1e-3, efficiency=(0.1,) * 2, dark_count=(0.0,) * 2,
            misalignment=e_d, eve="intercept-resend", eve_fraction=f,
        )  # fmt: skip
        stats = expected_statistics(phys)
        expected = e_d + f * (0.25 - e_d / 2)
        assert np.allclose(stats.basis_qber[:2], expected, rtol=1e-3)
        honest = expected_statistics(LinkPhysics(**{**_fields(phys), "eve": "none"}))
        assert np.allclose(stats.gain, honest.gain, rtol=1e-12)  # invisible in the gain


def test_biased_intercept_resend_leaves_the_key_basis_near_baseline() -> None:
    e_d, p_key = 0.01, 0.9
    phys = LinkPhysics(
        p_key=p_key, eta_channel=1e-3, efficiency=(0.1,) * 2, dark_count=(0.0,) * 2,
        misalignment=e_d, eve="biased-intercept-resend",
    )  # fmt: skip
    q = expected_statistics(phys).basis_qber[0]
    assert q[0] == pytest.approx(p_key * e_d + (1 - p_key) / 2, rel=1e-3)  # ≈ 0.05 + e_d
    assert q[1] == pytest.approx((1 - p_key) * e_d + p_key / 2, rel=1e-3)  # ≈ 0.45


def test_pns_keeps_qber_and_signal_gain_and_shifts_the_decoy_ratio() -> None:
    honest = physics(50.0, effects="misalignment")
    pns = LinkPhysics(**{**_fields(honest), "eve": "pns"})
    h, a = expected_statistics(honest), expected_statistics(pns)
    assert a.gain[0] == pytest.approx(h.gain[0], rel=1e-9)
    # only the photon statistics of the multi-photon forwards differ: 1e-4 relative
    assert a.qber[0] == pytest.approx(h.qber[0], rel=1e-3)
    ratio_h, ratio_a = h.gain[1] / h.gain[0], a.gain[1] / a.gain[0]
    assert ratio_a < 0.6 * ratio_h  # security review A.5: Q_μ2/Q_μ1 about halves at 50 km
    # beyond a few km, Eve blocks every single photon and some multi-photon pulses ...
    block, forward = pns_parameters(pns)
    assert block == 1.0 and 0.0 < forward < 1.0
    # ... close in, she can only block part of the single photons (a partial PNS)
    block, forward = pns_parameters(LinkPhysics(**{**_fields(pns), "eta_channel": 0.5}))
    assert 0.0 < block < 1.0 and forward == 1.0


def test_blinding_removes_dark_counts_and_errors() -> None:
    honest = physics(50.0, effects="all")
    blind = LinkPhysics(**{**_fields(honest), "eve": "blinding", "mu": (0.5, 0.1, 0.0)})
    h, b = expected_statistics(honest), expected_statistics(blind)
    assert np.all(b.qber[:2] == 0.0)
    assert b.gain[2] == 0.0 < h.gain[2]  # the vacuum class goes dark
    assert b.gain[0] == pytest.approx(h.gain[0], rel=0.05)  # signal gain matched (dead time aside)


@settings(max_examples=40, deadline=None)
@given(
    eta=st.floats(0.0, 1.0),
    e_d=st.floats(0.0, 0.5),
    dark=st.floats(0.0, 0.2),
    ap=st.floats(0.0, 0.5),
    memory=st.floats(0.0, 0.99),
    dead=st.integers(0, 30),
    passive=st.booleans(),
    eve=st.sampled_from(["none", "intercept-resend", "biased-intercept-resend", "pns", "blinding"]),
)
def test_tables_are_probability_distributions(  # noqa: PLR0917
    eta: float,
    e_d: float,
    dark: float,
    ap: float,
    memory: float,
    dead: int,
    passive: bool,
    eve: str,
) -> None:
    d = 4 if passive else 2
    phys = LinkPhysics(
        eta_channel=eta, efficiency=(0.3,) * d, dark_count=(dark,) * d, misalignment=e_d,
        afterpulse=(ap,) * d, afterpulse_memory=memory, dead_time_slots=dead,
        passive=passive, eve=eve,
    )  # fmt: skip
    m = click_patterns(phys)
    assert np.all(m >= 0) and np.allclose(m.sum(axis=1), 1.0)
    qt = live_slot_patterns(phys, m)
    assert np.all(qt >= -1e-15) and np.allclose(qt.sum(axis=2), 1.0)
    pi = pending_distribution(phys, qt)
    assert np.all(pi >= 0) and math.isclose(pi.sum(), 1.0)
    stats = expected_statistics(phys)
    assert 0.0 < stats.live_fraction <= 1.0
    assert np.all((stats.gain >= 0) & (stats.gain <= 1))
    finite = stats.qber[np.isfinite(stats.qber)]
    assert np.all((finite >= 0) & (finite <= 1))


def _fields(phys: LinkPhysics) -> dict[str, object]:
    return {name: getattr(phys, name) for name in phys.__slots__}  # type: ignore[attr-defined]


@pytest.mark.parametrize("distance_km", [0.0, 80.0, 160.0])
def test_keyrate_link_model_and_the_simulated_link_agree(distance_km: float) -> None:
    from qkdd.physics.expected import LinkModel, expected_counts, link_physics

    link = LinkModel(eta_bob=0.1, dark_count=6e-7, misalignment=5e-3)
    counts = expected_counts(link, distance_km, MU)
    phys = link_physics(
        link, distance_km, mu=(0.5, 0.1, 0.0002), p_class=(0.7, 0.2, 0.1), p_key=0.8
    )
    stats = expected_statistics(phys)
    assert np.allclose(stats.gain, counts.gain, rtol=1e-9)
    assert np.allclose(stats.qber, counts.qber, rtol=1e-9)
    # the simulated link adds what the keyrate forms leave out: a dead time costs gain
    dead = link_physics(link, distance_km, mu=(0.5, 0.1, 0.0002), p_class=(0.7, 0.2, 0.1),
                        p_key=0.8, dead_time_slots=100)  # fmt: skip
    assert np.all(expected_statistics(dead).gain < stats.gain)
    with pytest.raises(ValueError, match="textbook"):
        link_physics(LinkModel(y0=1e-6, model="textbook"), 0.0, mu=(0.5, 0.1, 0.0),
                     p_class=(0.7, 0.2, 0.1), p_key=0.8)  # fmt: skip
