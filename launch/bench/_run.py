"""The bench driver: every strategy, every N, every repeat, interleaved; then teardown."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ._accelerators import (
    FORKSERVER_VARIANTS,
    PREFETCH_VARIANTS,
    PRELOAD_VARIANTS,
    forkserver_trial,
    parent_preload_trial,
    prefetch_trial,
    write_shards,
)
from ._config import BenchConfig, format_size, visible_gpus
from ._heavy import fresh_module, heavy_modules, make_config, module_name
from ._results import BenchResult, StartupCell, TeardownCell
from ._strategies import PEERS, STRATEGIES, ChildPlan, missing_tool
from ._teardown import TEARDOWN_POLICIES


class Progress(Protocol):
    """What the driver reports while it runs (see ``_report.open_progress``)."""

    def begin(self, total: int) -> None: ...

    def step(self, label: str) -> None: ...

    def done(self, label: str, outcome: str) -> None: ...


class Quiet:
    """A progress that shows nothing."""

    def begin(self, total: int) -> None:
        pass

    def step(self, label: str) -> None:
        pass

    def done(self, label: str, outcome: str) -> None:
        pass


def plans_for(config: BenchConfig, n: int, payload: int | None, scratch: Path) -> list[ChildPlan]:
    """The children of one trial."""
    if config.model == "synthetic":
        params = {
            "config": make_config(
                scratch,
                import_s=config.import_s,
                init_s=config.init_s,
                work=config.work,
                payload=payload or 0,
            )
        }
        return [ChildPlan(f"child-{i}", "synthetic", params) for i in range(n)]
    from ..integrations.torch import free_ports

    init_method = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    backend = "nccl" if config.model == "gpu" else "gloo"
    return [
        ChildPlan(
            f"rank-{i}",
            config.model,
            {"rank": i, "world_size": n, "init_method": init_method, "backend": backend},
        )
        for i in range(n)
    ]


def preload_for(config: BenchConfig) -> list[str]:
    """What launch's forkserver imports once for the ``launch-forkserver`` strategy."""
    if config.model == "synthetic":
        return ["launch.bench._child", module_name(config.import_s, config.work)]
    return ["launch.bench._child", "launch.integrations.torch", "torch"]


def machine() -> dict[str, Any]:
    """Facts about where the bench ran."""
    facts: dict[str, Any] = {
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpus_visible": visible_gpus(),
    }
    distributions = {
        "launch": "launch-tree",
        "anyio": "anyio",
        "trio": "trio",
        "torch": "torch",
        "ray": "ray",
    }
    for key, distribution in distributions.items():
        try:
            facts[key] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return facts


def _label(strategy: str, n: int, payload: int | None) -> str:
    size = f", payload {format_size(payload)}" if payload is not None else ""
    return f"{strategy} N={n}{size}"


