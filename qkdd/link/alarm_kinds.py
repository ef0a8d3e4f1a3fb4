"""Alarm kinds and levels (DESIGN §4), and the event that raises or clears one.

Kept apart from :mod:`qkdd.link.alarms` (the QBER test, which needs scipy) so that
whatever only names alarms — the health snapshot, metrics, the config — imports fast.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class AlarmLevel(enum.StrEnum):
    ABORT = "abort"  # the block is abandoned, the link enters ALARM
    WARNING = "warning"  # published, nothing aborted


class AlarmKind(enum.StrEnum):
    QBER_HIGH = "qber_high"
    KEY_LENGTH_ZERO = "key_length_zero"
    AUTH_FAILURE = "auth_failure"
    BLINDING_SUSPECT = "blinding_suspect"
    DEVICE_FAULT = "device_fault"
    PEER_LOST = "peer_lost"
    QBER_WARNING = "qber_warning"
    DECOY_RATIO_SHIFT = "decoy_ratio_shift"
    TIMING_SHIFT = "timing_shift"
    NET_KEY_NEGATIVE = "net_key_negative"
    STORE_FULL = "store_full"

    @property
    def level(self) -> AlarmLevel:
        return AlarmLevel.ABORT if self in _ABORT_KINDS else AlarmLevel.WARNING


_ABORT_KINDS = frozenset(
    {
        AlarmKind.QBER_HIGH,
        AlarmKind.KEY_LENGTH_ZERO,
        AlarmKind.AUTH_FAILURE,
        AlarmKind.BLINDING_SUSPECT,
        AlarmKind.DEVICE_FAULT,
        AlarmKind.PEER_LOST,
    }
)


@dataclass(frozen=True)
class AlarmEvent:
    """An alarm raised (``active``) or cleared, with the values that decided it."""

    kind: AlarmKind
    active: bool
    values: dict[str, float | int] = field(default_factory=dict)

    @property
    def level(self) -> AlarmLevel:
        return self.kind.level
