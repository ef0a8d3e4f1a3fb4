"""One end of a link in its own process, driven line by line over stdin/stdout by the
crash test (which relays messages between the two ends and kills them at will).

Every stream unit is reported (``U dir direction start count``) the moment it is read
for use. ``ARM k`` makes the process SIGKILL itself right after its k-th next durable
reservation, i.e. between a reservation and the use of the units it covers.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from qkdd.auth import AuthFailedError, StaleIndexError, StreamMarks
from qkdd.logging import configure_logging
from qkdd.store import Direction, StreamStore
from tests.authpair import open_end


def main() -> int:
    state_dir, role = Path(sys.argv[1]), sys.argv[2]
    configure_logging("critical")
    out = sys.stdout
    read_units, reserve = StreamStore.read_units, StreamStore.reserve
    armed = [0]

    def recording(self: StreamStore, direction: Direction, start: int, count: int) -> bytearray:
        material = read_units(self, direction, start, count)
        out.write(f"U {self.store.state_dir.name} {direction} {start} {count}\n")
        out.flush()
        return material

    def reserving(
        self: StreamStore, direction: Direction, new_mark: int, *, erase_below: int | None
    ) -> None:
        reserve(self, direction, new_mark, erase_below=erase_below)
        if armed[0] > 0:
            armed[0] -= 1
            if armed[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    StreamStore.read_units = recording  # type: ignore[method-assign]
    StreamStore.reserve = reserving  # type: ignore[method-assign]
    end = open_end(state_dir, role, reserve_ahead=2, max_failures=1000)
    session = end.session

    def reply(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "ARM":
            armed[0] = int(args[0])
            reply("OK")
        elif cmd == "HS_BEGIN":
            offer = session.begin_handshake()
            message = f"{offer.marks.alice_to_bob},{offer.marks.bob_to_alice}".encode()
            reply(f"HS {offer.index} {message.hex()} {session.sign_handshake(message).hex()}")
        elif cmd == "HS_PEER":
            index, message, tag = int(args[0]), bytes.fromhex(args[1]), bytes.fromhex(args[2])
            try:
                session.verify_handshake(message, index, tag)
                reply("HS_OK")
            except StaleIndexError as stale:
                reply(f"HS_STALE {stale.mark}")
            except AuthFailedError:
                reply("HS_FAIL")
        elif cmd == "HS_SKIP":
            session.skip_tx_to(int(args[0]))
            reply("OK")
        elif cmd == "HS_DONE":
            ab, ba = (int(v) for v in bytes.fromhex(args[0]).decode().split(","))
            session.complete_handshake(StreamMarks(ab, ba))
            reply("OK")
        elif cmd == "TAG":
            reply(f"TAGGED {session.tag(bytes.fromhex(args[0])).hex()}")
        elif cmd == "VERIFY":
            try:
                session.verify(bytes.fromhex(args[0]), bytes.fromhex(args[1]))
                reply("VERIFIED")
            except AuthFailedError:
                reply("FAIL")
        else:
            reply(f"ERROR {cmd}")
    end.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
