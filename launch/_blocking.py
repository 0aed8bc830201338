"""The blocking facade: ``start_group`` and ``start_pipeline`` for synchronous callers.

Each runs the async API in an event loop of its own, in a thread that an anyio blocking
portal owns (and joins on exit), so it works from a plain script, from several threads
at once, and from a thread whose asyncio loop is already running.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager, contextmanager
from typing import Any, Generic, Literal, TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._child import Child
from ._errors import LaunchFailed
from ._group import Group, open_group
from ._pipeline import Pipeline, open_pipeline
from ._pipeline_spec import PipelineSpec
from ._serve import serve_until_stopped
from ._spec import ProcessSpec, ShutdownPolicy

Backend = Literal["trio", "asyncio"]
OnFailure = Callable[[LaunchFailed], object]
R = TypeVar("R", Group, Pipeline)


class _Running(Generic[R]):
    """What both handles share: the running tree in the portal's loop, stop and wait."""

    def __init__(self, running: R, portal: BlockingPortal, stop: anyio.Event) -> None:
        self._running: R = running
        self._portal = portal
        self._stop = stop
        self._future: concurrent.futures.Future[None] | None = None
        self._reported = False  # the failure has reached the caller once already

    @property
    def name(self) -> str:
        """The group's or pipeline's name."""
        return self._running.name

    @property
    def children(self) -> tuple[Child, ...]:
        """Every child, in spec (and stage) order."""
        return self._running.children

    @property
    def running(self) -> bool:
        """True until the tree has stopped (asked to, or because a child died)."""
        return self._future is not None and not self._future.done()

    def stop(self) -> None:
        """Stop every child and reap it; raises :class:`LaunchFailed` if a child had
        died (once: not again after ``wait()`` raised it). Safe to call more than once,
        and from any thread.

        A Ctrl-C while the children are being stopped does not cut the (bounded)
        teardown short: it is finished first, then the ``KeyboardInterrupt`` is raised.

        Raises:
            LaunchFailed: A child had died after READY and no earlier ``stop()`` or
                ``wait()`` raised that failure yet.
        """
        if self._future is None:
            return
        if not self._future.done():
            try:
                self._portal.call(self._stop.set)
            except RuntimeError:
                pass  # the portal's loop is already gone: the task has ended
        interrupted: KeyboardInterrupt | None = None
        while True:
            try:
                self._result(None)
                break
            except KeyboardInterrupt as exc:
                # Another Ctrl-C while the children are being stopped: the teardown is
                # bounded, so it is finished first (abandoning it would leave children
                # nobody reaps), then the interrupt goes on.
                interrupted = exc
            except LaunchFailed:
                if interrupted is None:
                    raise
                break
        if interrupted is not None:
            raise interrupted

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the tree stops: raises :class:`LaunchFailed` if a child died,
        returns True if it was stopped, False if ``timeout`` passed first.

        Args:
            timeout: The most seconds to wait; ``None`` to wait until the tree stops.

        Returns:
            True once the tree has stopped (also after a failure that was already
            raised once), False if ``timeout`` passed first.

        Raises:
            LaunchFailed: A child died after READY (its siblings were torn down), the
                first time ``wait()`` or ``stop()`` meets that failure.
        """
        try:
            self._result(timeout)
        except concurrent.futures.TimeoutError:
            return False
        return True

    def _result(self, timeout: float | None) -> None:
        assert self._future is not None
        try:
            self._future.result(timeout)
        except LaunchFailed:
            if not self._reported:
                self._reported = True
                raise


class GroupHandle(_Running[Group]):
    """A running group, for synchronous code: ``handle["name"]`` is a :class:`Child`.

    Iterating the handle gives the children in spec order; ``handle["name"]`` raises
    ``KeyError`` for an unknown name. Made by :func:`start_group`, not by hand;
    :meth:`stop` and :meth:`wait` may be called from any thread.
    """

    @property
    def group(self) -> Group:
        """The underlying :class:`Group` (read its attributes; do not await on it)."""
        return self._running

    def __getitem__(self, name: str) -> Child:
        return self._running[name]

    def __iter__(self) -> Iterator[Child]:
        return iter(self._running)


class PipelineHandle(_Running[Pipeline]):
    """A running pipeline, for synchronous code: ``handle["stage"]`` is that stage's
    :class:`Group`.

    ``handle["stage"]`` raises ``KeyError`` for an unknown stage. Made by
    :func:`start_pipeline`, not by hand; :meth:`stop` and :meth:`wait` may be called
    from any thread.
    """

    @property
    def pipeline(self) -> Pipeline:
        """The underlying :class:`Pipeline` (read its attributes; do not await on it)."""
        return self._running

    def __getitem__(self, stage: str) -> Group:
        return self._running[stage]


async def _serve(
    open_tree: Callable[[], AbstractAsyncContextManager[Any]],
    stop: anyio.Event,
    on_failure: OnFailure | None,
    *,
    task_status: TaskStatus[Any],
) -> None:
    failure = await serve_until_stopped(open_tree(), stop, task_status=task_status)
    if failure is not None:
        if on_failure is not None:
            on_failure(failure)
        raise failure


@contextmanager
def _start(
    open_tree: Callable[[], AbstractAsyncContextManager[Any]],
    handle_type: type[_Running[Any]],
    backend: Backend,
    on_failure: OnFailure | None,
) -> Iterator[Any]:
    if backend not in ("trio", "asyncio"):
        raise ValueError(f"backend must be 'trio' or 'asyncio', got {backend!r}")
    with start_blocking_portal(backend) as portal:
        stop = portal.call(anyio.Event)
        future, running = portal.start_task(_serve, open_tree, stop, on_failure)
        handle = handle_type(running, portal, stop)
        handle._future = future
        try:
            yield handle
        except BaseException as exc:
            try:
                handle.stop()
            except LaunchFailed as failure:
                exc.add_note(f"meanwhile the launch tree failed too: {failure.first.summary()}")
            raise
        handle.stop()


def start_group(
    specs: Iterable[ProcessSpec],
    *,
    name: str = "group",
    shutdown: ShutdownPolicy | None = None,
    backend: Backend = "trio",
    on_child_died: OnFailure | None = None,
) -> AbstractContextManager[GroupHandle]:
    """Blocking ``open_group``: start ``specs``, return once every child is READY.

    ``with launch.start_group(specs) as group: group["w0"].payload``. Leaving the block
    stops and reaps every child. Raises what ``open_group`` raises: ``ValueError`` for
    bad specs, :class:`LaunchFailed` when startup fails. A child dying after READY ends
    the group (its siblings are torn down at once); ``group.wait()`` and leaving the
    block then raise :class:`LaunchFailed`, and ``on_child_died(exc)`` is called first,
    in the event loop's thread (keep it short). ``backend``: ``"trio"`` or ``"asyncio"``.

    Args:
        specs: The children to start: a non-empty list of :class:`ProcessSpec` with
            unique names.
        name: The group's name, used in messages, errors and the timeline.
        shutdown: How children are stopped; ``None`` for the default
            :class:`ShutdownPolicy`.
        backend: The event loop the group runs in, in a thread of its own:
            ``"trio"`` (default) or ``"asyncio"``.
        on_child_died: Called with the :class:`LaunchFailed` when a child dies after
            READY, in the event loop's thread, before ``wait()`` or leaving the block
            raises it.

    Returns:
        A context manager; ``with`` it gives a :class:`GroupHandle` once every child
        is READY, and leaving it stops and reaps every child.

    Raises:
        ValueError: On entering: ``specs`` is invalid (as for :func:`open_group`) or
            ``backend`` is neither ``"trio"`` nor ``"asyncio"``.
        LaunchFailed: On entering, when startup fails (a child fails to spawn,
            crashes or misses its ``ready_timeout``); on leaving, when a child died
            after READY and ``wait()`` or ``stop()`` has not raised it already.
    """
    specs = list(specs)
    return _start(
        lambda: open_group(specs, name=name, shutdown=shutdown),
        GroupHandle,
        backend,
        on_child_died,
    )


def start_pipeline(
    spec: PipelineSpec,
    *,
    backend: Backend = "trio",
    on_child_died: OnFailure | None = None,
) -> AbstractContextManager[PipelineHandle]:
    """Blocking ``open_pipeline``: start every stage, return once all are READY.

    ``with launch.start_pipeline(spec) as running: running["talker"]``. The same
    exceptions, stop, ``wait()`` and ``on_child_died`` as :func:`start_group`.

    Args:
        spec: The pipeline to start.
        backend: The event loop the pipeline runs in, in a thread of its own:
            ``"trio"`` (default) or ``"asyncio"``.
        on_child_died: Called with the :class:`LaunchFailed` when a child dies after
            READY, in the event loop's thread, before ``wait()`` or leaving the block
            raises it.

    Returns:
        A context manager; ``with`` it gives a :class:`PipelineHandle` once every stage
        is READY, and leaving it stops every stage and reaps every child.

    Raises:
        TypeError: ``spec`` is not a :class:`PipelineSpec`; raised by the call itself.
        ValueError: On entering: ``backend`` is neither ``"trio"`` nor ``"asyncio"``.
        LaunchFailed: On entering, when startup fails (a child fails to spawn,
            crashes or misses its ``ready_timeout``, or a stage cannot lock its
            devices); on leaving, when a child died after READY and ``wait()`` or
            ``stop()`` has not raised it already.
    """
    if not isinstance(spec, PipelineSpec):
        raise TypeError(f"start_pipeline expects a PipelineSpec, got {type(spec).__name__}")
    return _start(lambda: open_pipeline(spec), PipelineHandle, backend, on_child_died)
