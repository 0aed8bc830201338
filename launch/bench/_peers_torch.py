"""The torch elastic peer: the bench's children through
``torch.distributed.elastic.multiprocessing.start_processes``, the layer under torchrun.

One process per child, the bench's :func:`~launch.bench._child.mp_entry` as the
entrypoint: READY comes over a ``Pipe`` per child, as with the ``multiprocessing``
baselines. Each child's stdout and stderr are redirected to files (``DefaultLogsSpecs``
with ``Std.ALL``, torchrun's ``--redirects 3``), so that cost is in the figures. Failures
are what ``pcontext.wait()`` reports, polled every ``MONITOR_S`` as torchrun's agent does.

``start_processes`` installs its own SIGTERM / SIGINT / SIGHUP / SIGQUIT handlers (they
raise ``SignalException``); the bench puts its own back once the processes are started,
so Ctrl-C still stops it after the trial under way. torch is imported only here.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing.connection
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._child import mp_entry
from ._strategies import BenchChildFailed, ChildPlan, StartupRun, cpu_seconds, peak_rss_mib
from ._teardown import TeardownRun, collect, teardown_plans

MONITOR_S = 0.1  # torchrun's --monitor-interval default
_CLOSE_S = 5
_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
_MP = multiprocessing.get_context("spawn")
_LOGGERS = ("torch.distributed.elastic", "torch.multiprocessing.spawn")


@contextlib.contextmanager
def _bench_signals() -> Iterator[None]:
    """Restore this process's signal handlers on exit; a ``SignalException`` for SIGINT
    (elastic's handler was in place) becomes ``KeyboardInterrupt``."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    main = threading.current_thread() is threading.main_thread()
    saved = {name: signal.getsignal(getattr(signal, name)) for name in _SIGNALS} if main else {}
    try:
        yield
    except SignalException as exc:
        if exc.sigval == signal.SIGINT:
            raise KeyboardInterrupt from exc
        raise
    finally:
        for name, handler in saved.items():
            if handler is not None:
                signal.signal(getattr(signal, name), handler)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Elastic's own log lines (each SIGTERM it sends, the failed child's traceback) are
    not shown while a trial runs: the bench reports the outcome itself."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class Elastic:
    """One trial's ``PContext`` and the parent ends of its READY pipes.

    Args:
        plans: The children, local ranks in order.
        logs: An empty directory for elastic's per-rank log files.
    """

    def __init__(self, plans: Sequence[ChildPlan], logs: Path) -> None:
        self.plans = list(plans)
        self.logs = logs
        pipes = [_MP.Pipe() for _ in plans]
        self.conns = [parent for parent, _ in pipes]
        self._child_ends = [child for _, child in pipes]
        self.ready: set[int] = set()
        self.pcontext: Any = None

    def start(self) -> None:
        """``start_processes``: every child started (it returns once all are)."""
        from torch.distributed.elastic.multiprocessing import (
            DefaultLogsSpecs,
            Std,
            start_processes,
        )

        n = len(self.plans)
        args = {
            rank: (self._child_ends[rank], plan.model, plan.params)
            for rank, plan in enumerate(self.plans)
        }
        envs = {
            rank: {
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(n),
                "LOCAL_WORLD_SIZE": str(n),
            }
            for rank in range(n)
        }
        with _bench_signals():
            self.pcontext = start_processes(
                name="launch-bench",
                entrypoint=mp_entry,
                args=args,
                envs=envs,
                logs_specs=DefaultLogsSpecs(log_dir=str(self.logs), redirects=Std.ALL),
            )
        for end in self._child_ends:
            end.close()

    def failure(self) -> str | None:
        """What ``pcontext.wait(timeout=0)`` reports as failed, if anything (it closes
        the whole context itself before it returns a failure)."""
        result = self.pcontext.wait(timeout=0)
        if result is None or not result.is_failed():
            return None
        ranks = ", ".join(
            f"{self.plans[rank].name} (exit code {failure.exitcode})"
            for rank, failure in result.failures.items()
        )
        return f"torch elastic reported a failed child: {ranks}"

    def wait_ready(self, deadline: float) -> None:
        """Read READY from every child, polling elastic for failures in between.

        Raises:
            BenchChildFailed: A child failed, or not every child was READY in time.
        """
        pending: dict[Any, int] = {conn: rank for rank, conn in enumerate(self.conns)}
        while pending:
            if time.monotonic() > deadline:
                names = ", ".join(self.plans[rank].name for rank in pending.values())
                raise BenchChildFailed(f"no READY before the deadline from {names}")
            for conn in multiprocessing.connection.wait(list(pending), MONITOR_S):
                rank = pending.pop(conn)
                try:
                    kind, body = self.conns[rank].recv()
                except EOFError:
                    kind, body = "error", "its READY pipe closed"
                if kind != "ready":
                    raise BenchChildFailed(f"{self.plans[rank].name} failed before READY:\n{body}")
                self.ready.add(rank)
            failed = self.failure()
            if failed is not None:
                raise BenchChildFailed(failed)

    def pids(self) -> list[int]:
        """The children's process ids, local ranks in order."""
        return [pid for _, pid in sorted(self.pcontext.pids().items())]

    def close(self) -> None:
        """Ask READY children to stop, then ``pcontext.close()`` (SIGTERM, SIGKILL after
        a bound); the READY pipes are closed."""
        for rank, conn in enumerate(self.conns):
            if rank in self.ready:
                with contextlib.suppress(OSError):
                    conn.send(("stop", None))
        if self.pcontext is not None:
            self.pcontext.close(timeout=_CLOSE_S)
        for conn in [*self.conns, *self._child_ends]:
            conn.close()


