"""The Ray peer: the bench's children as Ray actors in a placement group.

What a Ray user writes: a placement group with one bundle per child, one actor per
bundle whose constructor does the child's startup, every actor created at once, then
``ray.get`` of a ``ready()`` call on each. A failure is the user's ``ray.get`` raising
``RayActorError`` (``ActorDiedError``); the user then ``ray.kill``\\ s the other actors and
removes the placement group.

The local cluster (``ray.init``) is started once per bench run by :func:`ray_cluster`,
outside every clock; each trial pays for its own actors (worker processes, placement).
Ray is imported only here, and only when a Ray trial runs.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache, partial
from pathlib import Path
from typing import Any

from ._child import _no_phase, startup
from ._strategies import ChildPlan, StartupRun, cpu_seconds, peak_rss_mib
from ._teardown import TeardownRun, child_pids, collect, gone, teardown_plans

_GONE_S = 30.0  # bound on waiting for killed actors' processes to exit
# Every trial's actors start in fresh worker processes: Ray's prestarted idle workers
# would make only the first trial after ray.init faster.
_SYSTEM_CONFIG = {"prestart_worker_first_driver": False, "enable_worker_prestart": False}


class RayChild:
    """A bench child as a Ray actor: its constructor is the child's startup.

    Args:
        path: The driver's ``sys.path`` (the synthetic model's config module lives in a
            scratch directory on it); added in front of the worker's own.
        blob: ``pickle.dumps((model, params))``: unpickled here, so the child pays its
            imports as a spawned child does.
    """

    def __init__(self, path: list[str], blob: bytes) -> None:
        sys.path[:0] = [entry for entry in path if entry not in sys.path]
        model, params = pickle.loads(blob)
        startup(model, params, _no_phase)

    def ready(self) -> int:
        """Answered once the constructor has returned.

        Returns:
            The actor's process id.
        """
        return os.getpid()


def _module(name: str) -> Any:
    """A Ray module, untyped: the package's type checks do not need Ray installed."""
    return importlib.import_module(name)


def _ray() -> Any:
    ray = _module("ray")
    if not ray.is_initialized():
        raise RuntimeError("bench: the Ray peer needs a running Ray (ray_cluster starts one)")
    return ray


@cache
def _actor_class() -> Any:
    return _module("ray").remote(RayChild)


@contextmanager
def ray_cluster(num_cpus: int, num_gpus: int = 0) -> Iterator[float | None]:
    """A local Ray cluster for the bench's Ray trials, shut down on exit.

    Args:
        num_cpus: Logical CPUs to declare: the largest number of children a trial
            places (one ``{"CPU": 1}`` bundle each).
        num_gpus: GPUs to declare (the ``gpu`` model: one per child).

    Yields:
        Seconds ``ray.init`` took, or None when Ray was already running in this process
        (it is then used as it is, and left running).

    Raises:
        RuntimeError: An already running Ray has fewer CPUs or GPUs than asked for.
    """
    ray = _module("ray")
    if ray.is_initialized():
        resources = ray.cluster_resources()
        if resources.get("CPU", 0) < num_cpus or resources.get("GPU", 0) < num_gpus:
            raise RuntimeError(
                f"bench: the running Ray has {resources.get('CPU', 0)} CPUs and "
                f"{resources.get('GPU', 0)} GPUs; the Ray trials need {num_cpus} and {num_gpus}"
            )
        yield None
        return
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    began = time.monotonic()
    ray.init(
        address="local",  # a cluster of its own, never one found running on the machine
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        log_to_driver=False,  # a failing child's traceback is in the actor's log, not here
        logging_level=logging.WARNING,
        _system_config=_SYSTEM_CONFIG,
    )
    init_s = time.monotonic() - began
    if sigterm is not None:  # ray.init replaced it (with sys.exit); the bench's stays
        signal.signal(signal.SIGTERM, sigterm)
    try:
        yield init_s
    finally:
        ray.shutdown()


