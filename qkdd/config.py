"""Node configuration: one TOML file per link role, validated by pydantic models.

The models of each subsystem live beside it (``qkdd.instruments.config``,
``qkdd.link.config``, ``qkdd.mqtt.config``); this module composes them, adds
the node-level policy checks, and turns every problem into one readable
:class:`ConfigError` that names the file and the dotted key.
"""

from __future__ import annotations

import enum
import tomllib
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from qkdd.instruments.config import Backend, InstrumentConfig
from qkdd.instruments.interfaces import InstrumentClass
from qkdd.link.config import PeerConfig, ProtocolConfig
from qkdd.metrics import MetricsConfig
from qkdd.mqtt.config import ConsumerSlot, MqttConfig
from qkdd.physics.config import SimulationConfig

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Role(enum.StrEnum):
    ALICE = "alice"  # transmitter, and the link's coordinator
    BOB = "bob"  # receiver


#: Instruments a role cannot run without.
REQUIRED_CLASSES: dict[Role, tuple[InstrumentClass, ...]] = {
    Role.ALICE: (
        InstrumentClass.LASER,
        InstrumentClass.STATE_ENCODER,
        InstrumentClass.RANDOM_SOURCE,
    ),
    Role.BOB: (
        InstrumentClass.DETECTOR,
        InstrumentClass.TIME_TAGGER,
        InstrumentClass.RANDOM_SOURCE,
    ),
}


class NodeSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=_NAME, description="node name, unique in the network")
    role: Role = Field(description="alice (transmitter) or bob (receiver)")
    link: str = Field(pattern=_NAME, description="link id, the same at both ends")
    state_dir: Path = Field(
        description="directory of the state store (keys, counters, secrets); "
        "a relative path is taken relative to the config file"
    )
    allow_simulated: bool = Field(
        default=False,
        description="allow simulated instruments (never in production: keys are not secure)",
    )


class LoggingSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    level: str = Field(
        default="info",
        pattern="^(debug|info|warning|error|critical)$",
        description="debug, info, warning, error or critical",
    )
    json_lines: bool | None = Field(
        default=None, alias="json", description="JSON lines (default: when not on a terminal)"
    )


class NodeConfig(BaseModel):
    """The whole config of one node (one role of one link)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: NodeSection
    logging: LoggingSection = Field(default_factory=LoggingSection)
    instruments: dict[str, InstrumentConfig] = Field(default_factory=dict)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    simulation: SimulationConfig | None = Field(
        default=None, description="the simulated link (channel, detectors, eavesdropper, seed)"
    )
    peer: PeerConfig | None = Field(
        default=None, description="the classical channel to the other end (needed by qkdd run)"
    )
    consumers: list[ConsumerSlot] = Field(
        default_factory=list, description="key consumer slots, the same names at both ends"
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig,
        description="Prometheus metrics from the health snapshot (off unless set)",
    )

    @model_validator(mode="after")
    def _node_policy(self) -> Self:
        names = [slot.name for slot in self.consumers]
        if len(set(names)) != len(names):
            raise PydanticCustomError(
                "duplicate_consumers", "consumers: slot names must be unique", {}
            )
        for name, inst in self.instruments.items():
            key = f"instruments.{name}.backend"
            if self.node.allow_simulated:
                continue
            if inst.backend is Backend.SIMULATED:
                raise PydanticCustomError(
                    "simulation_not_allowed",
                    "{key}: simulated, but node.allow_simulated is false",
                    {"key": key},
                )
            if inst.backend is Backend.AUTO and inst.kind.on_quantum_path:
                raise PydanticCustomError(
                    "auto_not_allowed",
                    "{key}: auto may fall back to simulation, which node.allow_simulated = false "
                    "forbids for a {kind} (on the quantum path); use hardware",
                    {"key": key, "kind": inst.kind.value},
                )
        for name, inst in self.instruments.items():
            if inst.backend is not Backend.SIMULATED and inst.driver == "simulated":
                raise PydanticCustomError(
                    "no_driver",
                    "instruments.{name}.driver: backend {backend} needs a hardware driver",
                    {"name": name, "backend": inst.backend.value},
                )
        present = {inst.kind for inst in self.instruments.values()}
        missing = [c.value for c in REQUIRED_CLASSES[self.node.role] if c not in present]
        if missing:
            raise PydanticCustomError(
                "missing_instruments",
                "instruments: a {role} node needs {missing}",
                {"role": self.node.role.value, "missing": ", ".join(missing)},
            )
        return self

    @property
    def simulated(self) -> bool:
        """True when any instrument is configured as simulated (``auto`` is decided at start)."""
        return any(i.backend is Backend.SIMULATED for i in self.instruments.values())


class ConfigError(Exception):
    """A config that cannot be used; the message names the file, the key and the problem."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = Path(path)
        self.problems = problems
        super().__init__(f"{self.path}: " + "; ".join(problems))


def _describe(error: Any) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        message = "unknown key (a typo?)"
    elif kind == "missing":
        message = "missing (required)"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
        given = error.get("input")
        if kind not in ("model_type", "dict_type") and isinstance(given, str | int | float | bool):
            message += f" (got {given!r})"
    if not loc:
        return message
    return f"{loc}: {message}"


def parse_config(data: dict[str, Any], path: Path | str = "<config>") -> NodeConfig:
    """Validate already-parsed TOML data."""
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, [_describe(e) for e in exc.errors()]) from None


def load_config(path: Path | str) -> NodeConfig:
    """Read and validate a node config file. Raises :class:`ConfigError`."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(file, ["no such file"]) from None
    except OSError as exc:
        raise ConfigError(file, [f"cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(file, ["not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, [f"not valid TOML: {exc}"]) from None
    node = data.get("node")
    if isinstance(node, dict) and isinstance(node.get("state_dir"), str):
        state_dir = Path(node["state_dir"])
        if not state_dir.is_absolute():
            node["state_dir"] = str((file.parent / state_dir).resolve())
    return parse_config(data, file)
