"""``open_group``: the task tree that starts, supervises and tears down one group.

::

    open_group ── [placement, if any: reserved first, released last]
     └─ task group
     ├─ run.supervise() × N   shielded: messages, output, exit, reap   (launch/_run/)
     ├─ startup ── task group
     │   └─ run.start() × N   start (launch lock) → boot → await READY | exit | deadline
     ├─ body (the caller's block), in a cancel scope that a child's death cancels
     └─ finally: teardown, shielded and bounded

Each child's run (:class:`~launch._run.ChildRun`) owns that child from spawn to reap and
declares its failures; the group keeps the task tree, the first-failure policy (the first
failure cancels the startup and the body; nothing fails once the teardown runs) and the
teardown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
from anyio.abc import TaskGroup

from ._child import Child
from ._errors import ChildFailed, raise_failures, sole_exception
from ._placement import Placement, check_placement
from ._run import ChildRun
from ._spec import ProcessSpec, ShutdownPolicy, validate_group
from ._start.spawn import Starter, start_child
from ._teardown import Unreaped, teardown
from ._timeline import Timeline, group_timeline

logger = logging.getLogger("launch")


class Group:
    """Children started together and supervised as one unit.

    ``group["name"]`` is a :class:`Child` (``KeyError`` for an unknown name);
    ``group.children`` keeps spec order; iterating a group gives its children and
    ``len(group)`` their number. Made by :func:`open_group` (and by
    :func:`open_pipeline`, one per stage), not by hand.

    Attributes:
        name (str): The group's name (a pipeline stage's name, for a stage).
        shutdown (ShutdownPolicy): How its children are stopped.
        children (tuple[Child, ...]): Its children, in spec order.
        failures (list[ChildFailed]): The failures seen so far, in the order they were
            declared: what :class:`LaunchFailed` is raised with.
        unreaped (list[Unreaped]): The children that survived SIGKILL at the last
            teardown (also added as notes to the :class:`LaunchFailed`).
        started_at (float | None): ``time.monotonic()`` when the group started (a
            stage's is the pipeline's start); None before.
    """

    def __init__(
        self,
        name: str,
        specs: Iterable[ProcessSpec],
        shutdown: ShutdownPolicy,
        env_overlay: Mapping[str, str] | None = None,
        starter: Starter = start_child,
    ) -> None:
        self.name = name
        self.shutdown = shutdown
        self._runs = tuple(
            ChildRun(spec, name, declare=self._declare, overlay=env_overlay, starter=starter)
            for spec in specs
        )
        self.children: tuple[Child, ...] = tuple(run.child for run in self._runs)
        self._by_name = {child.name: child for child in self.children}
        self.failures: list[ChildFailed] = []
        self.unreaped: list[Unreaped] = []
        self.started_at: float | None = None  # time.monotonic() when the group started
        self._stopping = False
        self._startup_scope: anyio.CancelScope | None = None
        self._body_scope: anyio.CancelScope | None = None

    def __getitem__(self, name: str) -> Child:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(
                f"group {self.name!r} has no child {name!r}; children: {', '.join(self._by_name)}"
            ) from None

    def __iter__(self) -> Iterator[Child]:
        return iter(self.children)

    def __len__(self) -> int:
        return len(self.children)

    def __repr__(self) -> str:
        return f"<Group {self.name!r} {[str(c.state) for c in self.children]}>"

    @property
    def timeline(self) -> Timeline:
        """Every child's spawn, lock wait, boot, phases, READY, stop and exit, as a
        :class:`Timeline` with offsets from the group's start (open slices end now)."""
        return group_timeline(self)

    def _use_starter(self, starter: Starter) -> None:
        """Start every child through ``starter`` (a placement's, once it is reserved);
        only before the group runs."""
        assert not any(run.process is not None for run in self._runs), "started already"
        for run in self._runs:
            run.starter = starter

    # --- the first-failure policy ---

    def _declare(self, failure: ChildFailed) -> None:
        """A child's run declares ``failure``: record it and cancel the startup and the
        body. Once the teardown runs, a child that exits is collateral, and a child that
        already failed fails once."""
        if self._stopping or any(failed.name == failure.name for failed in self.failures):
            return
        logger.error("%s", failure.summary())
        self.failures.append(failure)
        for scope in (self._startup_scope, self._body_scope):
            if scope is not None:
                scope.cancel()

    # --- the task tree ---

    def _supervise_all(self, tg: TaskGroup) -> None:
        # start_soon, not start: a start() cancelled before the shielded supervisor
        # reported would wait for that supervisor, which waits for the teardown (trio
        # leaves it in the cancelled start nursery; anyio's asyncio start waits for it).
        # Both backends run a new task's first step, which enters the shield, before
        # they deliver a cancel to it.
        for run in self._runs:
            tg.start_soon(run.supervise, name=f"watch {self.name}/{run.name}")

    async def _startup(self) -> None:
        with anyio.CancelScope() as self._startup_scope:
            async with anyio.create_task_group() as tg:
                for run in self._runs:
                    tg.start_soon(run.start, name=f"start {self.name}/{run.name}")
        self._startup_scope = None

    async def _teardown(self) -> None:
        self._stopping = True
        for run in self._runs:  # startup is over: no spawn is coming for the rest
            run.startup_over()
        self.unreaped = await teardown(self._runs, self.shutdown)
        self._complete_failures()

    def _complete_failures(self) -> None:
        """Fill in what failures declared before their child had finished exiting lack:
        its exit code, and its last lines, read while it exited."""
        for failure in self.failures:
            failed = self._by_name.get(failure.name)
            if failed is None:
                continue
            if failure.exitcode is None:
                failure.exitcode = failed.exitcode
            if not failure.output_tail:
                failure.output_tail = failed.output_tail or None


