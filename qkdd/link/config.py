"""Protocol parameters, agreed by both ends in the handshake (DESIGN §4)."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qkdd.postprocessing.finite_key import DecoySettings


class IntensityConfig(BaseModel):
    """Decoy-state intensities μ1 (signal) > μ2 (decoy) > μ3 (vacuum/weak), with probabilities."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mu: tuple[float, float, float] = Field(
        default=(0.5, 0.1, 0.0002), description="mean photon numbers (μ1, μ2, μ3)"
    )
    probabilities: tuple[float, float, float] = Field(
        default=(0.7, 0.2, 0.1), description="probabilities of sending μ1, μ2, μ3"
    )

    @model_validator(mode="after")
    def _ordering(self) -> Self:
        self.decoy_settings()  # the estimator's own check, so the two can never disagree
        return self

    def decoy_settings(self) -> DecoySettings:
        """The intensities as the finite-key estimator takes them."""
        return DecoySettings(mu=self.mu, probabilities=self.probabilities)


class ProtocolConfig(BaseModel):
    """Decoy-state BB84 parameters. Both ends must hold identical values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slot_rate_hz: float = Field(default=1e9, gt=0, description="pulse (slot) rate of the source")
    frame_duration_s: float = Field(default=0.1, gt=0, description="duration of one frame")
    block_pulses: int = Field(
        default=10**11, gt=0, description="N: sent pulses per block (fixed, not count-dependent)"
    )
    p_key_basis: float = Field(default=0.9, gt=0, lt=1, description="p_K: probability of basis K")
    intensities: IntensityConfig = Field(default_factory=IntensityConfig)
    eps_sec: float = Field(default=1e-10, gt=0, lt=1, description="secrecy parameter per block")
    eps_cor: float = Field(default=1e-15, gt=0, lt=1, description="correctness parameter")
    phase_error_tolerance: float = Field(
        default=0.15, gt=0, lt=0.5, description="φ_tol: abort a block whose φ_K exceeds it"
    )
    qber_ceiling: float = Field(default=0.05, gt=0, lt=0.5, description="q0 of the alarm test")
    alarm_window_bits: int = Field(default=512, ge=64, description="n_w of the alarm test")
    alarm_p_value: float = Field(default=1e-9, gt=0, lt=1, description="alarm significance")
    key_size_bits: int = Field(default=256, gt=0, multiple_of=8, description="size of a key")
    decoy_ratio_tolerance: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description=(
            "decoy_ratio_shift warns when the decoy class's gain differs from the one the "
            "signal and weak classes imply by more than this fraction plus the statistical bound"
        ),
    )


class PeerConfig(BaseModel):
    """``[peer]``: the classical channel to the other end of the link (TCP).

    Either role may listen; the other connects. The channel is authenticated
    information-theoretically, so a routable address is allowed here (unlike the
    simulated fibre, which carries Alice's choices in clear).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: bool = Field(description="true: this end listens; false: it connects to host:port")
    host: str = Field(default="127.0.0.1", min_length=1, description="address to bind or reach")
    port: int = Field(default=47700, ge=0, lt=65536, description="TCP port (0: any, for tests)")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="one connection attempt")
    backoff_initial_s: float = Field(default=0.2, gt=0, description="first reconnect delay")
    backoff_max_s: float = Field(default=5.0, gt=0, description="longest reconnect delay")
    receive_timeout_s: float = Field(
        default=30.0, gt=0, description="silence inside a block after which the peer is lost"
    )
    consumer_slots: tuple[str, ...] = Field(
        default=("default",),
        min_length=1,
        description="consumer slot names, identical at both ends (checked in the handshake)",
    )

    @model_validator(mode="after")
    def _backoff(self) -> Self:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be at least backoff_initial_s")
        return self
