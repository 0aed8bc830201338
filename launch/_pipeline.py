"""``open_pipeline``: every stage of a pipeline as one task tree.

::

    open_pipeline ── task group
     ├─ prewarm     (if any child uses the forkserver) start it, importing `preload`
     ├─ prefetch    (if `prefetch`) read model files into the page cache; cancelled at stop
     ├─ stage × S   wait for the stages in `after` to be READY
     │              → device locks (outside the launch lock, cancellable), or its
     │                placement reserved (a placed stage: released after its reap)
     │              → open the stage's group (its own task tree) → release the locks
     │              → READY; wait for the stop signal
     └─ body (the caller's block)
    a stage's failure cancels the whole task group: every stage tears down concurrently

Each stage's group lives inside its own task, entered and left there (a task group
entered in one task and left in another corrupts trio's nursery stack).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio

from ._child import Child
from ._devicelock import DeviceLocks, acquire_device_locks, default_lock_dir
from ._errors import ChildFailed, DeviceLockError, LaunchFailed, raise_failures, sole_exception
from ._group import Group, running_group
from ._pipeline_spec import PipelineSpec, StageSpec
from ._prefetch import PrefetchStats, prefetch_weights
from ._spec import ShutdownPolicy
from ._start.forkserver import FORKSERVER
from ._teardown import Unreaped
from ._timeline import Timeline, pipeline_timeline

logger = logging.getLogger("launch")


class Pipeline:
    """The running stages of a pipeline; ``pipeline["stage"]`` is that stage's :class:`Group`.

    ``waiting[stage]`` says what a stage that has not spawned yet is waiting for
    (``"after 'thinker'"``, ``"device lock"``), or is None. ``device_lock_waits[stage]``
    is the ``(started, acquired)`` monotonic interval of its device-lock wait.

    ``pipeline["stage"]`` raises ``KeyError`` for an unknown stage; iterating a pipeline
    gives its stages' groups, in spec order, and ``len(pipeline)`` their number. Made by
    :func:`open_pipeline`, not by hand.

    Attributes:
        spec (PipelineSpec): What was started.
        name (str): The pipeline's name (``spec.name``).
        lock_dir (pathlib.Path): The directory of the device lock files in use.
        stages (dict[str, Group]): Each stage's :class:`Group`, by stage name, in spec
            order.
        waiting (dict[str, str | None]): What each stage that has not spawned yet
            waits for (``"after 'thinker'"``, ``"device lock"``, ``"placement"``), or
            None.
        device_lock_waits (dict[str, tuple[float, float]]): For each stage that took
            its device locks, the ``(started, acquired)`` ``time.monotonic()`` interval
            of the wait.
        prefetches (list[PrefetchStats]): What each ``prefetch`` entry read (or why
            it was skipped or cut short).
        started_at (float): ``time.monotonic()`` when the pipeline started.
        ready_at (float | None): ``time.monotonic()`` when its last stage became READY;
            None before.
        failures (list[ChildFailed]): The failures of every stage (a
            :class:`DeviceLockError` included): what :class:`LaunchFailed` is raised
            with.
        unreaped (list[Unreaped]): The children of any stage that survived SIGKILL.
    """

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.lock_dir = Path(spec.lock_dir) if spec.lock_dir is not None else default_lock_dir()
        self.stages: dict[str, Group] = {}
        # Opened now (not entered): a stage with more children than its placement holds
        # is refused by open_pipeline itself.
        self._placements = {stage.name: stage.open_placement() for stage in spec.stages}
        for stage in spec.stages:
            shutdown = stage.shutdown or spec.shutdown or ShutdownPolicy()
            self.stages[stage.name] = Group(
                stage.name, spec.child_specs(stage), shutdown, env_overlay=stage.env
            )
        self.waiting: dict[str, str | None] = dict.fromkeys(self.stages)
        self.device_lock_waits: dict[str, tuple[float, float]] = {}
        self.prefetches: list[PrefetchStats] = []
        self.started_at = 0.0  # time.monotonic() when the pipeline started
        self.ready_at: float | None = None  # ... and when its last stage became READY
        self.failures: list[ChildFailed] = []
        self.unreaped: list[Unreaped] = []
        self._ready = {name: anyio.Event() for name in self.stages}
        self._all_ready = anyio.Event()
        self._stop = anyio.Event()
        self._scope: anyio.CancelScope | None = None

    def __getitem__(self, stage: str) -> Group:
        try:
            return self.stages[stage]
        except KeyError:
            raise KeyError(
                f"pipeline {self.name!r} has no stage {stage!r}; stages: {', '.join(self.stages)}"
            ) from None

    def __iter__(self) -> Iterator[Group]:
        return iter(self.stages.values())

    def __len__(self) -> int:
        return len(self.stages)

    def __repr__(self) -> str:
        return f"<Pipeline {self.name!r} stages={list(self.stages)}>"

    @property
    def children(self) -> tuple[Child, ...]:
        """Every child of every stage, stage by stage."""
        return tuple(child for group in self for child in group.children)

    @property
    def timeline(self) -> Timeline:
        """The startup of every stage (device-lock waits included) as a
        :class:`Timeline`, offsets from the pipeline's start; open slices end now."""
        return pipeline_timeline(self)

    def is_ready(self, stage: str) -> bool:
        """True once every child of ``stage`` is READY.

        Args:
            stage: A stage's name.

        Returns:
            Whether the stage has become READY (it stays true once it has).

        Raises:
            KeyError: The pipeline has no such stage.
        """
        return self._ready[stage].is_set()

    async def _prewarm(self) -> None:
        # Starting the server is a short spawn; its imports then run in the server while
        # the stages wait for devices and spawn (a forkserver child awaits them).
        try:
            await anyio.to_thread.run_sync(FORKSERVER.start, self.spec.preload)
        except Exception:
            # the first forkserver child's spawn meets the same error and reports it
            logger.debug("prewarming launch's forkserver failed", exc_info=True)

    async def _prefetch(self, path: str | Path, scope: anyio.CancelScope) -> None:
        stats = PrefetchStats(str(path), started_at=time.monotonic())
        self.prefetches.append(stats)
        with scope:
            try:
                result = await prefetch_weights(path)
            except Exception as exc:  # a startup aid: its failure fails no stage
                stats.skipped = f"{type(exc).__name__}: {exc}"
                return
            finally:
                stats.cancelled = scope.cancel_called
                stats.finished_at = time.monotonic()
            self.prefetches[self.prefetches.index(stats)] = result

    def _fail(self, failure: ChildFailed) -> None:
        self.failures.append(failure)
        if self._scope is not None:
            self._scope.cancel()

    async def _run_stage(self, stage: StageSpec) -> None:
        """One stage's task: its turn, its device locks, then its group until the stop."""
        group = self.stages[stage.name]
        try:
            await self._wait_for_turn(stage)
            locks = await self._lock_devices(stage)
            try:
                async with self._running(stage, group):
                    locks.release()
                    self._mark_ready(stage)
                    await self._stop.wait()
            finally:
                locks.release()
        except DeviceLockError as exc:  # a timeout, or an unusable lock dir or file
            self._fail(exc)
        except LaunchFailed:
            pass  # the group's failures are collected below, cancelled or not
        finally:
            self.unreaped.extend(group.unreaped)
            for failure in group.failures:
                self._fail(failure)

    @asynccontextmanager
    async def _running(self, stage: StageSpec, group: Group) -> AsyncIterator[Group]:
        """The stage's group, run here or, with a placement, where it places it: the
        placement entered first and left after the group's reap, in this task. Its
        error (e.g. ``PlacementError``) leaves the stage's task as itself and fails the
        pipeline with it."""
        placement = self._placements[stage.name]
        if placement is None:
            async with running_group(group) as running:
                yield running
            return
        self.waiting[stage.name] = "placement"
        async with placement as starter:
            self.waiting[stage.name] = None
            group._use_starter(starter)
            async with running_group(group) as running:
                yield running

    async def _wait_for_turn(self, stage: StageSpec) -> None:
        """Wait until every stage in ``stage.after`` is READY."""
        for dep in stage.after:
            self.waiting[stage.name] = f"after {dep!r}"
            await self._ready[dep].wait()

    async def _lock_devices(self, stage: StageSpec) -> DeviceLocks:
        """Take the stage's device locks (outside the launch lock, cancellable)."""
        self.waiting[stage.name] = "device lock" if stage.devices else None
        asked = time.monotonic()
        locks = await acquire_device_locks(
            [str(device) for device in stage.devices],
            stage=stage.name,
            lock_dir=self.lock_dir,
            timeout=self.spec.device_lock_timeout,
        )
        self.device_lock_waits[stage.name] = (asked, asked + locks.waited_s)
        self.waiting[stage.name] = None
        return locks

    def _mark_ready(self, stage: StageSpec) -> None:
        self._ready[stage.name].set()
        if all(event.is_set() for event in self._ready.values()):
            self.ready_at = time.monotonic()
            self._all_ready.set()


