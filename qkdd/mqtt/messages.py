"""Payloads on the MQTT topics (DESIGN §5): versioned pydantic models subscribers can import.

Every payload is one JSON object with a ``schema`` field naming its model and
version (``qkdd.status/1`` ...). A subscriber validates with
``StatusMessage.model_validate_json(payload)``; ``qkdd schema`` prints the JSON
Schema of each. Telemetry models ignore unknown fields (a newer daemon may add
some); inputs the daemon acts on (acknowledgements, commands) forbid them.

A zero-length payload on ``…/alarm`` is the broker-side removal of the retained
alarm once the last one cleared: skip it.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from qkdd.link.alarms import AlarmKind, AlarmLevel

SCHEMA_VERSION: Final = 1
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _b64decode(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise ValueError("not standard base64") from exc
    return value


Base64Bytes = Annotated[
    bytes,
    BeforeValidator(_b64decode),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str),
    Field(json_schema_extra={"contentEncoding": "base64", "type": "string"}),
]
"""Bytes carried as standard base64 (RFC 4648 §4, with padding)."""


class _Payload(BaseModel):
    """Common base: ``schema`` names model and version; JSON via :meth:`to_json`."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    SCHEMA: ClassVar[str] = ""  # overridden per model

    schema_id: str = Field(default="", alias="schema")  # filled in per model

    @model_validator(mode="before")
    @classmethod
    def _default_schema(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "schema" not in data and "schema_id" not in data:
                return {**data, "schema": cls.SCHEMA}
            given = data.get("schema", data.get("schema_id"))
            if given != cls.SCHEMA:  # say this first: the other fields cannot fit either
                raise ValueError(f"schema is {given!r}, expected {cls.SCHEMA!r}")
        return data

    @model_validator(mode="after")
    def _check_schema(self) -> Self:
        if self.schema_id != self.SCHEMA:
            raise ValueError(f"schema is {self.schema_id!r}, expected {self.SCHEMA!r}")
        return self

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON with the ``schema`` field first."""
        data = self.model_dump(mode="json", by_alias=True)
        ordered = {"schema": data.pop("schema"), **data}
        return json.dumps(ordered, separators=(",", ":")).encode()


class StatusMessage(_Payload):
    """``…/links/<link>/status`` (QoS 1, retained; the Last Will says online false)."""

    SCHEMA: ClassVar[str] = f"qkdd.status/{SCHEMA_VERSION}"

    node: str
    link: str
    role: Literal["alice", "bob"]
    state: str = Field(description="link state (LinkState name), UNKNOWN in the Last Will")
    online: bool
    simulated: bool = Field(description="true when any instrument of the link is simulated")
    versions: dict[str, str] = Field(description="qkdd, protocol and payload schema versions")
    reason: str = ""
    store_full: bool = False
    time: str = Field(default_factory=now_utc)


class QberMessage(_Payload):
    """``…/links/<link>/qber`` per frame (QoS 0, not retained)."""

    SCHEMA: ClassVar[str] = f"qkdd.qber/{SCHEMA_VERSION}"

    node: str
    link: str
    frame: int = Field(ge=0)
    block: int | None = None
    qber: float = Field(ge=0, le=1, description="QBER of the alarm window (test basis)")
    qber_bound: float = Field(
        ge=0, le=1, description="one-sided lower confidence bound on the window QBER"
    )
    window_bits: int = Field(ge=0)
    test_bits: int | None = Field(default=None, ge=0, description="test-basis bits this frame")
    test_errors: int | None = Field(default=None, ge=0)
    detections: int | None = Field(default=None, ge=0)
    gains: dict[str, float] = Field(default_factory=dict, description="gain per intensity class")
    sifted_bits: int = Field(ge=0)
    rates: dict[str, float] = Field(default_factory=dict, description="count and key rates, /s")
    simulated: bool = False
    time: str = Field(default_factory=now_utc)


class ActiveAlarm(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: AlarmKind
    level: AlarmLevel
    values: dict[str, float | int] = Field(default_factory=dict)
    since: str


class AlarmMessage(_Payload):
    """``…/links/<link>/alarm`` (QoS 1): one event, raised or cleared. Retained while any
    alarm of the link is active (``active_alarms`` lists them all); the last clear is
    published unretained and the retained message removed."""

    SCHEMA: ClassVar[str] = f"qkdd.alarm/{SCHEMA_VERSION}"

    node: str
    link: str
    kind: AlarmKind
    level: AlarmLevel
    values: dict[str, float | int] = Field(default_factory=dict)
    active: bool
    active_alarms: list[ActiveAlarm] = Field(default_factory=list)
    time: str = Field(default_factory=now_utc)

    @model_validator(mode="after")
    def _level_matches_kind(self) -> Self:
        if self.level is not self.kind.level:
            raise ValueError(f"{self.kind} is a {self.kind.level} alarm")
        return self


class KeyMetadata(BaseModel):
    """What a key message says about the key besides its bits."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    link: str = Field(pattern=_NAME)
    slot: str = Field(pattern=_NAME)
    key_id: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00]+$")
    bits: int = Field(gt=0)
    block: int = Field(ge=0)
    qber: float = Field(ge=0, le=1)
    eps_total: float = Field(ge=0)
    simulated: bool
    created: str


