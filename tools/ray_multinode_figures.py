"""launch's Ray placement on a simulated multi-node cluster: placement, startup,
first-failure teardown and node-loss detection, against the same work done locally by
launch and by Ray actors in a placement group (``launch bench``'s Ray peer).

A head and two nodes (``ray.cluster_utils.Cluster``, as ``tests/ray_cluster``) run on
this machine; this process is the driver. For each N (children, one ``{"CPU": 1}``
bundle each, ``SPREAD``) and each of ``--rounds`` rounds:

- placement: ``open_placement`` entered (placement group created and polled until
  placed); Ray's own ``ray.get(placement_group(...).ready())`` beside it;
- startup: ``open_group(..., placement=...)`` entered → every child READY, each child
  ``launch bench``'s synthetic one (``--init-s`` of init); beside it launch with no
  placement and the bench's Ray peer (actors in a placement group, PACK);
- teardown: the first child fails ``0.5 s`` into its init → every sibling's process
  has exited (``launch bench``'s teardown trial: pid files, read from ``/proc``);
- node loss: a fourth node joins (outside the clock), child 0 is placed on it, and once
  the group is READY the node's raylet is SIGKILLed (``raylet-killed``: its workers
  exit, the host actor's connection closes) or every process of the node is SIGSTOPped
  (``node-frozen``: a hung or cut-off machine, found by the missing heartbeat). Timed:
  → ``ChildDied`` noticed (its ``failed_at``), → ``LaunchFailed`` raised to the caller,
  → every process of the group on the live nodes gone.

    python tools/ray_multinode_figures.py                       # N = 2, 4, 8, 5 rounds
    python tools/ray_multinode_figures.py --ns 2 --rounds 1     # a quick check

Writes ``--json`` (raw samples, median/min/max per cell) and ``--chart`` (PNG), and
prints a table. Needs ray (``pip install '.[ray]'``), psutil, and for the chart and the
table matplotlib and rich (``.[plot,cli]``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import psutil  # type: ignore[import-untyped]

import launch
from launch.bench import _peers_ray, _strategies, _teardown
from launch.bench._config import BenchConfig
from launch.bench._heavy import heavy_modules
from launch.bench._report import open_progress
from launch.bench._run import Progress, machine, plans_for
from launch.bench._strategies import ChildPlan, launch_specs
from launch.integrations.ray import RayPlacement, open_placement

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300.0  # READY, and any wait of a trial
GONE_S = 60.0  # bound on waiting for processes to exit
NODE_LOST_S = 60.0  # a node loss not noticed by then fails the trial

METRICS = {
    "placement": "placement group created → placed (s)",
    "startup": "open → every child READY (s)",
    "teardown": "child fails → every sibling gone (s)",
    "node-loss-noticed": "node lost → ChildDied noticed (s)",
    "node-loss-raised": "node lost → LaunchFailed raised (s)",
    "node-loss-gone": "node lost → group gone on live nodes (s)",
}
Samples = dict[str, dict[str, dict[int, list[float]]]]  # metric -> strategy -> n -> seconds


@contextmanager
def simulated_cluster(node_cpus: int) -> Iterator[Any]:
    """A head and two nodes (``head``, ``node_a``, ``node_b`` resources), this process
    connected as driver; shut down on exit. Ray does not prestart idle workers (as in
    ``launch bench``), so each trial pays for its actors' worker processes."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": node_cpus,
            "resources": {"head": 1},
            "_system_config": _peers_ray._SYSTEM_CONFIG,
        },
    )
    try:
        for name in ("node_a", "node_b"):
            cluster.add_node(num_cpus=node_cpus, resources={name: 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]


def _tree(pid: int | None) -> list[int]:
    if not pid:
        return []
    try:
        return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def _wait_gone(pids: Sequence[int], within: float = GONE_S) -> float:
    """Poll until every pid has exited (a zombie counts); the time it happened."""
    deadline = time.monotonic() + within
    while not all(map(_teardown.gone, pids)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"still alive after {within:g}s: {pids}")
        time.sleep(0.005)
    return time.monotonic()


def _spread(n: int, pin_first: str | None = None) -> RayPlacement:
    bundles = [{"CPU": 1.0} for _ in range(n)]
    if pin_first is not None:
        bundles[0][pin_first] = 0.5
    return RayPlacement(bundles, strategy="SPREAD", placement_timeout=TIMEOUT_S)


# --- one trial of each kind; each returns seconds (or a dict of them) ---


def placement_launch(n: int) -> float:
    async def main() -> float:
        t0 = time.monotonic()
        async with open_placement(_spread(n)):
            return time.monotonic() - t0

    return float(anyio.run(main, backend="trio"))


def placement_ray(n: int) -> float:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    t0 = time.monotonic()
    group = placement_group([{"CPU": 1}] * n, strategy="SPREAD")
    try:
        ray.get(group.ready(), timeout=TIMEOUT_S)
        return time.monotonic() - t0
    finally:
        remove_placement_group(group)


def startup_placed(plans: Sequence[ChildPlan]) -> float:
    specs = launch_specs(plans, "spawn", TIMEOUT_S)

    async def main() -> float:
        t0 = time.monotonic()
        async with launch.open_group(specs, name="fig", placement=_spread(len(specs))):
            return time.monotonic() - t0

    return float(anyio.run(main, backend="trio"))


def teardown_placed(plans: Sequence[ChildPlan]) -> float:
    with tempfile.TemporaryDirectory(prefix="launch-ray-td-") as tmp:
        scratch = Path(tmp)
        specs = launch_specs(_teardown.teardown_plans(plans, scratch), "spawn", TIMEOUT_S)

        async def main() -> None:
            try:
                async with launch.open_group(specs, name="fig-td", placement=_spread(len(specs))):
                    pass
            except launch.LaunchFailed as exc:
                if exc.first.name != specs[0].name:
                    raise
                return
            raise RuntimeError("the injected failure did not happen")

        anyio.run(main, backend="trio")
        reaped = _wait_gone(_teardown.child_pids(scratch))
        failed_at = float((scratch / "failed_at").read_text())
        return reaped - failed_at


def _freeze(node: Any) -> list[psutil.Process]:
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    frozen = []
    for proc in [raylet, *raylet.children(recursive=True)]:
        try:
            proc.suspend()
            frozen.append(proc)
        except psutil.NoSuchProcess:
            pass
    return frozen


def _wait_node_dead(node_id: str) -> None:
    import ray

    deadline = time.monotonic() + GONE_S
    while any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):  # type: ignore[no-untyped-call]
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray still counts node {node_id[:12]} alive after {GONE_S:g}s")
        time.sleep(0.1)


