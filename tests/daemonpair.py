"""Two real ``qkdd run`` processes of one link, configured in a temporary directory.

Every process is started in its own session and killed (whole process group) when
the fixture ends, whatever happened in the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

LINK = "itlink"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def node_config(
    tmp: Path, role: str, port: int, protocol: dict[str, Any], extra: dict[str, Any] | None = None
) -> Path:
    """A node config like config/{alice,bob}.toml, but small and in ``tmp``."""
    instruments: dict[str, Any] = (
        {
            "laser": {"class": "laser", "backend": "simulated"},
            "encoder": {"class": "state_encoder", "backend": "simulated"},
            "qrng": {"class": "random_source", "backend": "simulated"},
        }
        if role == "alice"
        else {
            "spd": {"class": "detector", "backend": "simulated"},
            "tagger": {
                "class": "time_tagger",
                "backend": "simulated",
                "options": {"channels": [1, 2, 3, 4], "batch_s": 0.01},
            },
            "qrng": {"class": "random_source", "backend": "simulated"},
        }
    )
    data: dict[str, Any] = {
        "node": {
            "id": role,
            "role": role,
            "link": LINK,
            "state_dir": str(tmp / role),
            "allow_simulated": True,
        },
        "logging": {"level": "info", "json": True},
        "instruments": instruments,
        "protocol": protocol,
        "peer": {
            "listen": role == "alice",
            "port": port,
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.5,
            "receive_timeout_s": 10.0,
        },
    }
    if extra:
        data.update(extra)
    path = tmp / f"{role}.toml"
    path.write_text(tomli_w.dumps(data))
    return path


SMALL_PROTOCOL: dict[str, Any] = {
    "slot_rate_hz": 1e6,
    "frame_duration_s": 0.01,
    "block_pulses": 100_000,
}


def qkdd(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qkdd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def init_secret(tmp: Path) -> None:
    out = qkdd(
        "init-secret",
        "--link",
        LINK,
        "--alice-dir",
        str(tmp / "alice"),
        "--bob-dir",
        str(tmp / "bob"),
    )
    assert out.returncode == 0, out.stderr


@dataclass
class Proc:
    role: str
    config: Path
    popen: subprocess.Popen[str]
    log: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(raw))
        return lines


def start(role: str, config: Path, tmp: Path, env: dict[str, str] | None = None) -> Proc:
    log = tmp / f"{role}.log"
    full_env = {**os.environ, **(env or {})}
    popen = subprocess.Popen(
        [sys.executable, "-m", "qkdd", "run", "-c", str(config)],
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    return Proc(role, config, popen, log, env or {})


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    """Collects processes; kills every process group at the end."""
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()


def keys_json(config: Path, reveal: bool = True) -> dict[str, Any]:
    args = ["keys", "list", "-c", str(config), "--json"] + (["--reveal"] if reveal else [])
    out = qkdd(*args)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def wait_for(predicate: Any, within_s: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
