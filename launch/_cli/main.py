"""The ``launch`` command line: ``up``, ``check``, ``demo``, ``trace`` and ``bench``.

Exit codes: 0 stopped on request (or the demo finished), 2 bad arguments or pipeline
file, 3 startup failed, 4 a child died while the pipeline was up, 130 ``bench``
interrupted. Output files (``--trace``, ``--timeline``, ``bench --out``) are checked
before anything starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from .._pipeline_spec import PipelineSpec
from ..bench._cli import add_bench_parser, out_problem, run_bench_command

EPILOG = """\
exit codes: 0 stopped on request (Ctrl-C, SIGTERM) or demo done; 2 bad arguments or
pipeline file; 3 startup failed; 4 a child died while the pipeline was up; 130 bench
interrupted (what was measured is still written).
pipeline file reference: docs/pipeline-file.md"""
CHECK_HELP = "validate a pipeline file and find its targets' modules, without starting anything"
TRACE_HELP = "render a trace saved by --trace as a Gantt chart"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch",
        description="Structured-concurrency launch layer for multi-process inference engines.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"launch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def runner(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, epilog=EPILOG)
        sub.add_argument(
            "--backend",
            choices=("trio", "asyncio"),
            default="trio",
            help="event loop to run on (default: trio)",
        )
        sub.add_argument(
            "--plain", action="store_true", help="plain lines instead of the live table"
        )
        sub.add_argument(
            "--trace",
            type=Path,
            metavar="FILE.json",
            help="write the timeline as a Chrome trace (open it in ui.perfetto.dev)",
        )
        sub.add_argument(
            "--timeline",
            type=Path,
            metavar="FILE.svg",
            help="write the startup as a Gantt chart (.png, .svg or .pdf; needs matplotlib)",
        )
        return sub

    up = runner("up", "start a pipeline file, stay up until Ctrl-C or SIGTERM, then stop it")
    up.add_argument("file", type=Path, help="pipeline file (TOML)")
    check = commands.add_parser("check", help=CHECK_HELP, description=CHECK_HELP, epilog=EPILOG)
    check.add_argument("file", type=Path, help="pipeline file (TOML)")
    trace = commands.add_parser("trace", help=TRACE_HELP, description=TRACE_HELP, epilog=EPILOG)
    trace.add_argument("file", type=Path, help="trace written by --trace")
    trace.add_argument(
        "--timeline",
        type=Path,
        required=True,
        metavar="OUT.png",
        help="chart to write (.png, .svg or .pdf; needs matplotlib)",
    )
    trace.add_argument("--whole", action="store_true", help="show serving and stopping too")
    demo = runner("demo", "start the embedded three-stage demo, show its startup, stop it")
    demo.add_argument(
        "--no-torch", action="store_true", help="use the pure-Python worker even if torch is here"
    )
    demo.add_argument(
        "--start-method",
        choices=("spawn", "forkserver", "fork"),
        default="spawn",
        help="how the demo's children start (default: spawn)",
    )
    add_bench_parser(commands, EPILOG)
    vllm_help = "vLLM's OpenAI server, engines and workers started by launch: vllm serve MODEL ..."
    commands.add_parser("vllm", help=vllm_help, add_help=False)  # vLLM's parser reads the rest
    return parser


def _err(message: str) -> None:
    print(f"launch: {message}", file=sys.stderr, flush=True)


def output_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the output files ``args`` asks for, checked before anything
    starts (a chart format or a directory found missing after a long run is too late)."""
    from .._timeline.files import output_problem
    from .._timeline.gantt import chart_problem

    problems = []
    trace = getattr(args, "trace", None)
    if trace is not None and (problem := output_problem(trace)) is not None:
        problems.append(f"--trace {trace}: {problem}")
    timeline = getattr(args, "timeline", None)
    if timeline is not None and (problem := chart_problem(timeline)) is not None:
        problems.append(f"--timeline {timeline}: {problem}")
    return problems


def _bench_problems(args: argparse.Namespace) -> list[str]:
    return output_problems(args) + out_problem(args)


def _load(file: Path) -> PipelineSpec | None:
    """The pipeline file's spec, or None once its ConfigError is printed."""
    from .._config import ConfigError, load_pipeline

    try:
        return load_pipeline(file)
    except ConfigError as exc:
        _err(str(exc))
        return None


def _check(args: argparse.Namespace, argv: list[str]) -> int:
    """``launch check FILE``: validate, find the targets' modules, print the stages."""
    from .._config import missing_targets

    file = args.file
    spec = _load(file)
    if spec is None:
        return 2
    problems = missing_targets(spec)
    for problem in problems:
        _err(f"{file}: {problem}")
    if problems:
        return 2
    print(f"{file}: OK, pipeline {spec.name!r}")
    for stage in spec.order():
        devices = ", ".join(str(d) for d in stage.devices) or "none"
        after = f", after {', '.join(stage.after)}" if stage.after else ""
        methods = sorted({s.start_method for s in stage.specs})
        print(
            f"  stage {stage.name!r}: {len(stage.specs)} x {stage.specs[0].target_name} "
            f"({'/'.join(methods)}), devices {devices}{after}"
        )
    return 0


