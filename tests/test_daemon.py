"""``qkdd run`` as a real process: sd_notify on a real datagram socket, SIGHUP, SIGTERM
mid-block with a real peer, refusal without a secret."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from qkdd.config import load_config
from qkdd.link.keys import BlockKeys
from qkdd.store import BlockState, StateStore
from tests.daemonpair import (
    SMALL_PROTOCOL,
    free_port,
    init_secret,
    node_config,
    processes,
    qkdd,
    start,
    wait_for,
)
from tests.exampleconfigs import example_configs


def _datagrams(sock: socket.socket, until: str, within_s: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any(until in g for g in got):
            break
    return got


def test_sd_notify_ready_status_watchdog_reload_stopping(tmp_path: Path) -> None:
    init_secret(tmp_path)
    config = node_config(tmp_path, "alice", free_port(), SMALL_PROTOCOL)
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, processes() as procs:
        sock.bind(str(sock_path))
        env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}
        alice = start("alice", config, tmp_path, env)
        procs.append(alice)
        got = _datagrams(sock, "READY=1", 20)
        assert any("READY=1" in g for g in got), got
        got += _datagrams(sock, "WATCHDOG=1", 2)
        assert any("WATCHDOG=1" in g for g in got), got
        status = [g for g in got if "STATUS=" in g]
        assert status and "keys=0" in status[-1]
        # No Bob: the link waits for its peer and says so.
        got += _datagrams(sock, "CONNECTING", 2)
        assert any("CONNECTING" in g for g in got)
        alice.signal(signal.SIGHUP)
        reload = _datagrams(sock, "RELOADING=1", 5)
        assert any("RELOADING=1" in g for g in reload), reload
        alice.signal(signal.SIGTERM)
        stop = _datagrams(sock, "STOPPING=1", 5)
        assert any("STOPPING=1" in g for g in stop), stop
        assert alice.wait(10) == 0
    reloads = [r for r in alice.log_lines() if r.get("event") == "configuration reloaded"]
    assert reloads and reloads[0]["applied"] == "logging"


def test_run_without_secret_refuses_with_reason(tmp_path: Path) -> None:
    config = node_config(tmp_path, "bob", free_port(), SMALL_PROTOCOL)
    out = qkdd("run", "-c", str(config), timeout=30)
    assert out.returncode == 1
    assert "new secret" in out.stderr


def test_run_without_peer_section_is_a_config_error(tmp_path: Path) -> None:
    config = node_config(tmp_path, "bob", free_port(), SMALL_PROTOCOL)
    text = config.read_text().split("[peer]")[0]
    config.write_text(text)
    out = qkdd("run", "-c", str(config), timeout=30)
    assert out.returncode == 2
    assert "peer: missing" in out.stderr


def test_sigterm_mid_block_exits_zero_and_leaves_no_open_block(tmp_path: Path) -> None:
    """Two real daemons run blocks; SIGTERM to each in turn, mid-block."""
    init_secret(tmp_path)
    port = free_port()
    configs = {r: node_config(tmp_path, r, port, SMALL_PROTOCOL) for r in ("alice", "bob")}
    with processes() as procs:
        alice = start("alice", configs["alice"], tmp_path)
        bob = start("bob", configs["bob"], tmp_path)
        procs += [alice, bob]

        def frames_seen() -> bool:
            return any(
                "frame" in str(r.get("reason", "")) for r in bob.log_lines() + alice.log_lines()
            )

        assert wait_for(frames_seen, 30), (
            alice.log.read_text()[-2000:],
            bob.log.read_text()[-2000:],
        )
        t0 = time.monotonic()
        bob.signal(signal.SIGTERM)
        assert bob.wait(15) == 0
        alice.signal(signal.SIGTERM)
        assert alice.wait(15) == 0
        assert time.monotonic() - t0 < 15
    for role in ("alice", "bob"):
        cfg = load_config(configs[role])
        store = StateStore.open(cfg.node.state_dir)
        try:
            from qkdd.auth import AuthSession

            keys = BlockKeys(store, AuthSession(store), link=cfg.node.link, slots=("default",))
            assert keys.blocks_in(BlockState.OPEN) == []
            if role == "alice":
                assert keys.blocks_in(BlockState.PENDING) == []
        finally:
            store.close()


def test_an_overdue_stop_exits_with_every_thread_and_task_stack(tmp_path: Path) -> None:
    """A stop that hangs (here: a task awaiting what never comes, the loop idle) ends
    anyway at the deadline, exit 1, with an error line, every thread's stack and every
    asyncio task's await stack for the bug report."""
    configs = example_configs(tmp_path, 0)
    child = f"""
import asyncio
from pathlib import Path
import qkdd.daemon as d
from qkdd.config import load_config
d.STOP_DEADLINE_S = 0.5
path = Path({str(configs["alice"])!r})
async def stuck_shutdown_step():
    await asyncio.Event().wait()
async def main():
    d.Daemon(load_config(path), path).stop("SIGTERM")
    await stuck_shutdown_step()
asyncio.run(main())
"""
    began = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", child], check=False, capture_output=True, text=True, timeout=60
    )
    took = time.monotonic() - began
    assert out.returncode == 1, out.stdout + out.stderr
    assert took < 20, took
    assert "shutdown overdue" in out.stdout + out.stderr
    # faulthandler's dump (the main thread idle in select), then where the task waits
    assert "Thread 0x" in out.stderr and "select" in out.stderr
    assert "Task " in out.stderr and "in stuck_shutdown_step" in out.stderr