def _create(ray: Any, plans: Sequence[ChildPlan]) -> tuple[Any, list[Any]]:
    """The placement group and one actor per bundle, all created at once."""
    placement_group = _module("ray.util.placement_group").placement_group
    in_group = _module("ray.util.scheduling_strategies").PlacementGroupSchedulingStrategy
    gpu = any(plan.model == "gpu" for plan in plans)
    bundle = {"CPU": 1, "GPU": 1} if gpu else {"CPU": 1}
    group = placement_group([dict(bundle) for _ in plans])
    actor = _actor_class()
    path = list(sys.path)
    actors = [
        actor.options(
            num_cpus=1,
            num_gpus=1 if gpu else 0,
            scheduling_strategy=in_group(group, index),
        ).remote(path, pickle.dumps((plan.model, plan.params)))
        for index, plan in enumerate(plans)
    ]
    return group, actors


def _dismiss(
    ray: Any, group: Any, actors: Sequence[Any], pids: Callable[[], Iterable[int]]
) -> None:
    """``ray.kill`` every actor, remove the placement group, and wait (bounded) until the
    processes ``pids()`` lists (asked again each time: a child may still be writing its
    pid file) have exited."""
    for actor in actors:
        ray.kill(actor)
    _module("ray.util.placement_group").remove_placement_group(group)
    deadline = time.monotonic() + _GONE_S
    while not all(map(gone, pids())) and time.monotonic() < deadline:
        time.sleep(0.005)


def ray_actors(plans: Sequence[ChildPlan], timeout: float) -> StartupRun:
    """Start the children as Ray actors; the clock stops when every ``ready()`` answered.

    Args:
        plans: The children.
        timeout: Seconds to wait for every READY.

    Returns:
        The trial's timings; ``started_s`` is when the last ``.remote()`` returned.

    Raises:
        RuntimeError: Ray is not running (see :func:`ray_cluster`).
        ray.exceptions.RayActorError: A child failed in its startup.
        ray.exceptions.GetTimeoutError: Not every child was READY within ``timeout``.
    """
    ray = _ray()
    cpu0, t0 = cpu_seconds(), time.monotonic()
    group, actors = _create(ray, plans)
    started = time.monotonic()
    pids: list[int] = []
    try:
        pids = ray.get([actor.ready.remote() for actor in actors], timeout=timeout)
        t1, cpu1 = time.monotonic(), cpu_seconds()
        rss = [peak_rss_mib(pid) for pid in pids]
        return StartupRun(t1 - t0, started - t0, cpu1 - cpu0, rss)
    finally:
        _dismiss(ray, group, actors, lambda: pids)


def ray_teardown(plans: Sequence[ChildPlan], timeout: float) -> TeardownRun:
    """The first actor fails in its constructor; the user's ``ray.get`` raises, then the
    user ``ray.kill``\\ s every actor and removes the placement group. Reaped: every
    child's process has exited.

    Args:
        plans: The children (see :func:`launch.bench._teardown.teardown_plans`).
        timeout: Seconds to wait for the failure.

    Returns:
        The teardown timings, from the failing child's clock reading.

    Raises:
        RuntimeError: Ray is not running, or the injected failure did not happen.
    """
    ray = _ray()
    actor_died = _module("ray.exceptions").RayActorError
    with tempfile.TemporaryDirectory(prefix="launch-bench-td-") as tmp:
        scratch = Path(tmp)
        group, actors = _create(ray, teardown_plans(plans, scratch))
        dismissed = False
        try:
            try:
                ray.get([actor.ready.remote() for actor in actors], timeout=timeout)
                raise RuntimeError("bench: the injected failure did not happen")
            except actor_died:
                noticed = time.monotonic()
            dismissed = True
            _dismiss(ray, group, actors, partial(child_pids, scratch))
            reaped = time.monotonic()
        finally:
            if not dismissed:  # interrupted, or no failure: still kill them
                _dismiss(ray, group, actors, partial(child_pids, scratch))
        return collect(scratch, noticed, reaped)
