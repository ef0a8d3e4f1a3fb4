"""The click-only simulator against the exact model and the photon-level reference (z-scores)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qkdd.physics.expected import LinkPhysics, expected_statistics
from qkdd.physics.link import LinkParameters, draw_pattern, role_rng
from qkdd.physics.simulator import ClickSimulator, measure, reference_simulate

from .physics_helpers import Z_MAX, assert_agrees, physics, z_scores

EFFECTS = ["off", "dark", "misalignment", "mismatch", "afterpulse", "dead", "all"]
EVES = ["intercept-resend", "biased-intercept-resend", "pns", "blinding"]


def _fast(phys: LinkPhysics, slots: int, seed: int, frames: int = 1):  # type: ignore[no-untyped-def]
    sim = ClickSimulator(phys, np.random.default_rng(seed))
    total = measure(sim.run(slots), phys.bob_key_probability)
    for _ in range(frames - 1):
        total = total + measure(sim.run(slots), phys.bob_key_probability)
    return total


@pytest.mark.parametrize("distance_km", [0.0, 50.0])
@pytest.mark.parametrize("effects", EFFECTS)
def test_fast_simulator_matches_the_exact_model(distance_km: float, effects: str) -> None:
    phys = physics(distance_km, effects=effects)
    checked = assert_agrees(_fast(phys, 10**7, seed=11), expected_statistics(phys), effects)
    assert checked >= 6  # the gains at least; QBERs too where errors are expected


@pytest.mark.parametrize("eve", EVES)
def test_fast_simulator_matches_each_eavesdropper(eve: str) -> None:
    phys = physics(25.0, effects="all", eve=eve, eve_fraction=0.8)
    assert_agrees(_fast(phys, 10**7, seed=12), expected_statistics(phys), eve)


def test_passive_receiver_with_every_effect() -> None:
    phys = physics(10.0, effects="all", passive=True)
    assert_agrees(_fast(phys, 10**7, seed=13), expected_statistics(phys), "passive")


def test_the_comparison_can_fail_dead_time_and_afterpulses_are_visible() -> None:
    # the same measurement against a model without the effect must be far off
    phys = physics(0.0, effects="all")
    measured = _fast(phys, 10**7, seed=14)
    for wrong in (
        dataclasses.replace(phys, dead_time_slots=0),
        dataclasses.replace(phys, afterpulse=(0.0, 0.0)),
        dataclasses.replace(phys, misalignment=0.0),
    ):
        worst = max(abs(z) for _name, z in z_scores(measured, expected_statistics(wrong)))
        assert worst > 10 * Z_MAX


# A noisy, lossy link where every effect shows within 3·10^4 slots of the slow reference.
NOISY = LinkPhysics(
    mu=(0.6, 0.2, 0.01),
    p_class=(0.5, 0.3, 0.2),
    p_key=0.6,
    eta_channel=0.5,
    efficiency=(0.5, 0.4),
    dark_count=(1e-2, 2e-2),
    misalignment=0.04,
    afterpulse=(0.1, 0.2),
    afterpulse_memory=0.7,
    dead_time_slots=3,
)
NOISY_PASSIVE = dataclasses.replace(
    NOISY,
    passive=True,
    efficiency=(0.5, 0.4, 0.45, 0.5),
    dark_count=(1e-2, 2e-2, 1e-2, 5e-3),
    afterpulse=(0.1, 0.2, 0.1, 0.05),
)


@pytest.mark.parametrize(
    "phys",
    [
        NOISY,
        NOISY_PASSIVE,
        dataclasses.replace(NOISY, eve="intercept-resend", eve_fraction=0.7),
        dataclasses.replace(NOISY, eve="pns", eta_channel=0.05),
        dataclasses.replace(NOISY, eve="blinding"),
    ],
    ids=["active", "passive", "intercept-resend", "pns", "blinding"],
)
def test_photon_level_reference_matches_the_exact_model(phys: LinkPhysics) -> None:
    measured = measure(
        reference_simulate(phys, 30_000, np.random.default_rng(3)), phys.bob_key_probability
    )
    assert_agrees(measured, expected_statistics(phys), "reference")


def test_a_prepared_pattern_gives_the_same_statistics_and_alices_choices() -> None:
    phys = physics(0.0, effects="all")
    link = LinkParameters(p_key=phys.p_key, mu=phys.mu, p_class=phys.p_class)
    pattern = draw_pattern(role_rng(5, "alice"), 4 * 10**6, link)
    sim = ClickSimulator(phys, role_rng(5, "bob"))
    frame = sim.run(len(pattern), pattern)
    assert np.array_equal(frame.alice_basis, pattern.basis[frame.slot])
    assert np.array_equal(frame.intensity, pattern.intensity[frame.slot])
    assert frame.sent.sum() == len(pattern)
    assert_agrees(measure(frame, phys.bob_key_probability), expected_statistics(phys), "pattern")


def test_dead_time_holds_across_frame_boundaries() -> None:
    phys = physics(0.0, effects="all")
    sim = ClickSimulator(phys, np.random.default_rng(8))
    slots, offset = [], 0
    for _ in range(50):
        frame = sim.run(997)
        slots.append(frame.slot + offset)
        offset += 997
    gaps = np.diff(np.concatenate(slots))
    assert gaps.min() == phys.dead_time_slots + 1


def test_a_seed_repeats_a_run_and_roles_get_different_streams() -> None:
    phys = physics(0.0, effects="all")
    a = ClickSimulator(phys, role_rng(42, "bob")).run(10**5)
    b = ClickSimulator(phys, role_rng(42, "bob")).run(10**5)
    assert np.array_equal(a.slot, b.slot) and np.array_equal(a.bob_bit, b.bob_bit)
    alice = role_rng(42, "alice").integers(0, 2**62, 4)
    bob = role_rng(42, "bob").integers(0, 2**62, 4)
    assert not np.array_equal(alice, bob)
    # seedless: the OS CSPRNG, a different stream each time
    assert not np.array_equal(role_rng(None, "bob").integers(0, 2**62, 4), bob)


def test_repr_hides_alices_choices() -> None:
    frame = ClickSimulator(physics(0.0), np.random.default_rng(1)).run(1000)
    text = repr(frame)
    assert "alice" not in text and "intensity" not in text and text.startswith("<FrameDetections")


# --- the long sweep (CI runs it with -m slow) -------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("distance_km", [0.0, 25.0, 50.0, 75.0, 100.0, 125.0, 150.0])
@pytest.mark.parametrize("passive", [False, True])
def test_sweep_distances_effects_and_eavesdroppers(distance_km: float, passive: bool) -> None:
    slots = int(2e7 * 10 ** (0.02 * distance_km))  # about as many detections at every distance
    for effects in EFFECTS:
        phys = physics(distance_km, effects=effects, passive=passive)
        assert_agrees(_fast(phys, slots, seed=21), expected_statistics(phys), f"{effects}")
    for eve in EVES:
        for f in (1.0, 0.3):
            phys = physics(distance_km, effects="all", passive=passive, eve=eve, eve_fraction=f)
            assert_agrees(_fast(phys, slots, seed=22), expected_statistics(phys), f"{eve}:{f}")


# long afterpulse memory and a dead time of many slots: the chain's stationary state matters
NOISY_LONG_MEMORY = dataclasses.replace(NOISY, afterpulse_memory=0.95, dead_time_slots=15)


@pytest.mark.slow
@pytest.mark.parametrize("eve", ["none", *EVES])
@pytest.mark.parametrize(
    "base", [NOISY, NOISY_PASSIVE, NOISY_LONG_MEMORY], ids=["active", "passive", "long-memory"]
)
def test_sweep_reference_per_eavesdropper(eve: str, base: LinkPhysics) -> None:
    phys = dataclasses.replace(base, eve=eve, eve_fraction=0.8)
    measured = measure(
        reference_simulate(phys, 150_000, np.random.default_rng(4)), phys.bob_key_probability
    )
    assert_agrees(measured, expected_statistics(phys), f"reference {eve}")


def test_a_dead_time_longer_than_a_frame_carries_over() -> None:
    phys = dataclasses.replace(physics(0.0, effects="off"), dead_time_slots=5000)
    sim = ClickSimulator(phys, np.random.default_rng(9))
    slots, offset = [], 0
    for _ in range(40):
        frame = sim.run(700)
        assert frame.sent.sum() == 700
        slots.append(frame.slot + offset)
        offset += 700
    all_slots = np.concatenate(slots)
    assert len(all_slots) >= 3
    assert np.diff(all_slots).min() >= 5001
