"""The reconciliation interface: two parties exchanging messages, leakage counted both ways.

Sans-I/O. Each party is a state object: :meth:`Party.start` gives its first
message (Alice opens), :meth:`Party.receive` consumes the peer's message and
returns the reply, or ``None`` when it has nothing more to say. Any transport
can carry the messages: :func:`run_local` for tests and benchmarks, the
daemon's authenticated peer channel in production.

Leakage (Tupkary & Lütkenhaus, arXiv:2307.00576): λ_EC is every key-dependent
bit disclosed **in either direction**. Every message declares its
key-dependent content explicitly: ``disclosed`` holds the disclosed bits
themselves (one array element per bit), ``public`` only data that does not
depend on the keys (positions, code choices, seeds, the public QBER
estimate). ``credit`` is the number of disclosed bits that are masked by
fresh secret randomness and therefore carry no key information (the
syndrome bits absorbed by punctured positions of an LDPC frame; the
reconciler that claims it must justify it). Each party keeps a
:class:`LeakageLedger` of what it sent and received, so each end knows λ_EC
without trusting the other.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Bits = npt.NDArray[np.uint8]
PublicValue = int | float | str | npt.NDArray[np.int64]


class Role(enum.Enum):
    """Alice holds the reference key; Bob corrects his key towards it."""

    ALICE = "alice"
    BOB = "bob"

    @property
    def peer(self) -> Role:
        return Role.BOB if self is Role.ALICE else Role.ALICE


class ReconciliationError(RuntimeError):
    """A protocol violation: unexpected message, wrong sizes, too many rounds."""


@dataclass(frozen=True, eq=False)
class Message:
    """One message of a reconciliation exchange.

    ``disclosed`` maps names to 0/1 arrays of key-dependent bits; ``public``
    carries key-independent data only. The repr shows sizes, never bits.
    """

    sender: Role
    kind: str
    disclosed: Mapping[str, Bits] = field(default_factory=dict)
    public: Mapping[str, PublicValue] = field(default_factory=dict)
    credit: int = 0

    def __post_init__(self) -> None:
        for name, bits in self.disclosed.items():
            if bits.dtype != np.uint8 or bits.ndim != 1:
                raise ReconciliationError(f"disclosed field {name!r} must be a 1-D uint8 array")
        if not 0 <= self.credit <= self.disclosed_bits:
            raise ReconciliationError("credit must lie between 0 and the disclosed bits")

    @property
    def disclosed_bits(self) -> int:
        """Number of key-dependent bits this message puts on the channel."""
        return sum(int(b.size) for b in self.disclosed.values())

    @property
    def leaked_bits(self) -> int:
        """What this message adds to λ_EC: disclosed bits less the justified credit."""
        return self.disclosed_bits - self.credit

    def __repr__(self) -> str:
        sizes = {k: int(v.size) for k, v in self.disclosed.items()}
        return (
            f"Message(sender={self.sender.value}, kind={self.kind!r}, disclosed_bits={sizes}, "
            f"public={sorted(self.public)}, credit={self.credit})"
        )


@dataclass
class LeakageLedger:
    """Key-dependent bits that crossed the channel, per direction."""

    sent_by: dict[Role, int] = field(default_factory=lambda: {Role.ALICE: 0, Role.BOB: 0})
    messages_by: dict[Role, int] = field(default_factory=lambda: {Role.ALICE: 0, Role.BOB: 0})

    def record(self, message: Message) -> None:
        self.sent_by[message.sender] += message.leaked_bits
        self.messages_by[message.sender] += 1

    @property
    def leaked_bits(self) -> int:
        """λ_EC: both directions together."""
        return self.sent_by[Role.ALICE] + self.sent_by[Role.BOB]

    @property
    def round_trips(self) -> int:
        """Exchanges counted as Bob's replies (each answers one or more of Alice's)."""
        return max(self.messages_by[Role.BOB], (self.messages_by[Role.ALICE] + 1) // 2)


@dataclass(frozen=True)
class Outcome:
    """What one party ends with.

    ``key`` is the party's reconciled key (frames given up by the protocol
    are removed at both ends alike); ``success`` whether the reconciler
    believes the keys agree (verification still decides); ``leaked_bits``
    λ_EC as this party counted it.
    """

    role: Role
    key: Bits
    success: bool
    leaked_bits: int
    round_trips: int
    frames: int = 1
    failed_frames: int = 0

    def __repr__(self) -> str:
        return (
            f"Outcome(role={self.role.value}, key_bits={self.key.size}, success={self.success}, "
            f"leaked_bits={self.leaked_bits}, round_trips={self.round_trips}, "
            f"frames={self.frames}, failed_frames={self.failed_frames})"
        )


class Party(ABC):
    """One end of a reconciliation: emits messages, consumes replies, counts leakage."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.ledger = LeakageLedger()

    def start(self) -> Message | None:
        """The opening message (Alice), or ``None`` for a party that waits."""
        return self._sent(self._start())

    def receive(self, message: Message) -> Message | None:
        """Consume the peer's message; return the reply, or ``None`` when done."""
        if message.sender is not self.role.peer:
            raise ReconciliationError(f"{self.role.value} got its own message back")
        self.ledger.record(message)
        return self._sent(self._receive(message))

    def _sent(self, message: Message | None) -> Message | None:
        if message is not None:
            if message.sender is not self.role:
                raise ReconciliationError("a party may only send messages as itself")
            self.ledger.record(message)
        return message

    @property
    @abstractmethod
    def finished(self) -> bool:
        """True once the party has its outcome."""

    @abstractmethod
    def outcome(self) -> Outcome:
        """The result; only valid when :attr:`finished`."""

    def _start(self) -> Message | None:
        return None

    @abstractmethod
    def _receive(self, message: Message) -> Message | None: ...