def node_loss(cluster: Any, plans: Sequence[ChildPlan], how: str) -> dict[str, float]:
    """Child 0 on a node that joins for this trial; the node lost once all are READY."""
    node = cluster.add_node(num_cpus=2, resources={"node_c": 1})
    cluster.wait_for_nodes()
    specs = launch_specs(plans, "spawn", TIMEOUT_S)
    frozen: list[psutil.Process] = []
    everyone: list[int] = []
    lost: list[int] = []  # processes on the lost node (frozen ones go when it thaws)
    marks: dict[str, float] = {}

    async def main() -> None:
        nonlocal frozen
        try:
            async with launch.open_group(
                specs, name="fig-loss", placement=_spread(len(specs), pin_first="node_c")
            ) as group:
                for child in group:
                    tree = _tree(child.pid)
                    everyone.extend(tree)
                    if getattr(child.node, "node_id", None) == node.node_id:
                        lost.extend(tree)
                marks["t0"] = time.monotonic()
                if how == "node-frozen":
                    frozen = _freeze(node)
                else:
                    # SIGKILLed and reaped, as a crashed raylet is by its parent: Ray's
                    # workers look for their raylet's pid, and a zombie still has one.
                    raylet = node.all_processes["raylet"][0].process
                    os.kill(raylet.pid, signal.SIGKILL)
                    await anyio.to_thread.run_sync(raylet.wait)
                await anyio.sleep(NODE_LOST_S)
        except launch.LaunchFailed as exc:
            marks["raised"] = time.monotonic()
            first = exc.first
            if not isinstance(first, launch.ChildDied) or first.name != specs[0].name:
                raise
            marks["noticed"] = first.failed_at
            return
        raise RuntimeError(f"the lost node went unnoticed for {NODE_LOST_S:g}s")

    try:
        anyio.run(main, backend="trio")
        live = [pid for pid in everyone if pid not in lost or how == "raylet-killed"]
        gone = _wait_gone(live)
    finally:
        cluster.remove_node(node, allow_graceful=False)
        for proc in frozen:
            try:
                proc.resume()
            except psutil.NoSuchProcess:
                pass
        _wait_gone(everyone)
        _wait_node_dead(node.node_id)  # the next trial's placement does not pay for it
    t0 = marks["t0"]
    return {
        "node-loss-noticed": marks["noticed"] - t0,
        "node-loss-raised": marks["raised"] - t0,
        "node-loss-gone": gone - t0,
    }


