"""``[mqtt]``: how a node reaches its broker."""

from __future__ import annotations

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

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self
