"""Teardown latency: one child fails during init while its siblings are still initialising;
how long from that failure until every child is reaped.

``vllm-policy`` is vLLM's worker shutdown as the engines do it today: close the workers'
death pipes, wait 5 s for them to exit, SIGTERM, wait 4 s, SIGKILL. A worker busy in its
init does not read its death pipe, so it waits out the 5 s. launch SIGTERMs a child that
is not READY at once.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ._strategies import BenchChildFailed, ChildPlan, MpChild, launch_specs, wait_all_ready

VLLM_WAIT_S = 5.0
VLLM_TERM_S = 4.0
CRASH_AFTER_S = 0.5  # of init, so every sibling has started before the failure
SIBLING_INIT_S = 120.0


@dataclass
class TeardownRun:
    """One teardown trial, on the system-wide monotonic clock."""

    noticed_s: float  # failure → the parent knew
    reaped_s: float  # failure → every child reaped
    left: int  # children still alive afterwards


def teardown_plans(plans: Sequence[ChildPlan], scratch: Path) -> list[ChildPlan]:
    """The same children, the first one failing ``CRASH_AFTER_S`` into its init and the
    rest initialising for much longer; each writes its pid into ``scratch``."""
    out = []
    for index, plan in enumerate(plans):
        params = {**plan.params, "pid_file": str(scratch / f"{plan.name}.pid")}
        if index == 0:
            params.update(crash_after_s=CRASH_AFTER_S, stamp=str(scratch / "failed_at"))
        else:
            params["init_s"] = SIBLING_INIT_S
        out.append(replace(plan, params=params))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _collect(scratch: Path, noticed: float, reaped: float) -> TeardownRun:
    failed_at = float((scratch / "failed_at").read_text())
    pids = [int(p.read_text()) for p in scratch.glob("*.pid")]
    return TeardownRun(noticed - failed_at, reaped - failed_at, sum(map(_alive, pids)))


def _wait_exit(children: Sequence[MpChild], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    for child in children:
        child.process.join(max(0.0, deadline - time.monotonic()))
    return all(child.process.exitcode is not None for child in children)


def vllm_policy(plans: Sequence[ChildPlan], timeout: float) -> TeardownRun:
    """Start with a thread-pool-like concurrent start, fail, then vLLM's 5 s + 4 s."""
    with tempfile.TemporaryDirectory(prefix="launch-bench-td-") as tmp:
        children = [MpChild(plan) for plan in teardown_plans(plans, Path(tmp))]
        try:
            for child in children:
                child.start()
            try:
                wait_all_ready(children, time.monotonic() + timeout)
                raise RuntimeError("bench: the injected failure did not happen")
            except BenchChildFailed:
                noticed = time.monotonic()
            for child in children:
                child.conn.close()  # the death pipe: a worker in init does not read it
            if not _wait_exit(children, VLLM_WAIT_S):
                for child in children:
                    if child.process.exitcode is None:
                        child.process.terminate()
                if not _wait_exit(children, VLLM_TERM_S):
                    for child in children:
                        if child.process.exitcode is None:
                            child.process.kill()
            for child in children:
                child.process.join()
            reaped = time.monotonic()
        finally:
            for child in children:
                if child.process.exitcode is None and child.process.pid is not None:
                    child.process.kill()
                    child.process.join()
        return _collect(Path(tmp), noticed, reaped)


def _launch_policy(plans: Sequence[ChildPlan], timeout: float, backend: str) -> TeardownRun:
    import anyio

    from .._errors import LaunchFailed
    from .._group import open_group

    with tempfile.TemporaryDirectory(prefix="launch-bench-td-") as tmp:
        specs = launch_specs(teardown_plans(plans, Path(tmp)), "spawn", timeout)

        async def main() -> float:
            try:
                async with open_group(specs, name="bench-teardown"):
                    pass
            except LaunchFailed as exc:
                if exc.first.name != specs[0].name:
                    raise
                return exc.first.failed_at
            raise RuntimeError("bench: the injected failure did not happen")

        noticed: float = anyio.run(main, backend=backend)
        reaped = time.monotonic()
        return _collect(Path(tmp), noticed, reaped)


def launch_trio(plans: Sequence[ChildPlan], timeout: float) -> TeardownRun:
    """launch's teardown under trio."""
    return _launch_policy(plans, timeout, "trio")


def launch_asyncio(plans: Sequence[ChildPlan], timeout: float) -> TeardownRun:
    """launch's teardown under asyncio."""
    return _launch_policy(plans, timeout, "asyncio")


TEARDOWN_POLICIES: dict[str, Callable[[Sequence[ChildPlan], float], TeardownRun]] = {
    "launch-trio": launch_trio,
    "launch-asyncio": launch_asyncio,
    "vllm-policy": vllm_policy,
}