# --- the run ---


def run(args: argparse.Namespace, progress: Progress) -> Samples:
    samples: Samples = {metric: {} for metric in METRICS}

    def add(metric: str, strategy: str, n: int, value: float) -> None:
        samples[metric].setdefault(strategy, {}).setdefault(n, []).append(value)

    config = BenchConfig(ns=tuple(args.ns), init_s=args.init_s, import_s=args.import_s)
    Trial = Callable[[Any, int, list[ChildPlan]], None]

    def placement(cluster: Any, n: int, plans: list[ChildPlan]) -> None:
        add("placement", "launch-ray", n, placement_launch(n))
        add("placement", "ray", n, placement_ray(n))

    def startup(cluster: Any, n: int, plans: list[ChildPlan]) -> None:
        add("startup", "launch-ray", n, startup_placed(plans))
        if args.peers:
            add("startup", "launch-local", n, _strategies.launch_trio(plans, TIMEOUT_S).ready_s)
            add("startup", "ray-actors", n, _peers_ray.ray_actors(plans, TIMEOUT_S).ready_s)

    def teardown(cluster: Any, n: int, plans: list[ChildPlan]) -> None:
        add("teardown", "launch-ray", n, teardown_placed(plans))
        if args.peers:
            add("teardown", "launch-local", n, _teardown.launch_trio(plans, TIMEOUT_S).reaped_s)
            add("teardown", "ray-actors", n, _peers_ray.ray_teardown(plans, TIMEOUT_S).reaped_s)

    def lose_node(how: str) -> Trial:
        def trial(cluster: Any, n: int, plans: list[ChildPlan]) -> None:
            for metric, value in node_loss(cluster, plans, how).items():
                add(metric, how, n, value)

        return trial

    trials: list[tuple[str, Trial]] = [
        ("placement", placement),
        ("startup", startup),
        ("teardown", teardown),
        ("node loss, raylet killed", lose_node("raylet-killed")),
        ("node loss, node frozen", lose_node("node-frozen")),
    ]
    progress.begin(args.rounds * len(args.ns) * len(trials))
    with heavy_modules() as scratch:
        progress.step("starting the simulated cluster")
        with simulated_cluster(args.node_cpus) as cluster:
            for round_ in range(args.rounds):
                for n in args.ns:
                    plans = plans_for(config, n, 1024, scratch)
                    for name, fn in trials:
                        label = f"round {round_ + 1} N={n} {name}"
                        progress.step(label)
                        fn(cluster, n, plans)
                        progress.done(label, "ok")
    return samples


def summarize(samples: Samples) -> dict[str, Any]:
    return {
        metric: {
            strategy: {
                str(n): {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "samples": values,
                }
                for n, values in sorted(by_n.items())
            }
            for strategy, by_n in by_strategy.items()
        }
        for metric, by_strategy in samples.items()
        if by_strategy
    }


