"""The Quantis character-device QRNG driver and the SP 800-90B continuous health tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from qkdd.drivers.idq_quantis import IdqQuantisDevice
from qkdd.instruments.entropy_health import (
    APT_WINDOW,
    ContinuousHealthTests,
    EntropyHealthFailure,
    proportion_cutoff,
    repetition_cutoff,
)
from qkdd.instruments.interfaces import DeviceError

from .conftest import instrument_config


def test_cutoffs_match_sp800_90b_tables() -> None:
    # SP 800-90B Table 2 (W = 512, α = 2^-20) and the RCT formula.
    assert [proportion_cutoff(h, -20) for h in (0.5, 1, 2, 4, 8)] == [410, 311, 177, 62, 13]
    assert repetition_cutoff(1.0, -20) == 21
    assert repetition_cutoff(7.0) == 7


def test_random_bytes_pass_and_a_run_across_reads_is_caught() -> None:
    tests = ContinuousHealthTests(7.0)
    tests.check(os.urandom(1 << 16))
    tests.check(bytes(4) + os.urandom(64) + bytes(3))
    with pytest.raises(EntropyHealthFailure, match="repetition count"):
        tests.check(bytes(4))  # 3 + 4 zeros straddle the read boundary


def test_biased_source_trips_the_proportion_test() -> None:
    rng = np.random.default_rng(3)
    biased = np.where(rng.random(4 * APT_WINDOW) < 0.2, 0x55, rng.integers(0, 256, 4 * APT_WINDOW))
    biased[::APT_WINDOW] = 0x55  # each window starts with the favoured value
    # break up runs so the repetition test does not fire first
    biased[1::2] = np.where(biased[1::2] == 0x55, 0xAA, biased[1::2])
    biased[::APT_WINDOW] = 0x55
    with pytest.raises(EntropyHealthFailure, match="adaptive proportion"):
        ContinuousHealthTests(7.0).check(biased.astype(np.uint8).tobytes())


def _qrng(path: Path) -> IdqQuantisDevice:
    cfg = instrument_config(kind="random_source", driver="idq-quantis", address=f"device:{path}")
    return IdqQuantisDevice("qrng", cfg)


async def test_driver_reads_through_a_pipe_and_latches_a_failure(tmp_path: Path) -> None:
    fifo = tmp_path / "qrandom0"
    os.mkfifo(fifo)
    writer_fd = os.open(fifo, os.O_RDWR)  # keeps the pipe open for the reader
    try:
        good = os.urandom(4096)
        os.write(writer_fd, good + bytes(64))
        async with _qrng(fifo) as qrng:
            assert await qrng.random_bytes(4096) == bytearray(good)
            assert (await qrng.health()).healthy
            with pytest.raises(DeviceError, match="repetition count"):
                await qrng.random_bytes(64)
            health = await qrng.health()
            assert not health.healthy and "repetition count" in health.detail
            os.write(writer_fd, os.urandom(16))
            with pytest.raises(DeviceError, match="disabled"):
                await qrng.random_bytes(16)
    finally:
        os.close(writer_fd)
