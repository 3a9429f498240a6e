"""Cancellation that always ends a connector: the rules the connector code follows, and their helpers.

A connector runs until its task is cancelled; the service then waits for it to end (`runtime.wait_stopped`).
Three things can keep a cancelled connector running:

* `asyncio.wait_for` on Python 3.11 returns the inner result instead of raising CancelledError when the task
  is cancelled in the same loop iteration in which the awaited operation completes (CPython gh-86296 /
  bpo-42130, fixed in 3.12, where wait_for is built on `asyncio.timeout`). A poll or watchdog loop that got
  its read result instead of its cancellation simply goes on, for ever. So connector code puts timeouts on
  operations with `asyncio.timeout`, which never swallows a cancellation from outside.
* Libraries below us can swallow it the same way: pymodbus awaits every response with `asyncio.wait_for`,
  asyncua opens its socket with it, and pymodbus before 3.16 turns a cancelled request into a
  `ModbusIOException` (pymodbus#3009). A swallowed cancellation stays visible in `Task.cancelling()`, so every
  connector loop awaits `check_cancelled()` on each turn and after each library call it cannot trust.
* Clean-up that talks to a peer (an OPC UA CloseSession, waiting for a helper task) can outlast any
  timeout put around it when the code it waits for handles cancellation slowly. `wait_ended` waits a bounded
  time and tells whether the task ended; whoever called it moves on either way.
"""

from __future__ import annotations

import asyncio
from typing import Any


def cancel_requested() -> bool:
    """True when the current task was asked to stop and has not stopped yet (possibly swallowed below us).

    `asyncio.timeout` and `TaskGroup` withdraw the cancellations they make themselves (`Task.uncancel`), so
    outside their blocks a count above zero is a cancellation from whoever owns the task.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def check_cancelled() -> None:
    """Raise CancelledError if the current task was cancelled and has not ended: a cancellation still pending
    is delivered (by yielding once), one that something below us swallowed is raised again."""
    if cancel_requested():
        await asyncio.sleep(0)
        raise asyncio.CancelledError()


async def wait_ended(task: asyncio.Future[Any], timeout: float) -> bool:
    """Wait at most `timeout` seconds for `task` to end; True if it did (its outcome is then retrieved).

    Unlike `with suppress(CancelledError): await task`, this never swallows a cancellation of the *calling*
    task: that propagates at once (and `task` is left to end on its own).
    """
    if not task.done():
        await asyncio.wait({task}, timeout=timeout)
    if not task.done():
        return False
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log "exception was never retrieved"
    return True


async def stop_task(task: asyncio.Future[Any], timeout: float) -> bool:
    """Cancel `task` and wait at most `timeout` seconds for it to end; True if it did."""
    task.cancel()
    return await wait_ended(task, timeout)
