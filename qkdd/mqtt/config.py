"""``[mqtt]``: how a node reaches its broker and delivers keys; ``[[consumers]]`` slots."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class MqttTls(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path = Field(description="CA bundle that signed the broker certificate")
    cert_file: Path | None = Field(default=None, description="client certificate")
    key_file: Path | None = Field(default=None, description="client private key")


class MqttConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=1883, gt=0, lt=65536)
    protocol: Literal["5", "3.1.1"] = "5"
    base_topic: str = Field(default="qkd", pattern=r"^[^#+]+$")
    client_id: str | None = None
    username: str | None = None
    password: SecretStr | None = Field(default=None, description="prefer password_file")
    password_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    tls: MqttTls | None = None
    plaintext_keys: bool = Field(
        default=False,
        description="publish keys unsealed (trusted lab hosts only; loopback or TLS broker)",
    )
    plaintext_keys_auto_ack: bool = Field(
        default=False,
        description="with plaintext_keys: count the broker's PUBACK as delivery (logged)",
    )
    republish_interval_s: float = Field(
        default=30.0, gt=0, le=3600, description="resend unacknowledged keys this often"
    )
    outbox_limit: int = Field(
        default=100_000,
        gt=0,
        description="undelivered keys at which key production pauses (warning store_full)",
    )

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.plaintext_keys and self.tls is None and not is_loopback(self.host):
            raise ValueError(
                "plaintext_keys is refused towards a broker that is neither loopback nor TLS"
            )
        if self.plaintext_keys_auto_ack and not self.plaintext_keys:
            raise ValueError("plaintext_keys_auto_ack needs plaintext_keys = true")
        return self

    def password_value(self) -> str | None:
        """The password from ``password`` or the first line of ``password_file``."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text().splitlines()[0].strip()
        return None


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConsumerSlot(BaseModel):
    """A key consumer slot, named alike at both ends of the link (checked in the handshake).

    Key i of a block goes to slot i mod (number of slots); each end registers its local
    consumer of the slot with ``qkdd consumer add NAME``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="slot name")
