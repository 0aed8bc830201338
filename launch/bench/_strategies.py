"""The strategies: today's ways of starting engine processes, the tools a user would
pick instead (Ray, torch elastic), and launch's.

Baselines use ``multiprocessing`` (a spawn context, never the host's default) exactly
as the engines do; the peers are in ``_peers_ray`` and ``_peers_torch`` (their tools
imported only when they run). Every strategy starts the same children and is timed from
its first start call to the moment every child has said READY.
"""

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing
import multiprocessing.connection
import resource
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .._signals import sigint_deferred
from ._child import LAUNCH_TARGET, mp_entry

_MP = multiprocessing.get_context("spawn")
_STOP_S = 5.0


@dataclass(frozen=True)
class ChildPlan:
    """One child of a trial: what it runs."""

    name: str
    model: str
    params: dict[str, Any]


@dataclass
class StartupRun:
    """One trial: seconds from the first start call to all READY, and its costs."""

    ready_s: float
    started_s: float  # until the last start call returned
    parent_cpu_s: float
    peak_rss_mib: list[float] = field(default_factory=list)


class BenchChildFailed(RuntimeError):
    """A baseline's child failed to start (its traceback in the message)."""


def cpu_seconds() -> float:
    """This process's CPU time, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set so far (``VmHWM``), in MiB; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class MpChild:
    """A baseline child: a ``multiprocessing`` Process and the Pipe its READY comes on."""

    def __init__(self, plan: ChildPlan) -> None:
        self.name = plan.name
        self.conn, child_conn = _MP.Pipe()
        self._child_conn = child_conn
        self.process = _MP.Process(
            target=mp_entry, args=(child_conn, plan.model, plan.params), name=plan.name
        )
        self.ready = False

    def start(self) -> None:
        # A Ctrl-C landing inside start() after the spawn but before the Process records
        # its pid would lose the child: nobody would reap it, and it would fail loudly
        # once the bench removed its model module. It is raised once start() returns.
        with sigint_deferred():
            self.process.start()
        self._child_conn.close()

    def take_message(self) -> None:
        """Read what the child sent (READY or its error); raises if it failed."""
        try:
            kind, body = self.conn.recv()
        except EOFError:
            self.process.join(1.0)
            raise BenchChildFailed(
                f"{self.name} exited before READY (exit code {self.process.exitcode})"
            ) from None
        if kind != "ready":
            raise BenchChildFailed(f"{self.name} failed before READY:\n{body}")
        self.ready = True

    def wait_ready(self, deadline: float) -> None:
        while not self.ready:
            if not self.conn.poll(max(0.0, deadline - time.monotonic())):
                raise BenchChildFailed(f"{self.name}: no READY before the deadline")
            self.take_message()


def submit_all(
    pool: ThreadPoolExecutor, start: Callable[[MpChild], None], children: Sequence[MpChild]
) -> list[Future[None]]:
    """``start`` each child from ``pool``, with a Ctrl-C held back until every one is
    submitted. ``Executor.map`` would lose one: a KeyboardInterrupt raised inside
    ``submit`` (while it waits for a new worker thread to start) leaves that thread
    running its child's ``start()`` but unknown to the pool, so leaving the pool does
    not wait for it, and the child is spawned after the bench has stopped the others.
    Once every start is submitted, leaving the pool waits for all of them."""
    with sigint_deferred():
        return [pool.submit(start, child) for child in children]


def wait_all_ready(children: Sequence[MpChild], deadline: float) -> None:
    """Wait until every child has sent READY; the first failure raises."""
    pending = {child.conn: child for child in children if not child.ready}
    while pending:
        left = deadline - time.monotonic()
        ready = multiprocessing.connection.wait(list(pending), max(0.0, left))
        if not ready:
            names = ", ".join(child.name for child in pending.values())
            raise BenchChildFailed(f"no READY before the deadline from {names}")
        for conn in ready:
            child = pending.pop(conn)  # type: ignore[call-overload]
            child.take_message()


def stop_all(children: Iterable[MpChild]) -> None:
    """Ask every READY child to stop (SIGTERM the others), then reap it (SIGKILL if it will
    not go)."""
    started = [child for child in children if child.process.pid is not None]
    for child in started:
        if not child.ready:  # still in its init (the trial failed or was interrupted)
            child.process.terminate()
        try:
            child.conn.send(("stop", None))
        except OSError:
            pass
        child.conn.close()
    deadline = time.monotonic() + _STOP_S
    for child in started:
        child.process.join(max(0.0, deadline - time.monotonic()))
        if child.process.exitcode is None:
            child.process.kill()
            child.process.join()
    for child in children:
        if child.process.pid is None:
            child.conn.close()
            child._child_conn.close()


def _run_mp(
    plans: Sequence[ChildPlan], timeout: float, body: Callable[[list[MpChild], float], float]
) -> StartupRun:
    children = [MpChild(plan) for plan in plans]
    try:
        cpu0, t0 = cpu_seconds(), time.monotonic()
        started_at = body(children, t0 + timeout)
        t1, cpu1 = time.monotonic(), cpu_seconds()
        rss = [peak_rss_mib(child.process.pid or 0) for child in children]
        return StartupRun(t1 - t0, started_at - t0, cpu1 - cpu0, rss)
    finally:
        stop_all(children)


def sequential(plans: Sequence[ChildPlan], timeout: float) -> StartupRun:
    """``start()`` each child in turn, then wait for every READY (vLLM's DP engine cores)."""

    def body(children: list[MpChild], deadline: float) -> float:
        for child in children:
            child.start()
        started = time.monotonic()
        wait_all_ready(children, deadline)
        return started

    return _run_mp(plans, timeout, body)


def locked(plans: Sequence[ChildPlan], timeout: float) -> StartupRun:
    """A thread per child; each holds one lock across its ``start()`` *and* its READY wait
    (vLLM-Omni's stage launch before its launch-lock fix)."""

    def body(children: list[MpChild], deadline: float) -> float:
        lock = threading.Lock()
        started: list[float] = []

        def one(child: MpChild) -> None:
            with lock:
                child.start()
                started.append(time.monotonic())
                child.wait_ready(deadline)

        with ThreadPoolExecutor(max_workers=len(children)) as pool:
            for done in submit_all(pool, one, children):
                done.result()
        return max(started)

    return _run_mp(plans, timeout, body)


def threadpool(plans: Sequence[ChildPlan], timeout: float) -> StartupRun:
    """``start()`` from a thread pool, then wait for every READY (vLLM's TP workers)."""

    def body(children: list[MpChild], deadline: float) -> float:
        with ThreadPoolExecutor(max_workers=len(children)) as pool:
            for done in submit_all(pool, MpChild.start, children):
                done.result()
        started = time.monotonic()
        wait_all_ready(children, deadline)
        return started

    return _run_mp(plans, timeout, body)


def gather(plans: Sequence[ChildPlan], timeout: float) -> StartupRun:
    """``asyncio.gather`` of ``to_thread(start)``, then READY awaited in a thread (the
    async-startup RFC); ``to_thread`` uses the loop's default executor."""

    def body(children: list[MpChild], deadline: float) -> float:
        async def main() -> float:
            await asyncio.gather(*(asyncio.to_thread(child.start) for child in children))
            started = time.monotonic()
            await asyncio.to_thread(wait_all_ready, children, deadline)
            return started

        return asyncio.run(main())

    return _run_mp(plans, timeout, body)


def launch_specs(plans: Sequence[ChildPlan], start_method: str, timeout: float) -> list[Any]:
    """The plans as the ``ProcessSpec`` list of a launch strategy."""
    from .._spec import ProcessSpec

    return [
        ProcessSpec(
            LAUNCH_TARGET,
            name=plan.name,
            kwargs={"model": plan.model, "params": plan.params},
            start_method=start_method,  # type: ignore[arg-type]
            ready_timeout=timeout,
        )
        for plan in plans
    ]


def _launch(
    plans: Sequence[ChildPlan], timeout: float, backend: str, start_method: str
) -> StartupRun:
    import anyio

    from .._group import open_group

    specs = launch_specs(plans, start_method, timeout)

    async def main() -> StartupRun:
        cpu0, t0 = cpu_seconds(), time.monotonic()
        async with open_group(specs, name="bench") as group:
            t1, cpu1 = time.monotonic(), cpu_seconds()
            spawned = max(child.times.spawned or t1 for child in group)
            rss = [peak_rss_mib(child.pid or 0) for child in group]
        return StartupRun(t1 - t0, spawned - t0, cpu1 - cpu0, rss)

    result: StartupRun = anyio.run(main, backend=backend)
    return result


def launch_trio(plans: Sequence[ChildPlan], timeout: float) -> StartupRun:
    """``launch.open_group`` under trio, spawn start method."""
    return _launch(plans, timeout, "trio", "spawn")


def launch_asyncio(plans: Sequence[ChildPlan], timeout: float) -> StartupRun:
    """``launch.open_group`` under asyncio, spawn start method."""
    return _launch(plans, timeout, "asyncio", "spawn")


def launch_forkserver(plans: Sequence[ChildPlan], timeout: float) -> StartupRun:
    """``launch.open_group`` under trio; children forked from launch's forkserver, which
    has preloaded the model's heavy module (warmed before the clock starts)."""
    return _launch(plans, timeout, "trio", "forkserver")


def ray_actors(plans: Sequence[ChildPlan], timeout: float) -> StartupRun:
    """Ray actors in a placement group, one ``{"CPU": 1}`` bundle each, created at once;
    READY when every actor answered ``ready()`` (see ``_peers_ray``; needs a running Ray,
    which ``run_bench`` starts once, outside the clock)."""
    from ._peers_ray import ray_actors as run

    return run(plans, timeout)


def torchelastic(plans: Sequence[ChildPlan], timeout: float) -> StartupRun:
    """torch elastic's ``start_processes`` (the layer under torchrun), one process per
    child, its output redirected to files; READY over a Pipe (see ``_peers_torch``)."""
    from ._peers_torch import torchelastic as run

    return run(plans, timeout)


Strategy = Callable[[Sequence[ChildPlan], float], StartupRun]
STRATEGIES: dict[str, Strategy] = {
    "sequential": sequential,
    "locked": locked,
    "threadpool": threadpool,
    "gather": gather,
    "ray-actors": ray_actors,
    "torchelastic": torchelastic,
    "launch-trio": launch_trio,
    "launch-asyncio": launch_asyncio,
    "launch-forkserver": launch_forkserver,
}
BASELINES = ("sequential", "locked", "threadpool", "gather")
PEERS = ("ray-actors", "torchelastic")  # the tools a user would pick instead
LAUNCH_STRATEGIES = ("launch-trio", "launch-asyncio", "launch-forkserver")
PEER_TOOLS = {"ray-actors": "ray", "torchelastic": "torch"}


def missing_tool(strategy: str) -> str | None:
    """Why a peer cannot run here (its tool is not installed), or None.

    Args:
        strategy: A strategy or teardown policy name.

    Returns:
        A ``"skipped: ..."`` reason for a peer whose tool is missing, else None.
    """
    tool = PEER_TOOLS.get(strategy)
    if tool is None or importlib.util.find_spec(tool) is not None:
        return None
    return f"skipped: {tool} is not installed (pip install {tool})"