def torchelastic(plans: Sequence[ChildPlan], timeout: float) -> StartupRun:
    """Start the children with elastic's ``start_processes``; the clock stops at the last
    READY.

    Args:
        plans: The children.
        timeout: Seconds to wait for every READY.

    Returns:
        The trial's timings; ``started_s`` is when ``start_processes`` returned.

    Raises:
        BenchChildFailed: A child failed, or not every child was READY in time.
    """
    importlib.import_module("torch.distributed.elastic.multiprocessing")  # before the clock
    with tempfile.TemporaryDirectory(prefix="launch-bench-elastic-") as logs, _quiet():
        elastic = Elastic(plans, Path(logs))
        try:
            cpu0, t0 = cpu_seconds(), time.monotonic()
            elastic.start()
            started = time.monotonic()
            elastic.wait_ready(t0 + timeout)
            t1, cpu1 = time.monotonic(), cpu_seconds()
            rss = [peak_rss_mib(pid) for pid in elastic.pids()]
            return StartupRun(t1 - t0, started - t0, cpu1 - cpu0, rss)
        finally:
            elastic.close()


def elastic_teardown(plans: Sequence[ChildPlan], timeout: float) -> TeardownRun:
    """The first child fails in its init; ``pcontext.wait()`` (polled every
    ``MONITOR_S``) returns the failure, then ``pcontext.close()``.

    ``wait()`` itself terminates the remaining children before it returns a failure
    (torch's ``ProcessContext.join``), so "noticed" is after that.

    Args:
        plans: The children (see :func:`launch.bench._teardown.teardown_plans`).
        timeout: Seconds to wait for the failure.

    Returns:
        The teardown timings, from the failing child's clock reading.

    Raises:
        RuntimeError: The injected failure did not happen.
    """
    with (
        tempfile.TemporaryDirectory(prefix="launch-bench-td-") as tmp,
        tempfile.TemporaryDirectory(prefix="launch-bench-elastic-") as logs,
        _quiet(),
    ):
        elastic = Elastic(teardown_plans(plans, Path(tmp)), Path(logs))
        try:
            elastic.start()
            result = elastic.pcontext.wait(timeout=timeout, period=MONITOR_S)
            noticed = time.monotonic()
            if result is None or not result.is_failed():
                raise RuntimeError("bench: the injected failure did not happen")
            elastic.pcontext.close(timeout=_CLOSE_S)
            reaped = time.monotonic()
        finally:
            elastic.close()
        return collect(Path(tmp), noticed, reaped)
