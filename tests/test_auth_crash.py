"""kill -9 at any point of the reserve/send sequence never leads to a reused unit:
real subprocesses, SIGKILL between a durable reservation and its use, and at
random moments, with both directions active at once."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from authpair import bootstrap, open_end

from qkdd.store import Direction, StateStore, StreamStore

CHILD = Path(__file__).with_name("auth_crash_child.py")


def _run(root: Path, kill_at: int, iterations: int, kill_after: float | None) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(root), str(kill_at), str(iterations)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if kill_after is not None:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    return proc.returncode, out


def _used(out: str) -> list[tuple[str, str, int]]:
    units = []
    for line in out.splitlines():
        if line.startswith("U "):
            _, end, direction, start, count = line.split()
            units += [(end, direction, u) for u in range(int(start), int(start) + int(count))]
    return units


def _marks(root: Path) -> dict[tuple[str, str], int]:
    marks = {}
    for end in ("alice", "bob"):
        with StateStore.open(root / end) as store:
            streams = StreamStore(store)
            for direction in Direction:
                marks[(end, str(direction))] = streams.stream(direction).mark
    return marks


def test_sigkill_between_reservation_and_use_never_reuses_a_unit(tmp_path: Path) -> None:
    bootstrap(tmp_path, units=16384)
    # Import both secrets once (first start), as the daemon would.
    open_end(tmp_path / "alice", "alice").close()
    open_end(tmp_path / "bob", "bob").close()
    rng = random.Random(12)
    seen: dict[tuple[str, str], set[int]] = defaultdict(set)
    rounds = [(k, None) for k in (1, 2, 3, 4, 7, 12, 25)]
    rounds += [(0, rng.uniform(0.2, 0.6)) for _ in range(3)]
    killed = 0
    for kill_at, kill_after in rounds:
        code, out = _run(tmp_path, kill_at, 10_000, kill_after)
        if code == -signal.SIGKILL:
            killed += 1
        used = _used(out)
        marks = _marks(tmp_path)
        for end, direction, unit in used:
            key = (end, direction)
            assert unit not in seen[key], f"unit {unit} of {direction} used twice at {end}"
            seen[key].add(unit)
            # Every unit that was used lies below the durable high-water mark.
            assert unit < marks[key]
    assert killed == len(rounds)
    # After all the kills the link still works end to end.
    code, out = _run(tmp_path, 0, 30, None)
    assert code == 0 and out.rstrip().endswith("DONE")
    for end, direction, unit in _used(out):
        assert unit not in seen[(end, direction)]
        seen[(end, direction)].add(unit)
    assert all(len(units) > 50 for units in seen.values())