class Channel(ABC):
    """Carries messages between the parties; sees (and may record) every one."""

    @abstractmethod
    def transmit(self, message: Message) -> Message:
        """Deliver one message; returns what the receiver gets."""


class LocalChannel(Channel):
    """In-process channel with its own ledger, for tests and benchmarks."""

    def __init__(self, observer: Callable[[Message], None] | None = None) -> None:
        self.ledger = LeakageLedger()
        self._observer = observer

    def transmit(self, message: Message) -> Message:
        self.ledger.record(message)
        if self._observer is not None:
            self._observer(message)
        return message


@dataclass(frozen=True)
class LocalRun:
    alice: Outcome
    bob: Outcome
    ledger: LeakageLedger


def run_local(
    alice: Party, bob: Party, channel: Channel | None = None, *, max_messages: int = 10_000
) -> LocalRun:
    """Drive both parties to the end over an in-process channel."""
    if alice.role is not Role.ALICE or bob.role is not Role.BOB:
        raise ReconciliationError("run_local(alice, bob): roles swapped")
    chan = channel if channel is not None else LocalChannel()
    parties = {Role.ALICE: alice, Role.BOB: bob}
    message = alice.start()
    count = 0
    while message is not None:
        count += 1
        if count > max_messages:
            raise ReconciliationError("reconciliation exceeded its message budget")
        delivered = chan.transmit(message)
        message = parties[message.sender.peer].receive(delivered)
    if not (alice.finished and bob.finished):
        raise ReconciliationError("the exchange stopped before both parties finished")
    ledger = chan.ledger if isinstance(chan, LocalChannel) else alice.ledger
    return LocalRun(alice=alice.outcome(), bob=bob.outcome(), ledger=ledger)


def pack_bits(bits: Bits) -> bytes:
    """0/1 array → bytes (MSB first), for transports that carry bytes."""
    return np.packbits(bits).tobytes()


def unpack_bits(data: bytes, count: int) -> Bits:
    """Inverse of :func:`pack_bits`."""
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count)
