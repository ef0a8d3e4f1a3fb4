"""Configuration of one instrument: ``[instruments.<name>]`` in a node config."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pyvisa import rname

from qkdd.instruments.interfaces import InstrumentClass


class Backend(enum.StrEnum):
    """Which implementation serves an instrument."""

    HARDWARE = "hardware"
    SIMULATED = "simulated"
    AUTO = "auto"  # hardware if it answers, else the simulated twin (loudly)


class TransportKind(enum.StrEnum):
    VISA = "visa"
    SERIAL = "serial"
    TCP = "tcp"
    SDK = "sdk"
    DEVICE = "device"


_SERIAL_URL_SCHEMES = ("loop://", "socket://", "rfc2217://", "spy://", "hwgrep://", "alt://")
_HOST_PORT = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class TransportAddress:
    """A parsed instrument address. The string form is what the config holds.

    * ``USB0::0x1313::0x804A::M00406458::INSTR`` (anything with ``::``): a VISA resource
    * ``tcp://HOST:PORT``: a raw TCP socket speaking line-terminated commands
    * ``serial:/dev/ttyUSB0`` or ``serial:loop://``: pyserial (a device or a pyserial URL)
    * ``sdk:`` or ``sdk:SERIALNUMBER``: a vendor SDK, optionally one unit by serial number
    * ``device:/dev/qrandom0``: a character device the instrument's kernel driver exposes
    """

    kind: TransportKind
    target: str
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> TransportAddress:
        text = text.strip()
        if text.startswith("tcp://"):
            match = _HOST_PORT.match(text)
            if match is None:
                raise ValueError("a TCP address is tcp://HOST:PORT")
            port = int(match["port"])
            if not 0 < port < 65536:
                raise ValueError(f"TCP port {port} is out of range 1-65535")
            return cls(TransportKind.TCP, match["host"].strip("[]"), port)
        if text.startswith("serial:"):
            target = text.removeprefix("serial:")
            if not (target.startswith("/dev/") or target.startswith(_SERIAL_URL_SCHEMES)):
                raise ValueError(
                    "a serial address is serial:/dev/DEVICE or serial: followed by a pyserial "
                    "URL (loop://, socket://HOST:PORT, rfc2217://HOST:PORT)"
                )
            return cls(TransportKind.SERIAL, target)
        if text.startswith("device:"):
            target = text.removeprefix("device:")
            if not target.startswith("/"):
                raise ValueError("a device address is device:/ABSOLUTE/PATH")
            return cls(TransportKind.DEVICE, target)
        if text.startswith("sdk:"):
            return cls(TransportKind.SDK, text.removeprefix("sdk:"))
        if "::" in text:
            try:
                rname.parse_resource_name(text)
            except rname.InvalidResourceName as exc:
                raise ValueError(f"not a valid VISA resource name: {exc}") from None
            return cls(TransportKind.VISA, text)
        raise ValueError(
            "an address is a VISA resource (USB0::...::INSTR, TCPIP0::HOST::INSTR, "
            "ASRL/dev/ttyUSB0::INSTR), tcp://HOST:PORT, serial:/dev/DEVICE, device:/dev/NODE "
            "or sdk:[SERIAL]"
        )

    def __str__(self) -> str:
        if self.kind is TransportKind.TCP:
            host = f"[{self.target}]" if ":" in self.target else self.target
            return f"tcp://{host}:{self.port}"
        if self.kind is TransportKind.VISA:
            return self.target
        return f"{self.kind.value}:{self.target}"


class SerialSettings(BaseModel):
    """Line settings for serial instruments (ignored by other transports)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    baudrate: int = Field(default=9600, gt=0, description="bits per second")
    bytesize: int = Field(default=8, ge=5, le=8, description="data bits")
    parity: str = Field(default="N", pattern="^[NEOMS]$", description="N, E, O, M or S")
    stopbits: float = Field(default=1, description="1, 1.5 or 2")
    rtscts: bool = Field(default=False, description="RTS/CTS hardware flow control")


class InstrumentConfig(BaseModel):
    """One instrument of the node."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    kind: InstrumentClass = Field(alias="class", description="instrument class")
    driver: str = Field(
        default="simulated",
        min_length=1,
        description="registry name of the hardware driver (see `qkdd devices --drivers`)",
    )
    backend: Backend = Field(
        default=Backend.HARDWARE, description="hardware, simulated, or auto (fall back)"
    )
    address: str | None = Field(default=None, description="transport address of the hardware")
    visa_library: str = Field(
        default="@py",
        description='pyvisa backend: "@py" (pyvisa-py), "@ivi" (vendor VISA), or "@sim" '
        "(the instrument models shipped with qkdd, for dry runs)",
    )
    serial: SerialSettings = Field(default_factory=SerialSettings)
    timeout_s: float = Field(default=2.0, gt=0, le=60, description="transport timeout per reply")
    required: bool = Field(default=True, description="the node cannot run without it")
    options: dict[str, Any] = Field(default_factory=dict, description="driver-specific options")

    @field_validator("address")
    @classmethod
    def _address_parses(cls, value: str | None) -> str | None:
        if value is not None:
            TransportAddress.parse(value)
        return value

    @field_validator("visa_library")
    @classmethod
    def _visa_library_known(cls, value: str) -> str:
        if value in ("@py", "@ivi", "@sim") or value.endswith("@sim"):
            return value
        raise ValueError('use "@py", "@ivi", "@sim" or "MODELS.yaml@sim"')

    @property
    def transport_address(self) -> TransportAddress | None:
        return None if self.address is None else TransportAddress.parse(self.address)
