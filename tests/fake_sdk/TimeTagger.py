"""A stand-in for Swabian's ``TimeTagger`` SDK module: the documented calls, with test hooks.

Tags are generated deterministically: each started stream returns, per
``getData()`` call, one batch with ``EVENTS_PER_BATCH`` tags per channel at a
fixed spacing, shifted by the channel's input delay.
"""

from __future__ import annotations

import time

import numpy as np

EVENTS_PER_BATCH = 5
SPACING_PS = 1000
OPEN: list[_Tagger] = []


class _Tagger:
    def __init__(self, serial: str) -> None:
        if serial == "missing":
            raise RuntimeError("No Time Tagger with serial 'missing' found")
        if serial == "hang":  # a wedged USB stack: the call does not return in time
            time.sleep(1.5)
        self.serial = serial or "1910000ABC"
        self.trigger: dict[int, float] = {}
        self.delay: dict[int, int] = {}
        self.clock = 0
        self.freed = False

    def getModel(self) -> str:
        return "Time Tagger Ultra"

    def getSerial(self) -> str:
        return self.serial

    def setTriggerLevel(self, channel: int, voltage: float) -> None:
        self.trigger[channel] = voltage

    def setInputDelay(self, channel: int, delay: int) -> None:
        self.delay[channel] = delay


def createTimeTagger(serial: str = "") -> _Tagger:
    tagger = _Tagger(serial)
    OPEN.append(tagger)
    return tagger


def freeTimeTagger(tagger: _Tagger) -> None:
    tagger.freed = True
    OPEN.remove(tagger)


class _Buffer:
    def __init__(self, channels: np.ndarray, timestamps: np.ndarray, overflows: int) -> None:
        self._channels = channels
        self._timestamps = timestamps
        self._overflows = overflows

    def getChannels(self) -> np.ndarray:
        return self._channels

    def getTimestamps(self) -> np.ndarray:
        return self._timestamps

    def getOverflows(self) -> int:
        return self._overflows


class TimeTagStream:
    overflow_next = 0

    def __init__(self, tagger: _Tagger, n_max_events: int, channels: list[int]) -> None:
        self.tagger = tagger
        self.channels = channels
        self.running = False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def getData(self) -> _Buffer:
        if not self.running:
            return _Buffer(np.empty(0, np.int32), np.empty(0, np.int64), 0)
        t = self.tagger
        base = t.clock + SPACING_PS * np.arange(EVENTS_PER_BATCH, dtype=np.int64)
        chans = np.repeat(np.array(self.channels, dtype=np.int32), EVENTS_PER_BATCH)
        stamps = np.concatenate([base + t.delay.get(ch, 0) for ch in self.channels])
        order = np.argsort(stamps, kind="stable")
        t.clock += SPACING_PS * EVENTS_PER_BATCH
        overflows, TimeTagStream.overflow_next = TimeTagStream.overflow_next, 0
        return _Buffer(chans[order], stamps[order], overflows)


class Countrate:
    def __init__(self, tagger: _Tagger, channels: list[int]) -> None:
        self.channels = channels

    def startFor(self, duration_ps: int) -> None:
        self.duration_ps = duration_ps

    def waitUntilFinished(self) -> None:
        pass

    def getData(self) -> np.ndarray:
        return np.array([1000.0 * ch for ch in self.channels])
