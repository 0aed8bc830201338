"""``open_group``: the task tree that starts, supervises and tears down one group.

::

    open_group ── task group
     ├─ watch(child) × N    shielded: read its control socket, wait for its exit, reap it
     ├─ startup ── task group
     │   └─ start(child) × N   spawn in to_thread.run_sync (launch lock) → send boot
     │                         → await READY | exit | deadline
     ├─ body (the caller's block), in a cancel scope that a child's death cancels
     └─ finally: teardown, shielded and bounded
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio

from ._channel import ControlChannel, ProtocolError
from ._child import Child, ChildState
from ._errors import (
    ChildCrashed,
    ChildDied,
    ChildFailed,
    ReadyTimeout,
    SpawnFailed,
    raise_failures,
    sole_exception,
)
from ._output import OutputPump
from ._spec import ProcessSpec, ShutdownPolicy, validate_group
from ._start.forkserver import FORKSERVER, ForkserverError
from ._start.spawn import build_boot, spawn, spawn_failed
from ._teardown import Unreaped, teardown
from ._timeline import Timeline, group_timeline

logger = logging.getLogger("launch")

_DRAIN_S = 0.5  # after a child exits, how long its last messages may take to arrive


def _failed_at(child: Child) -> float:
    """When the child failed by its own clock where it said so (its exception report;
    ``time.monotonic()`` is one system-wide clock on Linux), else when it exited, else
    now: the root cause is the earliest failure, not the first one the parent noticed."""
    if child._error is not None:
        return child._error.at
    if child.times.exited is not None:
        return child.times.exited
    return time.monotonic()


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
    ) -> None:
        self.name = name
        self.shutdown = shutdown
        self.children: tuple[Child, ...] = tuple(Child(spec, name) for spec in specs)
        self._by_name = {child.name: child for child in self.children}
        self.failures: list[ChildFailed] = []
        self.unreaped: list[Unreaped] = []
        self._env_overlay = dict(env_overlay or {})
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

    # --- failures ---

    def _fail(self, failure: ChildFailed) -> None:
        logger.error("%s", failure.summary())
        self.failures.append(failure)
        for scope in (self._startup_scope, self._body_scope):
            if scope is not None:
                scope.cancel()

    def _failure(self, cls: type[ChildFailed], child: Child, detail: str = "") -> ChildFailed:
        report = child._error
        return cls(
            child.name,
            group=self.name,
            pid=child.pid,
            exitcode=child.exitcode,
            phase=report.phase if report is not None and report.phase else child.phase,
            remote_traceback=report.traceback if report is not None else None,
            remote_type=report.type_name if report is not None else None,
            remote_message=report.message if report is not None else None,
            spawned_at=child.times.spawned,
            failed_at=_failed_at(child),
            detail=", ".join(part for part in (detail, child._exit_note) if part),
            output_tail=child.output_tail or None,
        )

    # --- the task tree ---

    async def _watch(self, child: Child) -> None:
        """Own one child's process from spawn to reap; report a death after READY."""
        with child._watch_scope:
            try:
                await child._spawn_done.wait()
                process, channel = child._process, child._channel
                if process is None or channel is None:
                    return
                output = child._output
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._read, child, channel)
                    if output is not None:
                        tg.start_soon(output.run)
                    await process.wait_exited()
                    with anyio.move_on_after(_DRAIN_S):
                        await child._eof.wait()
                        if output is not None:
                            await output.done.wait()
                    tg.cancel_scope.cancel()
                child.exitcode = process.reap()
                child.times.exited = time.monotonic()
                child.state = ChildState.EXITED
            finally:
                if child._output is not None:
                    child._output.finish()
                if child._channel is not None:
                    child._channel.close()
                if child._process is not None and child.state is ChildState.EXITED:
                    child._process.close()
                child._exited.set()
                child._settled.set()
        if child.state is ChildState.EXITED and child.ready and not self._stopping:
            self._fail(self._failure(ChildDied, child))

    async def _read(self, child: Child, channel: ControlChannel) -> None:
        try:
            while (message := await channel.receive()) is not None:
                child._handle(message)
        except ProtocolError as exc:
            # Nothing more of its stream can be trusted: fail the child, unless it is
            # failing already or is being stopped, and let the teardown stop it (the
            # socket stays open for the cooperative stop).
            failing = child._error is not None or child._payload_error is not None
            failed = child.name in {failure.name for failure in self.failures}
            if not failing and not failed and not self._stopping:
                cls = ChildDied if child.ready else ChildCrashed
                self._fail(self._failure(cls, child, detail=f"protocol error: {exc}"))
        child._eof.set()

    async def _start(self, child: Child) -> None:
        """Spawn one child and wait for its READY, its exit or its deadline."""
        spec = child.spec
        try:
            boot = build_boot(spec, self.name, self._env_overlay)
            if spec.start_method == "forkserver":
                try:
                    # Outside the launch lock, so a slow preload blocks no other spawn.
                    await anyio.to_thread.run_sync(FORKSERVER.wait_warm, abandon_on_cancel=True)
                except ForkserverError as exc:
                    raise SpawnFailed(
                        child.name, group=self.name, failed_at=time.monotonic(), detail=str(exc)
                    ) from exc
                except OSError as exc:  # starting the server: out of fds, say
                    raise spawn_failed(
                        spec, self.name, exc, "starting launch's forkserver"
                    ) from exc
            child.times.spawn_requested = time.monotonic()

            def spawn_in_thread() -> None:
                spawned = spawn(spec, self.name, self._env_overlay)
                # Registered here, in the thread, so that a cancel arriving during the spawn
                # still finds the process to tear down.
                child._process = spawned.process
                child._channel = ControlChannel(spawned.sock)
                if spawned.output_fds is not None:
                    child._output = OutputPump(spawned.output_fds, f"{self.name}/{child.name}")
                child.times.spawned = spawned.spawned_at
                child.times.lock_wait_s = spawned.lock_wait_s
                child.state = ChildState.STARTING

            await anyio.to_thread.run_sync(spawn_in_thread)
        except SpawnFailed as exc:
            self._fail(exc)
            return
        finally:
            child._spawn_done.set()

        assert child._channel is not None
        logger.debug("%s/%s (pid %s): sending boot", self.name, child.name, child.pid)
        await child._channel.send_frame(boot)
        deadline = spec.ready_timeout
        with anyio.move_on_after(deadline if deadline is not None else float("inf")) as scope:
            await child._settled.wait()
        if child.ready:
            return
        if child._payload_error is not None:
            bad = child._payload_error
            self._fail(
                self._failure(
                    ChildCrashed,
                    child,
                    detail=f"its READY payload could not be unpickled in the parent: "
                    f"{type(bad).__name__}: {bad}",
                )
            )
        elif scope.cancelled_caught:
            self._fail(self._failure(ReadyTimeout, child, detail=f"ready_timeout={deadline}s"))
        else:
            # It exited, or reported its exception and is exiting: declared now, with no
            # await before it (a cancel landing there would lose this root cause), and its
            # siblings' teardown starts now. A process that takes long over its
            # interpreter shutdown (torch, vLLM) is not waited for: the teardown gives it
            # stop_timeout to exit, then fills in its exit code.
            self._fail(self._failure(ChildCrashed, child))

    async def _startup(self) -> None:
        with anyio.CancelScope() as self._startup_scope:
            async with anyio.create_task_group() as tg:
                for child in self.children:
                    tg.start_soon(self._start, child)
        self._startup_scope = None

    async def _teardown(self) -> None:
        self._stopping = True
        for child in self.children:  # startup is over: no spawn is coming for the rest
            child._spawn_done.set()
        self.unreaped = await teardown(self.children, self.shutdown)
        for failure in self.failures:  # declared before its child had finished exiting
            failed = self._by_name.get(failure.name)
            if failed is None:
                continue
            if failure.exitcode is None:
                failure.exitcode = failed.exitcode
            if not failure.output_tail:  # its last lines, read while it exited
                failure.output_tail = failed.output_tail or None