@asynccontextmanager
async def running_pipeline(pipeline: Pipeline) -> AsyncIterator[Pipeline]:
    unwrapped: BaseException | None = None
    pipeline.started_at = time.monotonic()
    for group in pipeline:
        group.started_at = pipeline.started_at
    try:
        async with anyio.create_task_group() as tg:
            pipeline._scope = tg.cancel_scope
            prefetching = [anyio.CancelScope() for _ in pipeline.spec.prefetch]
            try:
                if pipeline.spec.uses_forkserver:
                    tg.start_soon(pipeline._prewarm, name="prewarm")
                for path, scope in zip(pipeline.spec.prefetch, prefetching, strict=True):
                    tg.start_soon(pipeline._prefetch, path, scope, name=f"prefetch {path}")
                for stage in pipeline.spec.order():
                    tg.start_soon(pipeline._run_stage, stage, name=f"stage {stage.name}")
                await pipeline._all_ready.wait()
                yield pipeline
            finally:
                pipeline._stop.set()
                for scope in prefetching:
                    scope.cancel()  # only a startup aid: not worth waiting for at stop
    except BaseExceptionGroup as eg:
        # Stage tasks never raise; what is here came from the caller's block.
        unwrapped = sole_exception(eg)
        if unwrapped is None:
            raise
    if unwrapped is not None:
        raise unwrapped  # outside the except: no "during handling" chain onto the group
    raise_failures(pipeline.name, pipeline.failures, pipeline.unreaped, kind="pipeline")


