"""Keysight 33500B driver over raw TCP and over pyvisa-py's TCPIP SOCKET, against a responder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdd.drivers.keysight_33500b import WAVEFORM_NAME, Keysight33500B
from qkdd.frames import FramePattern
from qkdd.instruments.interfaces import (
    DeviceError,
    InstrumentTimeout,
    InstrumentUnavailable,
)

from .conftest import instrument_config
from .responders import Keysight33500BModel, TcpResponder


def _awg(address: str, **options: object) -> Keysight33500B:
    cfg = instrument_config(
        kind="state_encoder",
        driver="keysight-33500b",
        address=address,
        timeout_s=0.3,
        options=options,
    )
    return Keysight33500B("awg", cfg)


def _pattern(n: int, seed: int = 1) -> FramePattern:
    rng = np.random.default_rng(seed)
    return FramePattern(
        basis=rng.integers(0, 2, n, dtype=np.uint8),
        bit=rng.integers(0, 2, n, dtype=np.uint8),
        intensity=rng.integers(0, 3, n, dtype=np.uint8),
    )


@pytest.mark.parametrize("via_visa", [False, True], ids=["tcp", "visa-socket"])
async def test_frame_upload_lands_as_exact_dac_codes(via_visa: bool) -> None:
    model = Keysight33500BModel()
    with TcpResponder(model) as responder:
        address = f"TCPIP0::127.0.0.1::{responder.port}::SOCKET" if via_visa else responder.address
        pattern = _pattern(1000)
        async with _awg(address, samples_per_slot=2, sample_rate_hz=200e6) as awg:
            assert (await awg.identity()).startswith("Keysight Technologies,33522B")
            await awg.load_frame(pattern)
            await awg.arm()
            assert await awg.slot_rate_hz() == pytest.approx(100e6)
            health = await awg.health()
        intensity, phase = awg.waveforms(pattern)
        np.testing.assert_array_equal(model.volatile[1][WAVEFORM_NAME], intensity)
        np.testing.assert_array_equal(model.volatile[2][WAVEFORM_NAME], phase)
        for ch in (1, 2):
            assert model.channel[ch]["ARB"] == WAVEFORM_NAME
            assert model.channel[ch]["FUNC"] == "ARB"
            assert model.channel[ch]["BURS:STAT"] == "1"
            assert model.channel[ch]["TRIG:SOUR"] == "EXT"
            assert model.channel[ch]["OUTP"] == "1"
        assert model.synced == 1
        assert health.healthy and health.readings["output1"] is True


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 2)), min_size=8, max_size=64
    )
)
def test_waveform_maps_each_slot_to_its_levels(slots: list[tuple[int, int, int]]) -> None:
    basis, bit, intensity = (np.array(col, dtype=np.uint8) for col in zip(*slots, strict=True))
    awg = _awg("tcp://127.0.0.1:9")  # not connected: the mapping is local
    ch1, ch2 = awg.waveforms(FramePattern(basis=basis, bit=bit, intensity=intensity))
    for i, (b, x, k) in enumerate(slots):
        assert ch1[i] == awg.intensity_dac[k]
        assert ch2[i] == awg.phase_dac[2 * b + x]
    assert len(set(awg.phase_dac.tolist())) == 4


async def test_device_error_is_raised_with_the_failing_command() -> None:
    with TcpResponder(Keysight33500BModel()) as responder:
        async with _awg(responder.address, sample_rate_hz=1e9) as awg:
            with pytest.raises(DeviceError, match=r"FUNC:ARB:SRAT .*-222"):
                await awg.load_frame(_pattern(64))
            with pytest.raises(ValueError, match="no frame loaded"):
                await awg.arm()


async def test_short_frame_is_refused_before_upload() -> None:
    with TcpResponder(Keysight33500BModel()) as responder:
        async with _awg(responder.address) as awg:
            with pytest.raises(ValueError, match="outside 8-"):
                await awg.load_frame(_pattern(4))


async def test_silent_instrument_times_out() -> None:
    model = Keysight33500BModel(silent={"*OPC?"})
    with TcpResponder(model) as responder:
        async with _awg(responder.address) as awg:
            with pytest.raises(InstrumentTimeout):
                await awg.load_frame(_pattern(64))


async def test_late_reply_never_answers_the_next_query() -> None:
    model = Keysight33500BModel(late={"SOUR1:FUNC:ARB:SRAT?": 0.6})
    with TcpResponder(model) as responder:
        async with _awg(responder.address) as awg:
            with pytest.raises(InstrumentTimeout):
                await awg.slot_rate_hz()
            # The late "4.0E+04" must not be taken as the identity reply.
            assert (await awg.scpi.identity()).startswith("Keysight")
            assert responder.connections == 2  # resynchronised by reconnecting


async def test_dropped_connection_reconnects() -> None:
    with TcpResponder(Keysight33500BModel()) as responder:
        async with _awg(responder.address) as awg:
            responder.drop()
            with pytest.raises(InstrumentUnavailable):
                await awg.scpi.identity()
            assert (await awg.scpi.identity()).startswith("Keysight")
            assert responder.connections == 2


async def test_nothing_listening_is_unavailable_with_reason() -> None:
    with TcpResponder(Keysight33500BModel()) as responder:
        address = responder.address
    awg = _awg(address)
    with pytest.raises(InstrumentUnavailable, match="cannot connect"):
        await awg.connect()
    await awg.close()
