"""cancel_and_wait: tasks end even when one swallows its cancellation (as Python
3.11's asyncio.wait_for can, inside every aiomqtt publish)."""

from __future__ import annotations

import asyncio
import time

import pytest

from qkdd.cancellation import RECANCEL_S, cancel_and_wait


async def _swallows_once_then_waits_forever(swallowed: asyncio.Event) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        swallowed.set()  # carries on, as wait_for does when its future just completed
    await asyncio.Event().wait()


async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again() -> None:
    swallowed = asyncio.Event()
    stubborn = asyncio.create_task(_swallows_once_then_waits_forever(swallowed))
    plain = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    began = time.monotonic()
    await asyncio.wait_for(cancel_and_wait([stubborn, plain]), 10)
    assert swallowed.is_set()
    assert stubborn.cancelled() and plain.cancelled()
    assert time.monotonic() - began < RECANCEL_S * 4


async def test_a_plain_cancel_would_have_hung() -> None:
    """The premise: one cancel is not enough for such a task."""
    swallowed = asyncio.Event()
    stubborn = asyncio.create_task(_swallows_once_then_waits_forever(swallowed))
    await asyncio.sleep(0)
    stubborn.cancel()
    done, _ = await asyncio.wait({stubborn}, timeout=2 * RECANCEL_S)
    assert not done and swallowed.is_set()
    await cancel_and_wait([stubborn])


async def test_finished_tasks_keep_their_results_and_the_callers_cancel_passes_on() -> None:
    finished = asyncio.create_task(asyncio.sleep(0, result=7))
    await finished
    swallowed = asyncio.Event()
    stubborn = asyncio.create_task(_swallows_once_then_waits_forever(swallowed))
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_and_wait([finished, stubborn]))
    await asyncio.sleep(0.05)
    caller.cancel()  # the caller itself is cancelled while it waits
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert stubborn.cancelled()  # ...but not before the task has ended
    assert finished.result() == 7