def open_pipeline(spec: PipelineSpec) -> AbstractAsyncContextManager[Pipeline]:
    """Start every stage of ``spec``; enter the block once all of them are READY.

    Stages start concurrently unless ``after`` orders them; each takes its device locks
    first. The first failure anywhere (a child crashing, timing out or dying, a device
    lock timing out) tears every stage down and raises :class:`LaunchFailed`. Leaving
    the block stops every stage concurrently and reaps every child.

    Args:
        spec: The pipeline to start (already validated at its construction).

    Returns:
        An async context manager; ``async with`` it gives the running
        :class:`Pipeline` once every stage is READY. An exception raised in the block
        propagates as itself (not wrapped in an exception group), after every stage is
        stopped.

    Raises:
        TypeError: ``spec`` is not a :class:`PipelineSpec`; raised by the call itself.
        ValueError: A placed stage has more children than its placement holds; raised
            by the call itself.
        PlacementError: On entering, when a placed stage's placement cannot reserve
            room for its children (e.g.
            :class:`~launch.integrations.ray.PlacementError`); raised as itself, after
            every other stage is torn down.
        LaunchFailed: On entering, when a child fails to spawn, crashes or misses its
            ``ready_timeout``, or a stage cannot lock its devices
            (:class:`DeviceLockError`, :class:`DeviceLockTimeout`); on leaving, when a
            child died while the block ran (the block was cancelled). Its leaves are
            :class:`ChildFailed`; :attr:`LaunchFailed.first` is the root cause.
    """
    if not isinstance(spec, PipelineSpec):
        raise TypeError(f"open_pipeline expects a PipelineSpec, got {type(spec).__name__}")
    return running_pipeline(Pipeline(spec))