@asynccontextmanager
async def _run_group(group: Group) -> AsyncIterator[Group]:
    unwrapped: BaseException | None = None
    if group.started_at is None:  # a pipeline's stage keeps the pipeline's start
        group.started_at = time.monotonic()
    # A cancel that is already pending wins before anything is spawned.
    await anyio.lowlevel.checkpoint()
    try:
        async with anyio.create_task_group() as tg:
            try:
                # start_soon, not start: a start() cancelled before the shielded watcher
                # reported would wait for that watcher, which waits for the teardown
                # below (trio leaves it in the cancelled start nursery; anyio's asyncio
                # start waits for it). Both backends run a new task's first step, which
                # enters the shield, before they deliver a cancel to it.
                for child in group.children:
                    tg.start_soon(group._watch, child, name=f"watch {group.name}/{child.name}")
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


def open_group(
    specs: Iterable[ProcessSpec],
    *,
    name: str = "group",
    shutdown: ShutdownPolicy | None = None,
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

    Returns:
        An async context manager; ``async with`` it gives the running :class:`Group`
        once every child is READY. An exception raised in the block propagates as
        itself (not wrapped in an exception group), after every child is stopped.

    Raises:
        ValueError: ``specs`` is invalid (empty, a single :class:`ProcessSpec` instead
            of a list, something else than a :class:`ProcessSpec`, or duplicate
            names); raised by the call itself, before anything is spawned.
        LaunchFailed: On entering, when a child fails to spawn, crashes or misses
            its ``ready_timeout`` (its siblings are torn down first); on leaving, when
            a child died while the block ran (the block was cancelled). Its leaves are
            :class:`ChildFailed`; :attr:`LaunchFailed.first` is the root cause.
    """
    specs = validate_group(specs, name)
    return _run_group(Group(name, specs, shutdown or ShutdownPolicy()))
