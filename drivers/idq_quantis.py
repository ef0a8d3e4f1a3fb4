"""ID Quantique Quantis PCIe quantum random number generator, through its character device.

IDQ's Linux kernel driver exposes each card as ``/dev/qrandomN``; reading it
returns random bytes. Every byte read passes the SP 800-90B continuous health
tests before use; a failure latches the source unhealthy until reconnected,
so a stuck or degraded QRNG can never feed basis choices or hashing seeds.
"""

from __future__ import annotations

import os
from typing import ClassVar

from qkdd.instruments.config import InstrumentConfig, TransportKind
from qkdd.instruments.entropy_health import ContinuousHealthTests, EntropyHealthFailure
from qkdd.instruments.interfaces import (
    DeviceError,
    InstrumentHealth,
    InstrumentUnavailable,
    RandomSource,
)
from qkdd.instruments.registry import HardwareDriver
from qkdd.instruments.session import BlockingWorker


class IdqQuantisDevice(HardwareDriver, RandomSource):
    driver_name = "idq-quantis"
    transports: ClassVar[frozenset[TransportKind]] = frozenset({TransportKind.DEVICE})
    description = "ID Quantique Quantis PCIe QRNG via its /dev/qrandomN character device"

    def __init__(self, name: str, config: InstrumentConfig) -> None:
        super().__init__(name)
        address = config.transport_address
        self._path = address.target if address is not None else "/dev/qrandom0"
        self._worker = BlockingWorker(name, config.timeout_s + 1.0)
        self._min_entropy = float(config.options.get("min_entropy_per_byte", 7.0))
        self._tests = ContinuousHealthTests(self._min_entropy)
        self._fd: int | None = None
        self._failure: str | None = None
        self._bytes_read = 0

    async def connect(self) -> None:
        try:
            self._fd = await self._worker.call(lambda: os.open(self._path, os.O_RDONLY))
        except OSError as exc:
            raise InstrumentUnavailable(
                f"{self.name}: cannot open {self._path}: {exc.strerror}"
            ) from None
        self._tests = ContinuousHealthTests(self._min_entropy)
        self._failure = None

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            await self._worker.call(lambda: os.close(fd))
        self._worker.shutdown()

    async def identity(self) -> str:
        return f"ID Quantique,Quantis,{self._path}"

    def _read_exactly(self, count: int) -> bytearray:
        if self._fd is None:
            raise InstrumentUnavailable(f"{self.name}: not connected")
        out = bytearray()
        while len(out) < count:
            chunk = os.read(self._fd, count - len(out))
            if not chunk:
                raise InstrumentUnavailable(f"{self.name}: {self._path} returned end of file")
            out += chunk
        return out

    async def random_bytes(self, count: int) -> bytearray:
        if self._failure is not None:
            raise DeviceError(f"{self.name}: source disabled after a health-test failure")
        data = await self._worker.call(lambda: self._read_exactly(count))
        try:
            self._tests.check(data)
        except EntropyHealthFailure as exc:
            data[:] = bytes(len(data))  # never hand out (or keep) output of a failed source
            self._failure = str(exc)
            raise DeviceError(f"{self.name}: {exc}") from None
        self._bytes_read += count
        return data

    async def health(self) -> InstrumentHealth:
        return InstrumentHealth(
            healthy=self._fd is not None and self._failure is None,
            detail=self._failure or ("ok" if self._fd is not None else "not connected"),
            readings={
                "bytes_read": self._bytes_read,
                "rct_cutoff": self._tests.rct_cutoff,
                "apt_cutoff": self._tests.apt_cutoff,
            },
        )
