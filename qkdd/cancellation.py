"""Cancelling tasks so that they really end.

On Python 3.11, ``asyncio.wait_for`` can swallow a cancellation: when the future it
waits on completes in the same loop iteration as the cancel, it returns the result
and the task runs on (CPython gh-86296; fixed in 3.12, whose ``wait_for`` is built on
``asyncio.timeout``). aiomqtt awaits every publish and subscribe through it, so a
publisher task cancelled mid-publish under load could carry on and wait forever for
work that never came, holding a stopping daemon (seen with twenty daemons on two
cores). :func:`cancel_and_wait` cancels again until each task has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

#: How long a cancelled task may run on before it is cancelled again.
RECANCEL_S = 0.5


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel every task and return once all have ended, cancelling again any that
    swallowed the cancellation. A cancellation of the caller itself is passed on
    after the tasks have ended."""
    pending = {t for t in tasks if not t.done()}
    cancelled_meanwhile = False
    while pending:
        for task in pending:
            task.cancel()
        try:
            _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
        except asyncio.CancelledError:
            cancelled_meanwhile = True  # finish the job first: no task left behind
    if cancelled_meanwhile:
        raise asyncio.CancelledError
