"""The ``[simulation]`` section: channel, receiver, detectors, eavesdropper and seed (DESIGN §3).

Both roles carry the same section (the handshake compares it); each role
derives its own random stream from ``seed`` and its role, so Alice's and
Bob's draws are never the same stream. Without a seed the OS CSPRNG seeds
both streams and a run cannot be repeated.
"""

from __future__ import annotations

import enum
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class BasisChoice(enum.StrEnum):
    """How Bob picks his measurement basis."""

    ACTIVE = "active"  # a modulator driven by Bob's random source; 2 detectors
    PASSIVE = (
        "passive"  # a beam splitter; 4 detectors, cross-basis double clicks get a random basis
    )


class EveModel(enum.StrEnum):
    """Eavesdroppers of DESIGN §3, named as there (``--eve MODEL[:f]``)."""

    NONE = "none"
    INTERCEPT_RESEND = "intercept-resend"
    BIASED_INTERCEPT_RESEND = "biased-intercept-resend"
    PNS = "pns"
    BLINDING = "blinding"


class EveSpec(BaseModel):
    """An eavesdropper and the fraction f of slots it acts on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: EveModel = Field(default=EveModel.NONE, description="eavesdropper model")
    fraction: float = Field(default=1.0, ge=0, le=1, description="f: fraction of slots attacked")

    @classmethod
    def parse(cls, text: str) -> EveSpec:
        """``MODEL`` or ``MODEL:f`` as on the command line."""
        name, _, frac = text.strip().partition(":")
        try:
            model = EveModel(name)
        except ValueError:
            known = ", ".join(m.value for m in EveModel)
            raise ValueError(f"unknown eavesdropper {name!r} (known: {known})") from None
        if not frac:
            return cls(model=model)
        try:
            fraction = float(frac)
        except ValueError:
            raise ValueError(f"eavesdropper fraction {frac!r} is not a number") from None
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"eavesdropper fraction {fraction} must lie in [0, 1]")
        return cls(model=model, fraction=fraction)

    @property
    def active(self) -> bool:
        return self.model is not EveModel.NONE and self.fraction > 0

    def __str__(self) -> str:
        if self.model is EveModel.NONE:
            return "none"
        return f"{self.model.value}:{self.fraction:g}"


class ChannelConfig(BaseModel):
    """The fibre between Alice and Bob."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    distance_km: float = Field(default=50.0, ge=0, le=1000, description="fibre length")
    attenuation_db_per_km: float = Field(default=0.2, ge=0, le=10, description="fibre loss α")
    extra_loss_db: float = Field(default=0.0, ge=0, le=100, description="connectors, splices")
    delay_ns_per_km: float = Field(
        default=4.9, gt=0, le=10, description="propagation delay per km (group index / c)"
    )
    cable_offset_ns: float = Field(
        default=0.0, ge=0, description="unknown extra delay (patch cords, electronics)"
    )
    misalignment: float = Field(
        default=0.005, ge=0, le=0.5, description="e_d: polarisation/phase misalignment"
    )
    misalignment_drift_per_sqrt_s: float = Field(
        default=0.0, ge=0, description="random-walk rate of e_d (0: no drift)"
    )
    timing_drift_ps_per_sqrt_s: float = Field(
        default=0.0, ge=0, description="random-walk rate of the arrival time (0: no drift)"
    )


class DetectorsConfig(BaseModel):
    """Bob's detectors: one value for all, or one per detector.

    Detector order: active [bit 0, bit 1]; passive [K0, K1, T0, T1]. Detector
    ``j`` appears on tagger channel ``j + 1``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    efficiency: float | list[float] = Field(default=0.1, description="detection efficiency")
    dark_count: float | list[float] = Field(
        default=6e-7, description="dark-count probability per detector per slot"
    )
    afterpulse: float | list[float] = Field(
        default=0.0, description="probability that an avalanche leaves an afterpulse"
    )
    afterpulse_decay_ns: float = Field(
        default=10.0, gt=0, description="mean delay of an afterpulse (memory of the trap)"
    )
    jitter_ps: float | list[float] = Field(default=50.0, description="timing jitter (rms)")
    dead_time_ns: float = Field(
        default=0.0, ge=0, description="common dead time: any click blanks all detectors"
    )

    @field_validator("efficiency", "dark_count", "afterpulse")
    @classmethod
    def _probabilities(cls, value: float | list[float]) -> float | list[float]:
        values = value if isinstance(value, list) else [value]
        if not values or any(not 0.0 <= v <= 1.0 for v in values):
            raise ValueError("must lie in [0, 1] (one value or one per detector)")
        return value

    @field_validator("jitter_ps")
    @classmethod
    def _jitter(cls, value: float | list[float]) -> float | list[float]:
        values = value if isinstance(value, list) else [value]
        if not values or any(v < 0 for v in values):
            raise ValueError("must be non-negative")
        return value

    def per_detector(self, name: str, count: int) -> tuple[float, ...]:
        """The field ``name`` as one value per detector."""
        value = getattr(self, name)
        if isinstance(value, list):
            if len(value) != count:
                raise ValueError(f"{name}: {count} detectors need {count} values")
            return tuple(float(v) for v in value)
        return (float(value),) * count


class ReceiverConfig(BaseModel):
    """Bob's receiver optics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    basis_choice: BasisChoice = Field(
        default=BasisChoice.ACTIVE, description="active (default) or passive basis choice"
    )
    optics_efficiency: float = Field(
        default=1.0, ge=0, le=1, description="Bob's optics before the detectors"
    )

    @property
    def detectors(self) -> int:
        return 2 if self.basis_choice is BasisChoice.ACTIVE else 4


class SimulationConfig(BaseModel):
    """Parameters of the simulated link, identical in both roles' configs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int | None = Field(
        default=None, ge=0, description="makes a run repeatable; absent: the OS CSPRNG"
    )
    pace: bool = Field(
        default=False, description="pace the simulated source to the protocol's slot clock"
    )
    fibre: str = Field(
        default="unix",
        pattern=r"^(unix|tcp|in-process)$",
        description="simulated fibre between the roles: unix socket, loopback tcp, in-process",
    )
    fibre_path: str | None = Field(
        default=None, description="Unix socket path or loopback port of the simulated fibre"
    )
    channel: ChannelConfig = Field(default_factory=ChannelConfig)
    receiver: ReceiverConfig = Field(default_factory=ReceiverConfig)
    detectors: DetectorsConfig = Field(default_factory=DetectorsConfig)
    eavesdropper: EveSpec = Field(default_factory=EveSpec)

    @model_validator(mode="after")
    def _tcp_fibre_has_a_port(self) -> Self:
        if self.fibre == "tcp":
            port = (self.fibre_path or "").rpartition(":")[2]
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    "fibre_path: a tcp fibre needs the loopback port both ends use (e.g. 47001)"
                )
        return self

    @model_validator(mode="after")
    def _detector_lists_fit(self) -> Self:
        count = self.receiver.detectors
        for name in ("efficiency", "dark_count", "afterpulse", "jitter_ps"):
            value = getattr(self.detectors, name)
            if isinstance(value, list) and len(value) != count:
                raise ValueError(
                    f"detectors.{name}: a {self.receiver.basis_choice.value} receiver has "
                    f"{count} detectors, so give one value or {count}"
                )
        return self
