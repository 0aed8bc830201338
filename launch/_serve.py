"""Holding a launch tree open in a task of its own until asked to stop: what the
blocking facade, the ASGI lifespan and the test launcher all do."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus

from ._errors import LaunchFailed

T = TypeVar("T")


async def serve_until_stopped(
    tree: AbstractAsyncContextManager[T],
    stop: anyio.Event,
    *,
    on_ready: Callable[[T], None] | None = None,
    task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
) -> LaunchFailed | None:
    """Enter ``tree`` (an ``open_group`` / ``open_pipeline``), call ``on_ready`` and
    report the running tree through ``task_status`` once every child is READY, then hold
    it until ``stop`` is set and leave it (every child stopped and reaped).

    A startup failure raises (``tg.start`` re-raises it to the starter); a failure after
    READY (a child died, its siblings were torn down) is returned.
    """
    started = False
    try:
        async with tree as running:
            started = True
            if on_ready is not None:
                on_ready(running)
            task_status.started(running)
            await stop.wait()
    except LaunchFailed as exc:
        if not started:
            raise
        return exc
    return None