class SealedKeyMessage(_Payload, KeyMetadata):
    """``…/links/<link>/keys/<slot>`` (QoS 1, never retained): the key sealed to the slot's
    consumer (ChaCha20-Poly1305; see ``qkdd.mqtt.sealing`` for the exact format)."""

    SCHEMA: ClassVar[str] = f"qkdd.key/{SCHEMA_VERSION}"

    sealing: Literal["chacha20poly1305-hkdf-sha256-v1"] = "chacha20poly1305-hkdf-sha256-v1"
    nonce: Base64Bytes = Field(description="96-bit nonce, base64")
    ciphertext: Base64Bytes = Field(description="sealed key bytes plus the 16-byte tag, base64")

    @model_validator(mode="after")
    def _sizes(self) -> Self:
        if len(self.nonce) != 12:
            raise ValueError("nonce is 12 bytes")
        if len(self.ciphertext) != (self.bits + 7) // 8 + 16:
            raise ValueError("ciphertext length does not match bits")
        return self


class PlaintextKeyMessage(_Payload, KeyMetadata):
    """Same topic with ``mqtt.plaintext_keys = true`` (trusted lab hosts only): the key in
    clear, hex."""

    SCHEMA: ClassVar[str] = f"qkdd.plaintext-key/{SCHEMA_VERSION}"

    key_hex: str = Field(pattern=r"^[0-9a-f]*$", repr=False)


class AckMessage(_Payload):
    """``…/links/<link>/keys/<slot>/ack`` (QoS 1), from the consumer: the key id and a tag
    over it under the slot's derived key (HMAC-SHA256, see ``qkdd.mqtt.sealing``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    SCHEMA: ClassVar[str] = f"qkdd.ack/{SCHEMA_VERSION}"

    key_id: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00]+$")
    tag: Base64Bytes = Field(description="HMAC-SHA256 acknowledgement tag, base64")


CommandName = Literal["pause", "resume", "recalibrate", "status", "eve"]


class CommandMessage(_Payload):
    """``…/links/<link>/cmd`` (QoS 1). MQTT 5: reply on the response topic with the
    correlation data; MQTT 3.1.1 (or no response topic): reply on ``…/cmd/reply`` with
    ``request_id``. ``eve`` exists only when simulation is allowed."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    SCHEMA: ClassVar[str] = f"qkdd.command/{SCHEMA_VERSION}"

    command: CommandName
    request_id: str | None = Field(default=None, max_length=128)
    eve_model: (
        Literal["intercept-resend", "biased-intercept-resend", "pns", "blinding", "off"] | None
    ) = Field(default=None, description="eve: the eavesdropper model of DESIGN §3, or off")
    eve_fraction: float | None = Field(default=None, ge=0, le=1)
    reason: str = Field(default="", max_length=200)

    @model_validator(mode="after")
    def _eve_arguments(self) -> Self:
        if self.command == "eve" and self.eve_model is None:
            raise ValueError("eve needs eve_model (a model name or off)")
        if self.command != "eve" and (self.eve_model is not None or self.eve_fraction is not None):
            raise ValueError("eve_model and eve_fraction belong to the eve command")
        return self


class CommandReply(_Payload):
    """The answer to a command: ``ok`` with a result, or an error that changed nothing."""

    SCHEMA: ClassVar[str] = f"qkdd.command-reply/{SCHEMA_VERSION}"

    node: str
    link: str
    request_id: str | None = None
    command: str | None = None
    ok: bool
    error: str | None = None
    result: dict[str, Any] = Field(default_factory=dict)
    time: str = Field(default_factory=now_utc)


PAYLOAD_MODELS: Final[dict[str, type[_Payload]]] = {
    "status": StatusMessage,
    "qber": QberMessage,
    "alarm": AlarmMessage,
    "key": SealedKeyMessage,
    "plaintext-key": PlaintextKeyMessage,
    "ack": AckMessage,
    "command": CommandMessage,
    "command-reply": CommandReply,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every payload, by short name."""
    schemas = {}
    for name, model in PAYLOAD_MODELS.items():
        schema = model.model_json_schema(by_alias=True, mode="serialization")
        schema["properties"]["schema"] = {"const": model.SCHEMA, "type": "string"}
        schema["required"] = ["schema", *(r for r in schema.get("required", []) if r != "schema")]
        schema["$id"] = f"urn:qkdd:{model.SCHEMA}"
        schemas[name] = schema
    return schemas
