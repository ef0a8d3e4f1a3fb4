"""One direction's Wegman–Carter key stream as one end sees it.

The sender and the receiver of a direction each hold a :class:`KeyStream` over
their own copy of the stream. Both take units in the same order (the protocol
is deterministic), so the receiver derives every index from its own counter and
never from the message. Before any unit is used — a tag leaving, or a received
tag being accepted — the durable high-water mark is raised past it with an
fsync (``synchronous=FULL``); after a crash the stream resumes at that mark, so
no unit is ever used twice. Reservations run ``reserve_ahead`` units ahead to
amortise the fsync; a crash burns at most that many. Used units are erased from the
store (secure delete and WAL checkpoint) once ``erase_every`` have accumulated, at
each block start and on close.
"""

from __future__ import annotations

from qkdd.auth.errors import InsufficientAuthKeyError, StaleIndexError, StreamClosedError
from qkdd.store.streams import Direction, StreamStatus, StreamStore


class KeyStream:
    """Units of one direction, taken in order; see the module docstring."""

    def __init__(
        self,
        streams: StreamStore,
        direction: Direction,
        *,
        reserve_ahead: int = 32,
        erase_every: int = 128,
    ) -> None:
        if reserve_ahead < 0:
            raise ValueError("reserve_ahead must be >= 0")
        self._streams = streams
        self.direction = direction
        self.reserve_ahead = reserve_ahead
        self.erase_every = erase_every
        row = streams.stream(direction)
        # Everything below the durable mark may have been used before a restart.
        self.position = row.mark
        self.mark = row.mark
        self.appended = row.appended
        self.status = row.status
        self.failures = row.failures
        self._erased_below = 0
        # Not synchronised with the peer until a handshake completes.
        self.synced = False

    def __repr__(self) -> str:
        return (
            f"KeyStream({self.direction}, position={self.position}, mark={self.mark}, "
            f"appended={self.appended}, status={self.status}, synced={self.synced})"
        )

    @property
    def level(self) -> int:
        """Units not yet used (reserved-ahead units included)."""
        return self.appended - self.position

    def refresh_appended(self) -> None:
        self.appended = self._streams.stream(self.direction).appended

    def _reserve(self, end: int, *, ahead: bool) -> None:
        """Durably raise the mark to cover units below ``end`` (fsync before return)."""
        if end <= self.mark:
            return
        target = min(self.appended, end + (self.reserve_ahead if ahead else 0))
        erase = self.position - self._erased_below >= self.erase_every
        self._streams.reserve(self.direction, target, erase_below=self.position if erase else None)
        if erase:
            self._erased_below = self.position
        self.mark = target

    def erase_used(self) -> None:
        """Erase every unit below the current position now."""
        if self.position > self._erased_below:
            self._streams.erase_below(self.direction, self.position)
            self._erased_below = self.position

    def take(self, count: int) -> tuple[int, bytearray]:
        """The next ``count`` units (index, material); durable before returning."""
        if self.status is StreamStatus.EXHAUSTED or not self.synced:
            raise StreamClosedError(f"authentication stream {self.direction} is not open")
        start = self.position
        end = start + count
        if end > self.appended:
            self.refresh_appended()
            if end > self.appended:
                raise InsufficientAuthKeyError(
                    f"authentication stream {self.direction} has {self.level} units left, "
                    f"{count} needed"
                )
        self._reserve(end, ahead=True)
        self.position = end
        return start, self._streams.read_units(self.direction, start, count)

    def take_at(self, index: int, count: int, *, max_skip: int) -> bytearray:
        """Units at an index announced in clear by a handshake: accepted only at or
        above the stored high-water mark and at most ``max_skip`` units beyond it
        (so a forged index cannot burn the whole stream). Burns everything below
        ``index + count`` durably before returning."""
        if self.status is StreamStatus.EXHAUSTED:
            raise StreamClosedError(f"authentication stream {self.direction} is exhausted")
        if index < self.mark:
            raise StaleIndexError(
                f"handshake index {index} on {self.direction} is below the high-water "
                f"mark {self.mark}",
                self.mark,
            )
        if index - self.mark > max_skip:
            raise StaleIndexError(
                f"handshake index {index} on {self.direction} is more than {max_skip} "
                f"units beyond the high-water mark {self.mark}",
                self.mark,
            )
        end = index + count
        if end > self.appended:
            self.refresh_appended()
            if end > self.appended:
                raise InsufficientAuthKeyError(f"no material at handshake index {index}")
        self._reserve(end, ahead=False)
        self.position = end
        return self._streams.read_units(self.direction, index, count)

    def start_handshake(self) -> None:
        """A sender's handshake starts at its durable mark (unused reserved units are
        skipped: the peer may have burnt them)."""
        if self.status is StreamStatus.EXHAUSTED:
            raise StreamClosedError(f"authentication stream {self.direction} is exhausted")
        self.position = max(self.position, self.mark)
        self.synced = True

    def skip_to(self, target: int) -> None:
        """Durably move past ``target`` (both ends jump past the larger mark)."""
        if target > self.mark:
            self.refresh_appended()
            target = min(target, self.appended)
            self._streams.reserve(self.direction, target, erase_below=target)
            self._erased_below = target
            self.mark = target
        self.position = max(self.position, self.mark)
        self.synced = True

    def burn_and_close(self) -> None:
        """After a bad tag: the units are already burnt (position moved past them);
        close the stream durably and count the failure."""
        self.failures += 1
        self.status = StreamStatus.CLOSED
        self.synced = False
        self._streams.set_status(self.direction, self.status, self.failures)

    def exhaust(self) -> None:
        self.status = StreamStatus.EXHAUSTED
        self.synced = False
        self._streams.set_status(self.direction, self.status, self.failures)

    def reopen(self) -> None:
        """A handshake verified: the stream is usable again (failures are kept until a
        block commits)."""
        if self.status is StreamStatus.EXHAUSTED:
            raise StreamClosedError(f"authentication stream {self.direction} is exhausted")
        if self.status is not StreamStatus.OPEN:
            self.status = StreamStatus.OPEN
            self._streams.set_status(self.direction, self.status, self.failures)
        self.synced = True

    def clear_failures(self) -> None:
        if self.failures and self.status is not StreamStatus.EXHAUSTED:
            self.failures = 0
            self._streams.set_status(self.direction, self.status, 0)
