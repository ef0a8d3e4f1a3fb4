"""``qkdd demo`` as a user runs it (a subprocess, plain output off a terminal): keys
delivered at both ends and identical, and the alarm once intercept-resend is on."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.mqtt_broker import find_mosquitto

SUMMARY = re.compile(
    r"delivered keys: alice=(\d+) bob=(\d+) identical=(\d+) different=(\d+); alarms seen: (\S+)"
)


def _demo(
    tmp: Path, *args: str, timeout: float, steps: Sequence[tuple[str, bytes]] = ()
) -> tuple[int, str]:
    """Run the demo with plain output on a pipe and a terminal (pty) as its keyboard;
    ``steps``: once the output matches each regular expression in turn, type its keys."""
    keyboard, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qkdd", "demo", "--workdir", str(tmp / "demo"), *args],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the demo and its broker die together on a timeout
    )
    os.close(terminal)
    out: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: out.extend(proc.stdout or ()))
    reader.start()
    deadline = time.monotonic() + timeout
    todo = list(steps)
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if todo and re.search(todo[0][0], "".join(out)):
                os.write(keyboard, todo.pop(0)[1])
            time.sleep(0.2)
        proc.wait(max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        reader.join(10)
        raise AssertionError(f"demo did not finish:\n{''.join(out)[-3000:]}") from None
    finally:
        os.close(keyboard)
    reader.join(10)
    return proc.returncode, "".join(out)


def _check(code: int, out: str) -> None:
    assert code == 0, out[-3000:]
    found = SUMMARY.search(out)
    assert found, out[-3000:]
    alice, bob, identical, different = (int(found.group(i)) for i in range(1, 5))
    assert alice > 0 and bob > 0 and identical > 0 and different == 0, found.group(0)
    assert "qber_high" in found.group(5).split(","), found.group(0)
    assert "eve command sent to bob" in out


@pytest.mark.timeout(300)
def test_demo_delivers_keys_at_both_ends_and_shows_the_alarm(tmp_path: Path) -> None:
    if find_mosquitto() is None and os.environ.get("CI", "").lower() != "true":
        pytest.skip("mosquitto is not installed (the amqtt variant is an acceptance test)")
    # Keys first, then the eavesdropper (e), then quit (q) once the alarm is shown: in
    # that order however long each takes on a loaded machine.
    steps = [(r"keys alice=[1-9]", b"e"), (r"alarm qber_high", b"q")]
    code, out = _demo(tmp_path, "--plain", timeout=240, steps=steps)
    _check(code, out)
    assert "embedded mosquitto" in out


@pytest.mark.acceptance
@pytest.mark.timeout(360)
def test_demo_on_the_in_process_amqtt_broker(tmp_path: Path) -> None:
    # --eve-at instead of a key press; quit once the alarm is shown.
    steps = [(r"alarm qber_high", b"q")]
    code, out = _demo(
        tmp_path, "--embedded", "amqtt", "--eve-at", "60", "--plain", timeout=300, steps=steps
    )
    _check(code, out)
    assert "embedded amqtt" in out


@pytest.mark.acceptance
@pytest.mark.timeout(300)
def test_demo_live_view_on_a_terminal_switches_eve_with_a_key_press(tmp_path: Path) -> None:
    """On a terminal (a pty here) the live view runs; ``e`` switches the eavesdropper
    on, the alarm follows, ``q`` ends the demo with its summary."""
    import pty
    import select
    import time

    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qkdd", "demo", "--workdir", str(tmp_path / "demo")],
        stdin=child,
        stdout=child,
        stderr=child,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "160", "LINES": "60"},
    )
    os.close(child)
    seen = bytearray()

    def read_until(pattern: bytes, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while pattern not in seen:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(seen[-3000:].decode(errors="replace"))
            if select.select([main], [], [], 0.5)[0]:
                with contextlib.suppress(OSError):
                    seen.extend(os.read(main, 65536))

    try:
        read_until(b"identical at both ends", 60)
        read_until(b"e: eavesdropper on/off", 10)
        os.write(main, b"e")
        read_until(b"eve command sent to bob: intercept-resend", 30)
        read_until(b"alarm qber_high", 150)
        os.write(main, b"q")
        read_until(b"delivered keys:", 60)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        os.close(main)
    found = SUMMARY.search(seen.decode(errors="replace"))
    assert found and int(found.group(4)) == 0 and "qber_high" in found.group(5), found