def _up(args: argparse.Namespace, argv: list[str]) -> int:
    """``launch up FILE``: start the pipeline, stay up until a signal, stop it."""
    spec = _load(args.file)
    if spec is None:
        return 2
    if spec.uses_forkserver:
        from .._start.forkserver import prewarm

        prewarm(spec.preload)  # at once: the server imports while the rest starts up
    return _run(spec, args, stay_up=True)


def _demo(args: argparse.Namespace, argv: list[str]) -> int:
    """``launch demo``: start the embedded three-stage pipeline, show its startup, stop."""
    from .demo import INSTALL_TORCH, demo_pipeline, torch_available

    use_torch = not args.no_torch and torch_available()
    if not use_torch and not args.no_torch:
        _err(f"torch is not installed, so the demo runs its pure-Python worker; {INSTALL_TORCH}")
    print(
        "demo: thinker (2 ranks) + talker (1) + vocoder (1), "
        + ("torch.distributed gloo groups" if use_torch else "pure-Python TCP groups")
        + f", start method {args.start_method}",
        flush=True,
    )
    if args.start_method == "forkserver":
        from .._start.forkserver import prewarm

        # the server imports the worker (and torch) once; each child is a fork of it
        prewarm(["launch.integrations.torch", "torch"] if use_torch else ["launch._cli.demo"])
    spec = demo_pipeline(use_torch=use_torch, start_method=args.start_method)
    return _run(spec, args, stay_up=False)


def _run(spec: PipelineSpec, args: argparse.Namespace, *, stay_up: bool) -> int:
    import anyio

    from .up import Outcome, run_pipeline
    from .view import open_view

    async def main() -> Outcome:
        with open_view(args.plain) as view:
            return await run_pipeline(spec, view, stay_up=stay_up)

    outcome = anyio.run(main, backend=args.backend)
    code = outcome.exit_code
    timeline = outcome.pipeline.timeline
    try:
        if args.trace is not None:
            path = timeline.write_trace(args.trace)
            print(f"trace: {path} (open it in https://ui.perfetto.dev)")
        if args.timeline is not None:
            print(f"timeline: {timeline.write_chart(args.timeline)}")
    except (OSError, ValueError, RuntimeError) as exc:  # checked before the run; still possible
        _err(f"could not write the output: {exc}")
        code = code or 2
    return code


def _trace(args: argparse.Namespace, argv: list[str]) -> int:
    """``launch trace FILE --timeline OUT``: chart a saved trace."""
    from .._timeline import Timeline

    try:
        timeline = Timeline.read_trace(args.file)
        path = timeline.write_chart(args.timeline, whole=args.whole)
    except (OSError, ValueError, RuntimeError) as exc:
        _err(str(exc))
        return 2
    ready = timeline.all_ready
    when = f"all READY at {ready:.2f}s" if ready is not None else "not every child became READY"
    print(f"{path}: {len(timeline.children)} children of {timeline.name!r}, {when}")
    return 0


@dataclass(frozen=True)
class Command:
    """One subcommand: what to check before anything starts, and what runs it.

    Attributes:
        run: the handler, given the parsed arguments and the raw argv; returns the
            exit code.
        problems: what is wrong with its output files (printed, exit code 2).
    """

    run: Callable[[argparse.Namespace, list[str]], int]
    problems: Callable[[argparse.Namespace], list[str]] = output_problems


COMMANDS: dict[str, Command] = {
    "up": Command(_up),
    "check": Command(_check),
    "trace": Command(_trace),
    "demo": Command(_demo),
    "bench": Command(run_bench_command, _bench_problems),
}


def _add_search_path(args: argparse.Namespace) -> None:
    """Targets in the current directory import as they would under ``python -m``, and
    so do targets next to the pipeline file; children inherit this ``sys.path``."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    file = getattr(args, "file", None)
    if file is not None and str(file.resolve().parent) not in sys.path:
        sys.path.append(str(file.resolve().parent))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``launch`` and ``python -m launch``.

    Args:
        argv: the arguments, without the program name; ``sys.argv[1:]`` if None.

    Returns:
        The exit code (see the module's docstring).
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["vllm"]:  # vLLM's own parser reads the rest of the line
        from ..integrations.vllm_serve import main as vllm_main

        return vllm_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    command = COMMANDS[args.command]
    _add_search_path(args)
    problems = command.problems(args)
    for problem in problems:
        _err(problem)
    if problems:
        return 2
    return command.run(args, argv)
