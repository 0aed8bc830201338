"""Importing heavy modules in the parent in the background, overlapped with other work."""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import anyio

from ._errors import sole_exception


class Preload:
    """The background import started by :func:`preload_modules`.

    Attributes:
        modules: the modules to import (those not imported already).
        imported: each module imported so far, with the seconds its import took.
        error: the first import error, if any.
        started_at: when the imports started (``time.monotonic()``).
        finished_at: when they ended, None until then.
    """

    def __init__(self, modules: list[str]) -> None:
        self.modules = modules
        self.imported: dict[str, float] = {}
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._done = anyio.Event()
        self._stop = threading.Event()

    @property
    def done(self) -> bool:
        """True once every module is imported (or an import failed)."""
        return self._done.is_set()

    async def wait(self) -> None:
        """Wait until every module is imported.

        Raises:
            Exception: the import error of a module that failed, as it was raised.
        """
        await self._done.wait()
        if self.error is not None:
            raise self.error

    def _import_all(self) -> None:
        for name in self.modules:
            if self._stop.is_set():
                return  # cancelled: the module being imported finished; no more start
            began = time.monotonic()
            importlib.import_module(name)
            self.imported[name] = time.monotonic() - began

    async def _run(self) -> None:
        self.started_at = time.monotonic()
        try:
            # an import cannot be interrupted: on cancel the thread finishes the module it
            # is in and imports no more
            await anyio.to_thread.run_sync(self._import_all, abandon_on_cancel=True)
        except Exception as exc:
            self.error = exc
        finally:
            self._stop.set()
            self.finished_at = time.monotonic()
            self._done.set()


@asynccontextmanager
async def preload_modules(modules: Iterable[str]) -> AsyncIterator[Preload]:
    """Import ``modules`` in a worker thread while the block runs (never on the event loop).

    Opt-in, for a parent that will need heavy modules (torch, transformers) anyway: the
    imports overlap with whatever the block does first (config resolution, spawning
    children). ``await preload.wait()`` where the modules are needed. Leaving the block
    normally waits for the imports; leaving it by an exception or cancellation stops
    after the module being imported (an import cannot be interrupted midway).

    Args:
        modules: module names, imported in this order; those imported already are
            skipped.

    Yields:
        The :class:`Preload`: ``await preload.wait()`` before using the modules.

    Raises:
        ValueError: ``modules`` is a string, or holds something that is not a name.
    """
    if isinstance(modules, str):
        raise ValueError("preload_modules takes a list of module names, not a string")
    names = [m for m in dict.fromkeys(modules)]
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"preload_modules: entries must be module names, got {name!r}")
    preload = Preload([m for m in names if m not in sys.modules])
    unwrapped: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(preload._run, name="launch preload_modules")
            try:
                yield preload
            except BaseException:
                preload._stop.set()
                tg.cancel_scope.cancel()
                raise
    except BaseExceptionGroup as group:
        # the import task never raises: what is here is the caller's own exception
        unwrapped = sole_exception(group)
        if unwrapped is None:
            raise
    if unwrapped is not None:
        raise unwrapped
    if preload.error is not None:
        raise preload.error