def _first_line(exc: BaseException) -> str:
    """The error in one line; a child's traceback is summed up by its last line."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(lines) > 1 and lines[0].endswith(":"):
        text += " " + lines[-1].strip()
    return f"{type(exc).__name__}: {text}"


DEADLOCK = (
    "skipped: a collective init cannot finish while one rank holds the lock until it is "
    "READY (the lock deadlocks by construction)"
)


def skip_reason(config: BenchConfig, strategy: str, n: int) -> str | None:
    """Why a cell is not run, if it is not: ``locked`` with a collective model, or a peer
    whose tool (ray, torch) is not installed."""
    if strategy == "locked" and config.model != "synthetic" and n > 1:
        return DEADLOCK
    return missing_tool(strategy)


def teardown_policies(config: BenchConfig) -> list[str]:
    """The teardown policies this run measures: launch's and vLLM's always, a peer's when
    that peer is among the strategies; none when ``teardown_n`` is 0."""
    if config.teardown_n <= 0:
        return []
    chosen = config.chosen
    return [p for p in TEARDOWN_POLICIES if p not in PEERS or p in chosen]


@contextlib.contextmanager
def ray_for(
    config: BenchConfig,
    ns: tuple[int, ...],
    teardown: list[str],
    progress: Progress,
    result: BenchResult,
    skipped: dict[str, str],
) -> Iterator[None]:
    """Ray started once for the run (``ray.init``, outside every clock; its seconds go to
    ``result.ray_init_s``) when a Ray trial is to run; if it cannot start, the Ray cells
    are skipped with the reason (in ``skipped``)."""
    name = "ray-actors"
    wanted = name in config.chosen or name in teardown
    if not wanted or missing_tool(name) is not None:
        yield
        return
    from ._peers_ray import ray_cluster

    cpus = max(
        [*(ns if name in config.chosen else ()), config.teardown_n if name in teardown else 0]
    )
    gpus = visible_gpus() if config.model == "gpu" else 0
    progress.step(f"starting ray (ray.init, {cpus} CPUs)")
    with contextlib.ExitStack() as stack:
        try:
            result.ray_init_s = stack.enter_context(ray_cluster(cpus, gpus))
        except Exception as exc:
            skipped[name] = "skipped: ray did not start: " + _first_line(exc)
        yield


def focus(config: BenchConfig, ns: tuple[int, ...]) -> int:
    """The N the ratios and accelerator trials use."""
    return config.focus_n if config.focus_n in ns else max(ns)


Accelerator = Callable[[list[ChildPlan], BenchConfig, Path], float]


def accelerator_trials(config: BenchConfig) -> dict[str, Accelerator]:
    """The accelerator comparisons this run makes, by name ("trial: variant")."""
    if not config.accelerators:
        return {}
    trials: dict[str, Accelerator] = {}
    for variant in FORKSERVER_VARIANTS:
        trials[f"forkserver: {variant}"] = partial(_forkserver, variant=variant)
    if config.model == "synthetic":
        for variant in PRELOAD_VARIANTS:
            trials[f"parent preload: {variant}"] = partial(_parent, variant=variant)
        for variant in PREFETCH_VARIANTS:
            trials[f"prefetch: {variant}"] = partial(_prefetch, variant=variant)
    return trials


def _forkserver(plans: list[ChildPlan], config: BenchConfig, scratch: Path, variant: str) -> float:
    return forkserver_trial(plans, preload_for(config), variant, config.ready_timeout)


def _parent(plans: list[ChildPlan], config: BenchConfig, scratch: Path, variant: str) -> float:
    module = fresh_module(scratch, import_s=config.import_s, work=config.work)
    return parent_preload_trial(plans, module, variant, config.ready_timeout)


def _prefetch(plans: list[ChildPlan], config: BenchConfig, scratch: Path, variant: str) -> float:
    shards = write_shards(scratch / "weights", len(plans), config.shard_mib << 20)
    return prefetch_trial(plans, shards, variant, config.ready_timeout)


def checked_ns(config: BenchConfig) -> tuple[int, ...]:
    """The N values to run; the GPU model needs one GPU per rank."""
    if config.model != "gpu":
        return config.ns
    gpus = visible_gpus()
    if gpus == 0:
        raise ValueError("bench: model 'gpu' needs visible NVIDIA GPUs; none found")
    ns = tuple(n for n in config.ns if n <= gpus)
    if not ns:
        raise ValueError(f"bench: model 'gpu' has {gpus} GPU(s); every N asked for is larger")
    return ns


T = TypeVar("T")


def _attempt(
    progress: Progress,
    label: str,
    errors: list[str],
    measure: Callable[..., T],
    plans: Callable[[], list[ChildPlan]],
    *args: Any,
) -> T | None:
    """One trial: ``measure(plans(), *args)``; a failure is recorded in ``errors`` and
    shown, and the run goes on."""
    progress.step(label)
    try:
        return measure(plans(), *args)
    except Exception as exc:
        errors.append(_first_line(exc))
        progress.done(label, "failed: " + _first_line(exc))
        return None


def run_bench(
    config: BenchConfig, progress: Progress | None = None, result: BenchResult | None = None
) -> BenchResult:
    """Run the bench described by ``config``; fills and returns ``result`` (pass your own
    to keep what was measured if the run is interrupted)."""
    progress = progress or Quiet()
    ns = checked_ns(config)
    strategies = config.chosen
    series = config.series
    teardown = teardown_policies(config)
    skipped: dict[str, str] = {}  # strategy -> why its cells are not run
    if result is None:
        result = BenchResult(config={}, machine={})
    result.config = {**asdict(config), "ns": list(ns), "strategies": list(strategies)}
    result.config["out"] = str(config.out) if config.out is not None else None
    result.machine = machine()
    total = config.repeats * len(ns) * len(series) * len(strategies)
    total += config.teardown_repeats * len(teardown)
    accel = accelerator_trials(config)
    total += config.repeats * len(accel)
    progress.begin(total)
    began = time.monotonic()
    cells = {(s, n, p): StartupCell(s, n, p) for n in ns for p in series for s in strategies}
    result.startup = list(cells.values())
    tcells = {policy: TeardownCell(policy, config.teardown_n) for policy in teardown}
    result.teardown = list(tcells.values())
    try:
        with heavy_modules() as scratch, ray_for(config, ns, teardown, progress, result, skipped):
            if "launch-forkserver" in strategies:
                from .._start.forkserver import FORKSERVER, prewarm

                progress.step("warming launch's forkserver: " + ", ".join(preload_for(config)))
                if config.model == "synthetic":
                    make_config(
                        scratch, import_s=config.import_s, init_s=0, work=config.work, payload=0
                    )
                t0 = time.monotonic()
                prewarm(preload_for(config))
                FORKSERVER.wait_warm()
                result.forkserver_warm_s = time.monotonic() - t0
            for _ in range(config.repeats):
                for n in ns:
                    for payload in series:
                        for strategy in strategies:
                            cell = cells[strategy, n, payload]
                            label = _label(strategy, n, payload)
                            reason = skipped.get(strategy) or skip_reason(config, strategy, n)
                            if reason is not None:
                                if not cell.errors:
                                    cell.errors.append(reason)
                                progress.done(label, reason)
                                continue
                            plans = partial(plans_for, config, n, payload, scratch)
                            measure = STRATEGIES[strategy]
                            run = _attempt(
                                progress, label, cell.errors, measure, plans, config.ready_timeout
                            )
                            if run is not None:
                                cell.ready_s.append(run.ready_s)
                                cell.started_s.append(run.started_s)
                                cell.parent_cpu_s.append(run.parent_cpu_s)
                                cell.peak_rss_mib.extend(run.peak_rss_mib)
                                progress.done(label, f"all READY in {run.ready_s:.2f}s")
            synthetic = BenchConfig(
                import_s=config.import_s, init_s=config.init_s, work=config.work
            )
            small = min(config.payloads or (0,))
            for _ in range(config.teardown_repeats):
                for policy in teardown:
                    tcell = tcells[policy]
                    label = f"teardown {policy} N={config.teardown_n}"
                    reason = skipped.get(policy) or missing_tool(policy)
                    if reason is not None:
                        if not tcell.errors:
                            tcell.errors.append(reason)
                        progress.done(label, reason)
                        continue
                    plans = partial(plans_for, synthetic, config.teardown_n, small, scratch)
                    stop = TEARDOWN_POLICIES[policy]
                    trun = _attempt(
                        progress, label, tcell.errors, stop, plans, config.ready_timeout
                    )
                    if trun is not None:
                        tcell.reaped_s.append(trun.reaped_s)
                        tcell.noticed_s.append(trun.noticed_s)
                        tcell.left.append(trun.left)
                        progress.done(label, f"all reaped {trun.reaped_s:.2f}s after the failure")
            if accel:
                n = focus(config, ns)
                acells = {name: StartupCell(name, n, None) for name in accel}
                result.accelerators = list(acells.values())
                payload = small if config.model == "synthetic" else None
                for _ in range(config.repeats):
                    for name, trial in accel.items():
                        label = f"{name} N={n}"
                        plans = partial(plans_for, config, n, payload, scratch)
                        errors = acells[name].errors
                        run_s = _attempt(progress, label, errors, trial, plans, config, scratch)
                        if run_s is not None:
                            acells[name].ready_s.append(run_s)
                            progress.done(label, f"{run_s:.2f}s")
    finally:  # also when interrupted: the report says how long it ran
        result.wall_s = time.monotonic() - began
    return result
