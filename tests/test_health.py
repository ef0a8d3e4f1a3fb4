"""The health snapshot and the metrics built on it, without a daemon: the recorder fed
the link's events, atomic writes, liveness, the exposition format, /metrics over HTTP."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from qkdd.config import ConfigError, parse_config
from qkdd.health import (
    HEALTH_FILE,
    MIN_INTERVAL_S,
    HealthRecorder,
    is_alive,
    read_snapshot,
)
from qkdd.link.alarms import AlarmEvent, AlarmKind
from qkdd.link.events import FrameReport, KeysCommitted, LinkEvents
from qkdd.link.states import LinkState, Transition
from qkdd.metrics import MetricsConfig, MetricsServer, render, textfile_sink
from qkdd.store import KeyMeta, KeyState
from tests.promtext import parse


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def _meta(block: int, index: int, bits: int = 256, qber: float = 0.02) -> KeyMeta:
    return KeyMeta(
        key_id=f"00000000-0000-0000-0000-{block:06d}{index:06d}",
        link="l1",
        block_id=block,
        index=index,
        bits=bits,
        qber=qber,
        eps_sec=1e-10,
        eps_cor=1e-15,
        eps_auth=1e-20,
        eps_total=1.1e-10,
        simulated=True,
        created="2026-11-23T00:00:00.000+00:00",
        consumer_slot="default",
        state=KeyState.COMMITTED,
    )


def _recorder(tmp_path: Path, clock: Clock, **kw: object) -> tuple[HealthRecorder, LinkEvents]:
    events = LinkEvents()
    rec = HealthRecorder(
        tmp_path, node="n1", link="l1", role="alice", simulated=True, clock=clock, **kw
    )  # type: ignore[arg-type]
    rec.attach(events)
    return rec, events


def _frame(frame: int, errors: int, bits: int) -> FrameReport:
    return FrameReport(
        block_id=1, frame=frame, sifted_key_bits=1000, test_bits=bits, test_errors=errors,
        window_qber=0.03, window_bound=0.01, detections=5000,
    )  # fmt: skip


def test_recorder_follows_the_links_events(tmp_path: Path) -> None:
    clock = Clock()
    rec, events = _recorder(tmp_path, clock)
    rec.write()
    snap = read_snapshot(tmp_path)
    assert snap is not None and snap.state == "STARTING" and snap.running
    assert stat.S_IMODE((tmp_path / HEALTH_FILE).stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == [HEALTH_FILE]  # no temporary left over

    clock.t += 1
    events.transition(Transition(LinkState.STARTING, LinkState.CONNECTING, "starting", clock.t))
    snap = read_snapshot(tmp_path)
    assert snap is not None
    assert (snap.state, snap.previous_state, snap.reason) == ("CONNECTING", "STARTING", "starting")
    assert snap.state_since == clock.t

    clock.t += 1
    events.frame(_frame(1, 3, 100))
    events.keys(KeysCommitted(1, (_meta(1, 0), _meta(1, 1))))
    events.alarm(AlarmEvent(AlarmKind.QBER_WARNING, True, {"cusum": 12.5}))
    events.alarm(AlarmEvent(AlarmKind.PEER_LOST, True))
    snap = read_snapshot(tmp_path)
    assert snap is not None
    assert snap.qber_frame == pytest.approx(0.03) and snap.qber_window == 0.03
    assert snap.qber_block == 0.02 and snap.last_block == 1
    assert (snap.keys_committed, snap.secret_bits_committed, snap.blocks_committed) == (2, 512, 1)
    assert snap.key_rate_bits_per_s == pytest.approx(512 / 2)  # 2 s since start
    assert [(a.name, a.level) for a in snap.alarms] == [
        ("peer_lost", "abort"),
        ("qber_warning", "warning"),
    ]
    assert snap.alarms_total == {"qber_warning": 1, "peer_lost": 1}

    events.alarm(AlarmEvent(AlarmKind.PEER_LOST, False))
    events.alarm(AlarmEvent(AlarmKind.QBER_WARNING, False, {"clean_bits": 512}))
    clock.t += 61
    rec.write()
    snap = read_snapshot(tmp_path)
    assert snap is not None
    assert snap.alarms == [] and snap.alarms_total == {"qber_warning": 1, "peer_lost": 1}
    # A minute later the old commit has left the key-rate window.
    assert snap.key_rate_bits_per_s == 0.0

    rec.close()
    snap = read_snapshot(tmp_path)
    assert snap is not None and not snap.running


async def test_frames_are_rate_limited_and_flushed(tmp_path: Path) -> None:
    clock = Clock()
    rec, events = _recorder(tmp_path, clock)
    rec.write()
    writes: list[int] = []
    rec.sinks.append(lambda s: writes.append(s.frames))
    for i in range(50):  # 50 frames and in-block steps in the same instant: no write
        events.frame(_frame(i, 0, 10))
        events.transition(Transition(LinkState.TRANSMIT, LinkState.SIFT, f"frame {i}", clock.t))
    assert writes == []
    # An alarm, or leaving the block, is written at once.
    events.transition(Transition(LinkState.SIFT, LinkState.ALARM, "qber_high", clock.t))
    assert writes == [50]
    events.frame(_frame(51, 0, 10))
    clock.t += MIN_INTERVAL_S
    stopping = False
    task = asyncio.create_task(rec.run(lambda: stopping))
    await asyncio.sleep(MIN_INTERVAL_S)  # run() flushes the pending frame
    assert writes[-1] == 51
    stopping = True
    await asyncio.wait_for(task, 5)
    snap = read_snapshot(tmp_path)
    assert snap is not None and not snap.running and snap.state == "ALARM"


def test_is_alive_checks_pid_and_process_identity(tmp_path: Path) -> None:
    clock = Clock()
    rec, _ = _recorder(tmp_path, clock)
    snap = rec.snapshot()
    assert is_alive(snap)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not is_alive(snap.model_copy(update={"pid": child.pid}))
    if snap.process_start is not None:  # a recycled pid: same number, other process
        assert not is_alive(snap.model_copy(update={"process_start": snap.process_start + 1}))
    if snap.boot_id is not None:
        assert not is_alive(snap.model_copy(update={"boot_id": "another-boot"}))


def test_metrics_render_is_strict_exposition_format(tmp_path: Path) -> None:
    clock = Clock()
    rec, events = _recorder(tmp_path, clock)
    clock.t += 4
    events.transition(Transition(LinkState.SIFT, LinkState.ALARM, 'say "why"\n', clock.t))
    events.keys(KeysCommitted(3, (_meta(3, 0, 256, 0.031),)))
    events.alarm(AlarmEvent(AlarmKind.QBER_HIGH, True, {"qber": 0.25}))
    families = parse(render(rec.snapshot()))
    labels = {"link": "l1", "role": "alice"}
    assert families["qkdd_up"].value(**labels) == 1
    one_hot = families["qkdd_state"].samples
    assert len(one_hot) == len(LinkState) and sum(one_hot.values()) == 1
    assert families["qkdd_state"].value(state="ALARM") == 1
    assert families["qkdd_qber"].value(scope="block") == pytest.approx(0.031)
    assert "frame" not in str(families["qkdd_qber"].samples)  # not measured: absent, not 0
    assert families["qkdd_secret_bits_total"].kind == "counter"
    assert families["qkdd_secret_bits_total"].value() == 256
    assert families["qkdd_keys_total"].value() == 1
    assert families["qkdd_key_rate_bits_per_second"].value() == pytest.approx(64.0)
    active = families["qkdd_alarms_active"]
    assert len(active.samples) == len(AlarmKind)
    assert active.value(alarm="qber_high", level="abort") == 1
    assert active.value(alarm="store_full", level="warning") == 0
    assert families["qkdd_alarms_total"].value(alarm="qber_high") == 1
    assert families["qkdd_simulated"].value() == 1
    assert "qkdd_mqtt_connected" not in families  # no [mqtt]
    for fam in families.values():
        for key in fam.samples:
            assert ("link", "l1") in key and ("role", "alice") in key


def test_textfile_sink_replaces_the_file_readably(tmp_path: Path) -> None:
    clock = Clock()
    prom = tmp_path / "prom" / "qkdd-l1.prom"
    prom.parent.mkdir()
    rec, _ = _recorder(tmp_path, clock, sinks=[textfile_sink(prom)])
    old = os.umask(0o077)  # as under systemd: the file must still be world-readable
    try:
        rec.write()
        rec.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert [p.name for p in prom.parent.iterdir()] == ["qkdd-l1.prom"]
    assert parse(prom.read_text())["qkdd_up"].value() == 0  # the last snapshot


async def _http(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    return status, headers, body


async def test_metrics_endpoint_over_http(tmp_path: Path) -> None:
    clock = Clock()
    rec, _ = _recorder(tmp_path, clock)
    rec.close()  # even from a "stopped" snapshot, the serving daemon is up
    server = MetricsServer("127.0.0.1:0", rec.snapshot)
    await server.start()
    try:
        get = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n"
        status, headers, body = await _http(server.port, get)
        assert status == "HTTP/1.1 200 OK"
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert int(headers["content-length"]) == len(body)
        assert parse(body.decode())["qkdd_up"].value() == 1
        status, _, _ = await _http(server.port, b"GET / HTTP/1.1\r\n\r\n")
        assert status.startswith("HTTP/1.1 404")
        status, _, _ = await _http(server.port, b"DELETE /metrics HTTP/1.1\r\n\r\n")
        assert status.startswith("HTTP/1.1 405")
        status, headers, body = await _http(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK" and body == b""
    finally:
        await server.close()


def test_metrics_config(tmp_path: Path) -> None:
    assert not MetricsConfig().enabled
    assert MetricsConfig(listen="[::1]:9464").enabled
    base = {
        "node": {"id": "a", "role": "alice", "link": "l", "state_dir": str(tmp_path)},
        "instruments": {
            "laser": {"class": "laser", "backend": "hardware", "driver": "thorlabs-itc4000"},
            "encoder": {
                "class": "state_encoder", "backend": "hardware", "driver": "keysight-33500b",
            },
            "qrng": {"class": "random_source", "backend": "hardware", "driver": "idq-quantis"},
        },
    }  # fmt: skip
    assert parse_config({**base, "metrics": {"listen": "127.0.0.1:9464"}}).metrics.listen
    with pytest.raises(ConfigError, match=r"metrics: textfile: .*\.prom"):
        parse_config({**base, "metrics": {"textfile": "/var/lib/x/qkdd.txt"}})
    with pytest.raises(ConfigError, match="metrics: listen: expected HOST:PORT"):
        parse_config({**base, "metrics": {"listen": "9464"}})
    with pytest.raises(ConfigError, match=r"metrics\.port: unknown key"):
        parse_config({**base, "metrics": {"port": 9464}})


@pytest.mark.parametrize(
    "bad",
    [
        "qkdd_up 1\n",  # sample before its TYPE
        "# TYPE qkdd_x counter\nqkdd_x 1\n",  # a counter not named *_total
        '# TYPE qkdd_up gauge\nqkdd_up{link="a\\q"} 1\n',  # bad escape
        "# TYPE qkdd_up gauge\nqkdd_up 1\nqkdd_up 2\n",  # duplicate series
        "# TYPE qkdd_up gauge\nqkdd_up one\n",  # not a number
        "# TYPE qkdd_up gauge\nqkdd_up 1",  # no final newline
    ],
)
def test_the_exposition_parser_is_strict(bad: str) -> None:
    with pytest.raises(AssertionError):
        parse(bad)


def test_a_failing_sink_never_stops_the_snapshot(tmp_path: Path) -> None:
    clock = Clock()
    missing = tmp_path / "no-such-dir" / "qkdd.prom"
    rec, events = _recorder(tmp_path, clock, sinks=[textfile_sink(missing)])
    rec.write()
    events.transition(Transition(LinkState.STARTING, LinkState.CONNECTING, "go", clock.t))
    snap = read_snapshot(tmp_path)
    assert snap is not None and snap.state == "CONNECTING"
    assert not missing.exists()
