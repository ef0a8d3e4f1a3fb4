"""Run a blocking transport off the event loop, safely.

One worker thread and one lock per instrument: commands never interleave, a
slow instrument never blocks the loop, and every call has an asyncio guard
timeout above the transport's own. After a timeout the input is discarded so
a late reply cannot answer the next query; after a dropped connection the
next call reconnects, with exponential back-off between attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from qkdd.instruments.interfaces import InstrumentTimeout, InstrumentUnavailable
from qkdd.instruments.transports import Transport, TransportClosed, TransportTimeout
from qkdd.logging import get_logger

T = TypeVar("T")

_GUARD_MARGIN_S = 1.0


class BlockingWorker:
    """One thread and one lock: blocking calls (a vendor SDK, a driver stack) off the loop.

    Calls run one at a time, in order, each under an asyncio guard timeout.
    """

    def __init__(self, name: str, guard_timeout_s: float) -> None:
        self.name = name
        self.guard_timeout_s = guard_timeout_s
        self.lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"instr-{name}")

    async def call_locked(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the worker; the caller holds :attr:`lock`."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn)
        try:
            return await asyncio.wait_for(future, self.guard_timeout_s)
        except TimeoutError:
            raise InstrumentTimeout(
                f"{self.name}: no answer within {self.guard_timeout_s:.1f} s"
            ) from None

    async def call(self, fn: Callable[[], T]) -> T:
        async with self.lock:
            return await self.call_locked(fn)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class InstrumentSession:
    """Serialised, timed, self-healing access to one instrument's transport."""

    def __init__(
        self,
        name: str,
        transport: Transport,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.name = name
        self.transport = transport
        self._worker = BlockingWorker(name, transport.timeout_s + _GUARD_MARGIN_S)
        self._lock = self._worker.lock
        self._open = False
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._backoff_s = 0.0
        self._next_attempt = 0.0
        self._log = get_logger("instruments", instrument=name)

    @property
    def connected(self) -> bool:
        return self._open

    async def _in_worker(self, fn: Callable[[], T]) -> T:
        try:
            return await self._worker.call_locked(fn)
        except InstrumentTimeout:
            # The worker is stuck in the driver stack; treat the link as broken.
            self._open = False
            raise

    async def open(self) -> None:
        """Connect now (raises InstrumentUnavailable with the reason if it cannot)."""
        async with self._lock:
            await self._ensure_open(force=True)

    async def _ensure_open(self, force: bool = False) -> None:
        if self._open:
            return
        now = time.monotonic()
        if not force and now < self._next_attempt:
            raise InstrumentUnavailable(
                f"{self.name}: disconnected; next reconnect in {self._next_attempt - now:.1f} s"
            )
        try:
            await self._in_worker(self.transport.close)
            await self._in_worker(self.transport.open)
        except (TransportClosed, TransportTimeout, InstrumentTimeout) as exc:
            self._backoff_s = min(
                self._backoff_max_s, max(self._backoff_initial_s, 2 * self._backoff_s)
            )
            self._next_attempt = time.monotonic() + self._backoff_s
            self._log.warning("connect failed", reason=str(exc), retry_in_s=self._backoff_s)
            raise InstrumentUnavailable(str(exc)) from None
        if self._backoff_s:
            self._log.info("reconnected")
        self._open = True
        self._backoff_s = 0.0

    async def run(self, operation: Callable[[Transport], T]) -> T:
        """Run ``operation(transport)`` exclusively in the worker thread.

        Use it for multi-step exchanges (write a block, then read) that must
        not interleave with other commands.
        """
        async with self._lock:
            await self._ensure_open()
            try:
                return await self._in_worker(lambda: operation(self.transport))
            except TransportTimeout as exc:
                try:
                    await self._in_worker(self.transport.discard_input)
                except (TransportClosed, TransportTimeout):
                    self._open = False
                raise InstrumentTimeout(str(exc)) from None
            except TransportClosed as exc:
                self._open = False
                self._next_attempt = time.monotonic()  # first reconnect at once
                raise InstrumentUnavailable(str(exc)) from None

    async def write(self, command: str) -> None:
        await self.run(lambda t: t.write(command))

    async def query(self, command: str) -> str:
        def exchange(t: Transport) -> str:
            t.write(command)
            return t.read_line()

        return await self.run(exchange)

    async def write_raw(self, data: bytes) -> None:
        await self.run(lambda t: t.write_raw(data))

    async def close(self) -> None:
        async with self._lock:
            if self._open:
                with contextlib.suppress(InstrumentTimeout):
                    await self._in_worker(self.transport.close)
            self._open = False
        self._worker.shutdown()
