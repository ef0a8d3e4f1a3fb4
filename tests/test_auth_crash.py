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

from qkdd.store import Direction, StateStore, StreamStore
from tests.authpair import bootstrap, open_end

REPO = Path(__file__).resolve().parent.parent


def _run(root: Path, kill_at: int, iterations: int, kill_after: float | None) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.auth_crash_child", str(root), str(kill_at), str(iterations)],
        cwd=REPO,
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


class EndProcess:
    """One end in its own process; ``call`` returns the reply and collects unit uses."""

    def __init__(self, state_dir: Path, role: str, uses: list[tuple[str, str, int]]) -> None:
        self.state_dir, self.role, self.uses = state_dir, role, uses
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.auth_end_child", str(state_dir), role],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def call(self, command: str) -> str | None:
        """The reply line, or None if the process died (killed) before replying."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(timeout=30)
                return None
            if line.startswith("U "):
                self.uses.extend(_used(line))
                continue
            return line.strip()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.stdout is not None
        self.uses.extend(_used(self.proc.stdout.read()))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0


def _handshake(a: EndProcess, b: EndProcess) -> bool:
    """The peer channel's handshake relayed between the two processes; False if an end
    died during it."""
    for _ in range(4):
        offers = [a.call("HS_BEGIN"), b.call("HS_BEGIN")]
        if None in offers:
            return False
        stale = False
        for me, peer, offer in ((a, b, offers[0]), (b, a, offers[1])):
            assert offer is not None and offer.startswith("HS "), offer
            answer = peer.call("HS_PEER " + offer[3:])
            if answer is None:
                return False
            if answer.startswith("HS_STALE"):
                if me.call("HS_SKIP " + answer.split()[1]) is None:
                    return False
                stale = True
            else:
                assert answer == "HS_OK", answer
        if stale:
            continue
        for me, offer in ((a, offers[1]), (b, offers[0])):
            assert offer is not None
            if me.call("HS_DONE " + offer.split()[2]) is None:
                return False
        return True
    raise AssertionError("handshake did not converge")


def test_either_end_killed_at_any_point_while_the_other_keeps_running(tmp_path: Path) -> None:
    """Two processes, traffic both ways; one end at a time is SIGKILLed between
    commands or right after a durable reservation, restarted, and the link
    resynchronises; no unit is ever used twice by either end."""
    bootstrap(tmp_path, units=8192)
    rng = random.Random(2026)
    uses: list[tuple[str, str, int]] = []
    ends = {role: EndProcess(tmp_path / role, role, uses) for role in ("alice", "bob")}
    kills = verified = 0
    synced = False
    for step in range(400):
        if not synced:
            synced = _handshake(ends["alice"], ends["bob"])
            if not synced:
                for role, end in ends.items():
                    if end.proc.poll() is not None:
                        end.kill()
                        ends[role] = EndProcess(tmp_path / role, role, uses)
                continue
        if step % 25 == 24:
            victim = rng.choice(["alice", "bob"])
            if rng.random() < 0.5:
                ends[victim].kill()
            else:
                assert ends[victim].call(f"ARM {rng.randint(1, 3)}") == "OK"
            kills += 1
        sender, receiver = rng.choice([("alice", "bob"), ("bob", "alice")])
        message = rng.randbytes(rng.randint(1, 40)).hex()
        tagged = ends[sender].call(f"TAG {message}")
        answer = None if tagged is None else ends[receiver].call(f"VERIFY {message} {tagged[7:]}")
        if answer == "VERIFIED":
            verified += 1
            continue
        # An end died (or, right after a restart, a tag was lost): restart the dead
        # and resynchronise.
        for role, end in ends.items():
            if end.proc.poll() is not None:
                end.kill()
                ends[role] = EndProcess(tmp_path / role, role, uses)
        synced = False
    for end in ends.values():
        end.close()
    assert kills >= 10 and verified > 200
    seen: set[tuple[str, str, int]] = set()
    for use in uses:
        assert use not in seen, f"unit used twice: {use}"
        seen.add(use)