def print_table(summary: dict[str, Any], ns: Sequence[int], plain: bool) -> None:
    header = ["figure", "run by", *(f"N={n}" for n in ns)]
    rows = []
    for metric, by_strategy in summary.items():
        for strategy, by_n in by_strategy.items():
            cells = []
            for n in ns:
                cell = by_n.get(str(n))
                cells.append(
                    "-"
                    if cell is None
                    else f"{cell['median']:.2f} ({cell['min']:.2f}–{cell['max']:.2f})"
                )
            rows.append([metric, strategy, *cells])
    try:
        if plain:
            raise ImportError
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print("\t".join(header))
        for row in rows:
            print("\t".join(row))
        return
    table = Table(title="seconds: median (min–max)")
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def chart(summary: dict[str, Any], ns: Sequence[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("placement", ["placement"]),
        ("startup", ["startup"]),
        ("teardown", ["teardown"]),
        ("node loss (N children, one on the lost node)", list(METRICS)[3:]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    for ax, (name, metrics) in zip(axes, panels, strict=True):
        strategies = dict.fromkeys(s for m in metrics for s in summary.get(m, {}))
        series = [
            (f"{strategy} {m.removeprefix('node-loss-')}" if len(metrics) > 1 else strategy, by_n)
            for strategy in strategies
            for m in metrics
            if (by_n := summary.get(m, {}).get(strategy)) is not None
        ]
        width = 0.8 / max(1, len(series))
        for i, (label, by_n) in enumerate(series):
            xs, med, low, high = [], [], [], []
            for j, n in enumerate(ns):
                cell = by_n.get(str(n))
                if cell is None:
                    continue
                xs.append(j + (i - (len(series) - 1) / 2) * width)
                med.append(cell["median"])
                low.append(cell["median"] - cell["min"])
                high.append(cell["max"] - cell["median"])
            ax.bar(xs, med, width, yerr=[low, high], capsize=2, label=label)
        ax.set_xticks(range(len(ns)), [f"N={n}" for n in ns])
        ax.set_title(name)
        ax.set_ylabel("seconds (median, min–max)")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--init-s", type=float, default=1.0, help="each child's init")
    parser.add_argument("--import-s", type=float, default=0.5, help="each child's import")
    parser.add_argument(
        "--node-cpus", type=int, default=0, help="logical CPUs per node (0: enough for max N)"
    )
    parser.add_argument("--no-peers", dest="peers", action="store_false", help="launch-ray only")
    parser.add_argument("--plain", action="store_true", help="no rich progress or table")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs" / "img" / "ray-multinode.png")
    parser.add_argument(
        "--json",
        type=Path,
        default=ROOT / "docs" / "development" / "bench-raw" / "ray-multinode.json",
    )
    args = parser.parse_args(argv)
    if args.node_cpus <= 0:  # SPREAD over 3 nodes; the Ray peer PACKs (all on one if it can)
        args.node_cpus = max(2, math.ceil(max(args.ns) / 3) + 1)
    began = time.monotonic()
    with open_progress(args.plain) as progress:
        samples = run(args, progress)
    summary = summarize(samples)
    facts = machine()
    record = {
        "tool": "tools/ray_multinode_figures.py",
        "argv": sys.argv[1:] if argv is None else argv,
        "config": {
            "ns": args.ns,
            "rounds": args.rounds,
            "init_s": args.init_s,
            "import_s": args.import_s,
            "node_cpus": args.node_cpus,
            "nodes": "simulated: head + node_a + node_b (+ node_c per node-loss trial)",
        },
        "machine": facts,
        "wall_s": time.monotonic() - began,
        "metrics": METRICS,
        "figures": summary,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    title = (
        f"launch on a simulated Ray cluster (3 nodes on one {facts['cpus']}-CPU host), "
        f"{args.rounds} rounds, init {args.init_s:g}s"
    )
    chart(summary, args.ns, args.chart, title)
    print_table(summary, args.ns, args.plain)
    print(f"wrote {args.json} and {args.chart}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
