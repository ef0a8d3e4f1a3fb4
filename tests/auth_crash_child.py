"""Child process for the crash tests: both ends of a link talk in both directions,
printing every stream unit the moment it is read for use, until killed.

usage: python -m tests.auth_crash_child ROOT KILL_AT_RESERVATION ITERATIONS
KILL_AT_RESERVATION > 0 makes the process SIGKILL itself right after that many
durable reservations (between reservation and use); 0 never.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from qkdd.logging import configure_logging
from qkdd.store import Direction, StreamStore
from tests.authpair import handshake, open_end


def main() -> int:
    root, kill_at, iterations = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    configure_logging("error")
    out = sys.stdout
    read_units = StreamStore.read_units
    reserve = StreamStore.reserve
    reservations = 0

    def recording(self: StreamStore, direction: Direction, start: int, count: int) -> bytearray:
        material = read_units(self, direction, start, count)
        out.write(f"U {self.store.state_dir.name} {direction} {start} {count}\n")
        out.flush()
        return material

    def reserving(
        self: StreamStore, direction: Direction, new_mark: int, *, erase_below: int | None
    ) -> None:
        nonlocal reservations
        reserve(self, direction, new_mark, erase_below=erase_below)
        reservations += 1
        if reservations == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    StreamStore.read_units = recording  # type: ignore[method-assign]
    StreamStore.reserve = reserving  # type: ignore[method-assign]

    alice = open_end(root / "alice", "alice", reserve_ahead=3)
    bob = open_end(root / "bob", "bob", reserve_ahead=3)
    a, b = alice.session, bob.session
    handshake(a, b)
    block_id = int.from_bytes(os.urandom(3), "big") + 1
    for i in range(iterations):
        ta, tb = a.tag(b"a%d" % i), b.tag(b"b%d" % i)  # both directions at once
        b.verify(b"a%d" % i, ta)
        a.verify(b"b%d" % i, tb)
        if i % 5 == 4:
            block_id += 1
            ab, bb = a.begin_block(block_id), b.begin_block(block_id)
            ab.verify(b"report", bb.tag(b"report"))
            ab.record_sent(b"answer")
            bb.record_received(b"answer")
            ab.verify_transcript(bb.transcript_tag())
            bb.verify_transcript(ab.transcript_tag())
    out.write("DONE\n")
    alice.close()
    bob.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
