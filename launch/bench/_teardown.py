"""Teardown latency: one child fails during init while its siblings are still initialising;
how long from that failure until every child is reaped.

``vllm-policy`` is vLLM's worker shutdown as the engines do it today: close the workers'
death pipes, wait 5 s for them to exit, SIGTERM, wait 4 s, SIGKILL. A worker busy in its
init does not read its death pipe, so it waits out the 5 s. launch SIGTERMs a child that
is not READY at once. ``ray-actors`` and ``torchelastic`` are the peers' own idioms
(``_peers_ray``, ``_peers_torch``).
"""

from __future__ import annotations

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


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited. A zombie has: it waits only for its parent to
    reap it, and a Ray worker's parent is Ray's raylet, not the bench."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True
    except OSError:
        return False


def child_pids(scratch: Path) -> list[int]:
    """The pids the children of a teardown trial have written into ``scratch`` so far."""
    pids = []
    for path in scratch.glob("*.pid"):
        text = path.read_text().strip()
        if text:  # empty: the child is writing it right now
            pids.append(int(text))
    return pids


def collect(scratch: Path, noticed: float, reaped: float) -> TeardownRun:
    """The trial's figures: ``noticed`` and ``reaped`` (``time.monotonic()`` readings of
    the parent) from the failing child's stamp, and how many children are still alive."""
    failed_at = float((scratch / "failed_at").read_text())
    alive = sum(not gone(pid) for pid in child_pids(scratch))
    return TeardownRun(noticed - failed_at, reaped - failed_at, alive)


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
        return collect(Path(tmp), noticed, reaped)


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
        return collect(Path(tmp), noticed, reaped)


def launch_trio(plans: Sequence[ChildPlan], timeout: float) -> TeardownRun:
    """launch's teardown under trio."""
    return _launch_policy(plans, timeout, "trio")


def launch_asyncio(plans: Sequence[ChildPlan], timeout: float) -> TeardownRun:
    """launch's teardown under asyncio."""
    return _launch_policy(plans, timeout, "asyncio")


def ray_actors(plans: Sequence[ChildPlan], timeout: float) -> TeardownRun:
    """Ray's idiom: the user's ``ray.get`` raises, then ``ray.kill`` every actor and remove
    the placement group (see ``_peers_ray``; needs a running Ray)."""
    from ._peers_ray import ray_teardown

    return ray_teardown(plans, timeout)


def torchelastic(plans: Sequence[ChildPlan], timeout: float) -> TeardownRun:
    """torch elastic's idiom: ``pcontext.wait()`` returns a failure, then
    ``pcontext.close()`` (see ``_peers_torch``)."""
    from ._peers_torch import elastic_teardown

    return elastic_teardown(plans, timeout)


TEARDOWN_POLICIES: dict[str, Callable[[Sequence[ChildPlan], float], TeardownRun]] = {
    "launch-trio": launch_trio,
    "launch-asyncio": launch_asyncio,
    "vllm-policy": vllm_policy,
    "ray-actors": ray_actors,
    "torchelastic": torchelastic,
}
