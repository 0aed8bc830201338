"""``Launcher``: open groups and pipelines from a test without nesting ``async with``
blocks; everything it opened is torn down when it closes."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .. import (
    Group,
    LaunchFailed,
    Pipeline,
    PipelineSpec,
    ProcessSpec,
    ShutdownPolicy,
    open_group,
    open_pipeline,
)
from ..hooks import serve_until_stopped


class Launcher:
    """``async with Launcher() as launcher: group = await launcher.group(specs)``.

    Each tree runs in a task of the launcher's own task group, under the caller's event
    loop. :meth:`group` and :meth:`pipeline` return once every child is READY and raise
    :class:`LaunchFailed` if startup fails. A child dying later is recorded in
    ``failures`` and re-raised when the launcher closes (the test fails on it) unless
    the test took it with :meth:`take_failures`. Closing stops and reaps everything.

    The ``launcher`` fixture of the pytest plugin is one of these, already entered.

    Attributes:
        failures (list[LaunchFailed]): The failures recorded after READY (a child
            died), not taken yet; the first is raised when the launcher closes without
            an exception of its own.
    """

    def __init__(self) -> None:
        self.failures: list[LaunchFailed] = []
        self._tg: TaskGroup | None = None
        self._stop = anyio.Event()

    async def __aenter__(self) -> Launcher:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        self._stop.set()
        await self._tg.__aexit__(exc_type, exc, tb)
        if exc is None and self.failures:
            failures, self.failures = self.failures, []
            raise failures[0]
        return None

    def take_failures(self) -> list[LaunchFailed]:
        """The failures recorded so far (a child died after READY); clears them.

        Returns:
            The recorded :class:`LaunchFailed` errors, oldest first; the launcher no
            longer raises them when it closes.
        """
        failures, self.failures = self.failures, []
        return failures

    async def _serve(
        self, tree: AbstractAsyncContextManager[Any], *, task_status: TaskStatus[Any]
    ) -> None:
        failure = await serve_until_stopped(tree, self._stop, task_status=task_status)
        if failure is not None:
            self.failures.append(failure)

    async def group(
        self,
        specs: Iterable[ProcessSpec],
        *,
        name: str = "group",
        shutdown: ShutdownPolicy | None = None,
    ) -> Group:
        """Start a group; returns it once every child is READY.

        It runs until the launcher closes. Arguments as for :func:`launch.open_group`.

        Args:
            specs: The children to start: a non-empty list of :class:`ProcessSpec` with
                unique names.
            name: The group's name.
            shutdown: How children are stopped; ``None`` for the default
                :class:`ShutdownPolicy`.

        Returns:
            The running :class:`Group`.

        Raises:
            RuntimeError: The launcher is not entered (use ``async with``).
            ValueError: ``specs`` is invalid.
            LaunchFailed: Startup failed (a child failed to spawn, crashed or missed
                its ``ready_timeout``).
        """
        if self._tg is None:
            raise RuntimeError("use the Launcher as `async with Launcher() as launcher`")
        group: Group = await self._tg.start(
            self._serve, open_group(specs, name=name, shutdown=shutdown)
        )
        return group

    async def pipeline(self, spec: PipelineSpec) -> Pipeline:
        """Start a pipeline; returns it once every stage is READY.

        It runs until the launcher closes.

        Args:
            spec: The pipeline to start.

        Returns:
            The running :class:`Pipeline`.

        Raises:
            RuntimeError: The launcher is not entered (use ``async with``).
            TypeError: ``spec`` is not a :class:`PipelineSpec`.
            LaunchFailed: Startup failed (a child failed to spawn, crashed or missed
                its ``ready_timeout``, or a stage could not lock its devices).
        """
        if self._tg is None:
            raise RuntimeError("use the Launcher as `async with Launcher() as launcher`")
        pipeline: Pipeline = await self._tg.start(self._serve, open_pipeline(spec))
        return pipeline
