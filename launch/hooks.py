"""Hooks for integrations: the few launch internals that code bridging launch and another
launcher (vLLM's executors, an ASGI server's lifespan, a test plugin) needs.

An application that only starts trees needs none of these: ``launch`` itself has
everything it uses. These are for code that runs its own processes or event-loop tasks
next to launch's, in the same process: ``launch.integrations`` and ``launch.testing``
use them and nothing else of launch's internals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus

from ._errors import LaunchFailed
from ._errors import sole_exception as _sole_exception
from ._serve import serve_until_stopped as _serve_until_stopped
from ._start.forkserver import FORKSERVER
from ._start.lock import LAUNCH_LOCK

T = TypeVar("T")

__all__ = [
    "environ_lock",
    "forkserver_pid",
    "serve_until_stopped",
    "sole_exception",
    "stop_forkserver",
    "wait_forkserver_warm",
]


@contextmanager
def environ_lock() -> Iterator[None]:
    """Hold launch's lock while reading or changing ``os.environ`` around a process
    start that launch does not make.

    Every process launch starts (any start method, and its forkserver) is started under
    this lock, and so is every change launch makes to ``os.environ``. Code that sets
    variables, starts a process that inherits them, then restores them (vLLM does, for
    each worker's OpenMP settings) must hold it for the whole of that: otherwise a launch
    child started meanwhile inherits the half-changed environment, and the code may read
    launch's changes as its own. Re-entrant; hold it briefly (every launch start in the
    process waits for it), and never await or wait for a launch child while holding it.

    Returns:
        A context manager; the lock is held inside its block.
    """
    with LAUNCH_LOCK:
        yield


def forkserver_pid() -> int | None:
    """The pid of launch's forkserver in this process, while it runs.

    The server is a child of this process that it keeps (one per process, started by
    :func:`launch.prewarm` or the first ``forkserver`` child): a leak check must allow
    it, and while it is unreaped its pid cannot have been reused.

    Returns:
        The pid, or None when no server runs.
    """
    return FORKSERVER.pid


def wait_forkserver_warm() -> None:
    """Block until launch's forkserver runs and has imported every module asked of it
    (:func:`launch.prewarm`, a pipeline's ``preload``): a ``forkserver`` child started
    then needs no import. Blocking: call it in a worker thread from async code.

    Raises:
        ForkserverError: the server cannot serve (it died as soon as it was started, or
            refused to fork because importing a module initialised CUDA in it).
        OSError: the server could not be started.
    """
    FORKSERVER.wait_warm()


def stop_forkserver() -> None:
    """Stop launch's forkserver now rather than at the process's exit, and reap it
    (bounded: a couple of seconds, then SIGKILL). A later ``forkserver`` child starts a
    fresh one. For a process about to leave with ``os._exit``, which skips the exit
    handler that would stop it.
    """
    FORKSERVER.stop()


async def serve_until_stopped(
    tree: AbstractAsyncContextManager[T],
    stop: anyio.Event,
    *,
    on_ready: Callable[[T], None] | None = None,
    task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
) -> LaunchFailed | None:
    """Hold a launch tree open in a task of its own until ``stop`` is set: what a
    blocking facade, a server's lifespan or a test fixture runs in
    ``await task_group.start(serve_until_stopped, tree, stop)``.

    Args:
        tree: an unentered ``launch.open_group(...)`` or ``launch.open_pipeline(...)``.
        stop: set it to leave the tree (every child stopped and reaped).
        on_ready: called with the running tree once every child is READY, before the
            starter is told.
        task_status: reports the running tree to ``task_group.start`` once READY.

    Returns:
        None once stopped; the :class:`~launch.LaunchFailed` of a child that failed
        after READY (its siblings torn down already).

    Raises:
        LaunchFailed: startup failed (``task_group.start`` re-raises it to the starter).
    """
    return await _serve_until_stopped(tree, stop, on_ready=on_ready, task_status=task_status)


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside ``group``, through nested task-group wrappers, or None.

    For code that holds a launch tree inside a task group of its own: the caller's
    exception (or a cancel, or a KeyboardInterrupt) comes out wrapped once per task
    group it crossed. Re-raise what this returns, so the caller gets its own exception
    as if there were no task group::

        unwrapped = None
        try:
            async with anyio.create_task_group() as tg:
                ...
        except BaseExceptionGroup as eg:
            unwrapped = sole_exception(eg)
            if unwrapped is None:
                raise
        if unwrapped is not None:
            raise unwrapped  # outside the except: not chained to the group

    A :class:`~launch.LaunchFailed` (an exception group itself) is never unwrapped.

    Args:
        group: what a task group raised.

    Returns:
        The single exception inside plain exception groups of one, or None when some
        group holds several.
    """
    return _sole_exception(group)