@asynccontextmanager
async def running_group(group: Group) -> AsyncIterator[Group]:
    """Run ``group``'s task tree around the caller's block (see :func:`open_group`)."""
    unwrapped: BaseException | None = None
    if group.started_at is None:  # a pipeline's stage keeps the pipeline's start
        group.started_at = time.monotonic()
    # A cancel that is already pending wins before anything is spawned.
    await anyio.lowlevel.checkpoint()
    try:
        async with anyio.create_task_group() as tg:
            try:
                group._supervise_all(tg)
                await group._startup()
                if not group.failures:
                    with anyio.CancelScope() as group._body_scope:
                        yield group
                    group._body_scope = None
            finally:
                await group._teardown()
    except BaseExceptionGroup as eg:
        # Our own tasks never raise; what is here came from the caller's block (or a cancel).
        unwrapped = sole_exception(eg)
        if unwrapped is None:
            raise
    if unwrapped is not None:
        raise unwrapped  # outside the except: no "during handling" chain onto the group
    raise_failures(group.name, group.failures, group.unreaped)


@asynccontextmanager
async def placed_group(
    group: Group, placement: AbstractAsyncContextManager[Starter]
) -> AsyncIterator[Group]:
    """Run ``group`` with its children started through ``placement``'s starter: the
    placement is entered first and left last, in this task, so every child is stopped
    and reaped before the placement releases what it reserved. The group's clock starts
    before the reservation (a timeline shows the wait for it)."""
    if group.started_at is None:
        group.started_at = time.monotonic()
    async with placement as starter:
        group._use_starter(starter)
        async with running_group(group) as running:
            yield running


def open_group(
    specs: Iterable[ProcessSpec],
    *,
    name: str = "group",
    shutdown: ShutdownPolicy | None = None,
    placement: Placement | None = None,
) -> AbstractAsyncContextManager[Group]:
    """Start ``specs`` concurrently; enter the block once every child is READY.

    While the block runs, a child exiting cancels it and :class:`LaunchFailed` is raised.
    Leaving the block stops every child (cooperative stop, SIGTERM, SIGKILL) and reaps
    them all, also on error or cancellation. Raises ``ValueError`` for invalid specs
    before anything is spawned.

    Args:
        specs: The children to start: a non-empty list of :class:`ProcessSpec` with
            unique names.
        name: The group's name, used in messages, errors and the timeline.
        shutdown: How children are stopped; ``None`` for the default
            :class:`ShutdownPolicy`.
        placement: Where the children run; ``None`` (the default) for this machine.
            A :class:`~launch.integrations.ray.RayPlacement` places child ``i`` in its
            bundle ``i`` on a Ray cluster: the bundles are reserved before any child
            starts, and released after every child is reaped (docs/multinode.md).

    Returns:
        An async context manager; ``async with`` it gives the running :class:`Group`
        once every child is READY. An exception raised in the block propagates as
        itself (not wrapped in an exception group), after every child is stopped.

    Raises:
        ValueError: ``specs`` is invalid (empty, a single :class:`ProcessSpec` instead
            of a list, something else than a :class:`ProcessSpec`, or duplicate
            names), or does not fit ``placement`` (more children than bundles);
            raised by the call itself, before anything is spawned.
        TypeError: ``placement`` is not a placement (it has no ``open`` method).
        PlacementError: On entering, when the placement cannot reserve room for the
            children (:class:`~launch.integrations.ray.PlacementError`: the bundles
            were not placed within ``placement_timeout``); raised as itself, nothing
            was started and nothing is left reserved.
        LaunchFailed: On entering, when a child fails to spawn, crashes or misses
            its ``ready_timeout`` (its siblings are torn down first); on leaving, when
            a child died while the block ran (the block was cancelled). Its leaves are
            :class:`ChildFailed`; :attr:`LaunchFailed.first` is the root cause.
    """
    specs = validate_group(specs, name)
    checked = check_placement(placement, f"open_group {name!r}")
    if checked is None:
        return running_group(Group(name, specs, shutdown or ShutdownPolicy()))
    opened = checked.open(specs, name)  # may refuse the specs: before anything is made
    return placed_group(Group(name, specs, shutdown or ShutdownPolicy()), opened)
