"""``launch bench``: its arguments, presets (``--quick``) and output files.

The bench runs in a process of its own session (its driver), so that a terminal's
Ctrl-C reaches only ``launch bench`` itself, never the children being measured: the
``multiprocessing`` children of the baselines would otherwise each print a
``KeyboardInterrupt`` traceback. ``launch bench`` forwards SIGINT and SIGTERM to the
driver, which stops after the trial under way, reaps its children, and still prints
and writes what was measured (exit code 130).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
_DRIVER_ENV = "LAUNCH_BENCH_DRIVER"

QUICK: dict[str, Any] = {
    "ns": (1, 4, 8),
    "repeats": 1,
    "import_s": 0.2,
    "init_s": 0.2,
    "teardown_repeats": 1,
}


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of integers, got {text!r}"
        ) from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _sizes(text: str) -> tuple[int, ...]:
    from ._config import parse_size

    try:
        return tuple(parse_size(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_bench_parser(commands: Any, epilog: str) -> None:
    """Add ``bench`` to the ``launch`` sub-commands."""
    text = "time startup and teardown of launch against today's launch strategies"
    bench = commands.add_parser("bench", help=text, description=text + "; see docs/benchmarks.md")
    bench.add_argument(
        "--model",
        choices=("synthetic", "torch", "gpu"),
        default="synthetic",
        help="what each child does before READY (default: synthetic)",
    )
    bench.add_argument(
        "--quick", action="store_true", help="a small run (under a minute without the peers)"
    )
    bench.add_argument("--n", type=_ints, metavar="1,2,4", help="numbers of children")
    bench.add_argument(
        "--strategies", type=_names, metavar="A,B", help="strategies to run (default: all)"
    )
    bench.add_argument("--repeats", type=int, help="runs per cell (default 3; quick 1)")
    bench.add_argument("--import-s", type=float, help="synthetic: seconds to import the config")
    bench.add_argument("--init-s", type=float, help="synthetic: seconds of init")
    bench.add_argument(
        "--payload", type=_sizes, metavar="1KiB,1MiB", help="synthetic: kwargs payload sizes"
    )
    bench.add_argument(
        "--work", choices=("sleep", "spin"), default="sleep", help="synthetic: how time is spent"
    )
    bench.add_argument("--teardown-n", type=int, help="children in the teardown runs (0: skip)")
    bench.add_argument("--teardown-repeats", type=int, help="teardown runs per policy")
    bench.add_argument("--focus-n", type=int, default=8, help="the N the ratios are given at")
    bench.add_argument(
        "--accelerators",
        action="store_true",
        help="also compare forkserver cold/warm, parent preload and weight prefetch",
    )
    bench.add_argument(
        "--shard-mib", type=int, default=128, help="prefetch trial: MiB of weights per child"
    )
    bench.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="where JSON and plot go"
    )
    bench.add_argument(
        "--report", type=Path, metavar="FILE.json", help="show a saved result instead of running"
    )
    bench.add_argument("--plain", action="store_true", help="plain text, no rich")


def config_from_args(args: argparse.Namespace) -> Any:
    """A :class:`BenchConfig` from the parsed arguments (``--quick`` presets underneath)."""
    from ._config import DEFAULT_NS, BenchConfig

    values: dict[str, Any] = {"model": args.model, "ns": DEFAULT_NS[args.model]}
    if args.quick:
        values.update(QUICK)
    given = {
        "ns": args.n,
        "strategies": args.strategies,
        "repeats": args.repeats,
        "import_s": args.import_s,
        "init_s": args.init_s,
        "payloads": args.payload,
        "teardown_n": args.teardown_n,
        "teardown_repeats": args.teardown_repeats,
    }
    values.update({k: v for k, v in given.items() if v is not None})
    return BenchConfig(
        **values,
        work=args.work,
        focus_n=args.focus_n,
        accelerators=args.accelerators,
        shard_mib=args.shard_mib,
        out=args.out,
    )


def out_problem(args: argparse.Namespace) -> list[str]:
    """What is wrong with ``--out DIR`` (checked before anything runs): DIR may be
    created, but not its parent."""
    if args.report is not None:
        return []
    out: Path = args.out
    if out.exists() and not out.is_dir():
        return [f"--out {out}: not a directory"]
    if not out.exists() and not out.parent.is_dir():
        return [f"--out {out}: directory {out.parent} does not exist"]
    target = out if out.exists() else out.parent
    if not os.access(target, os.W_OK):
        return [f"--out {out}: not writable"]
    return []


def run_bench_command(args: argparse.Namespace, argv: list[str]) -> int:
    """``launch bench``: run (or ``--report`` a saved run), print, write JSON and plot.

    ``argv`` is the command line, given again to the driver process.
    """
    from ._report import print_report
    from ._results import BenchResult
    from ._run import checked_ns

    if args.report is not None:
        try:
            result = BenchResult.read_json(args.report)
        except ValueError as exc:
            print(f"launch: {exc}", file=sys.stderr)
            return 2
        print_report(result, args.plain)
        return 0
    try:
        checked_ns(config_from_args(args))
    except ValueError as exc:
        print(f"launch: {exc}", file=sys.stderr)
        return 2
    if os.environ.get(_DRIVER_ENV) == str(os.getppid()):
        return _drive(args)
    return _run_driver(argv)


def _run_driver(argv: list[str]) -> int:
    """Run the bench in a driver process of its own session; forward the first SIGINT or
    SIGTERM to it (and only to it) as SIGINT; return its exit code."""
    drivers: list[subprocess.Popen[bytes]] = []
    requested: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if requested:  # one stop request; a second one would cut its cleanup short
            print("launch: bench already stopping", file=sys.stderr, flush=True)
            return
        requested.append(signum)
        if drivers and drivers[0].returncode is None:
            drivers[0].send_signal(signal.SIGINT)

    previous = {
        signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        env = {**os.environ, _DRIVER_ENV: str(os.getpid())}
        command = [sys.executable, "-m", "launch", *argv]
        drivers.append(subprocess.Popen(command, env=env, start_new_session=True))
        if requested:  # a signal came before the driver existed
            drivers[0].send_signal(signal.SIGINT)
        code = drivers[0].wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code if code >= 0 else 128 - code


def _die_with_parent() -> None:
    """SIGINT this driver when ``launch bench`` dies (the bench then stops and reaps its
    children). Armed from the main thread of the parent, which lives as long as it."""
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGINT)
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != os.environ.get(_DRIVER_ENV):  # it died before the prctl
        os.kill(os.getpid(), signal.SIGINT)


def _interrupted(exc: BaseException) -> bool:
    """A KeyboardInterrupt, also as the only content of an exception group (trio raises it
    inside a task group of the trial that was running)."""
    if isinstance(exc, BaseExceptionGroup):
        rest = exc.split(KeyboardInterrupt)[1]
        return rest is None
    return isinstance(exc, KeyboardInterrupt)


def _drive(args: argparse.Namespace) -> int:
    """The driver: run the bench, print the report, write the JSON and the plot."""
    from ._report import open_progress, print_report, write_plot
    from ._results import BenchResult
    from ._run import run_bench

    config = config_from_args(args)
    result = BenchResult(config={}, machine={})
    code = 0
    try:
        _die_with_parent()
        with open_progress(args.plain) as progress:
            run_bench(config, progress, result)
    except ValueError as exc:
        print(f"launch: {exc}", file=sys.stderr)
        return 2
    except BaseException as exc:
        if not _interrupted(exc):
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the report be written
        print("launch: bench interrupted; writing what was measured", file=sys.stderr)
        result.interrupted = True
        code = EXIT_INTERRUPTED
    print_report(result, args.plain)
    stem = args.out / f"bench-{config.model}"
    print(f"json: {result.write_json(stem.with_suffix('.json'))}")
    try:
        print(f"plot: {write_plot(result, stem.with_suffix('.png'))}")
    except RuntimeError as exc:
        print(f"launch: {exc}", file=sys.stderr)
    return code
