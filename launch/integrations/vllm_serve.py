"""``launch vllm serve MODEL [vllm serve options]``: vLLM's OpenAI-compatible server whose
engine cores, DP coordinator, workers and extra API servers are one launch task tree.

::

    launch vllm serve ── asyncio (uvloop) event loop, one task group
     ├─ signal watch: Ctrl-C / SIGTERM before the server runs → bounded stop, exit 0
     ├─ open_engine_cores: DPCoordinator + EngineCore_DP<r> (forks of launch's forkserver)
     │   └─ each engine's LaunchExecutor: VllmWorker-<rank> (forks of their engine)
     ├─ --api-server-count > 1: ApiServer_<i> children (forkserver), spawned with the engines
     └─ --api-server-count 1: vLLM's run_server_worker in this process, once engines are READY

It is the layout of vLLM's own multi-API-server mode (engines first, each API server
handed its client addresses; ``client_config`` of ``run_server_worker``), with launch
starting every process. At entry, before vLLM is imported here, launch's forkserver starts
and imports vLLM's engine and worker modules; the engines are forks of it, so no engine
imports vLLM again.

Two options of launch's own, taken out before vLLM parses the rest:
``--launch-trace FILE`` writes the engines' startup timeline (a Chrome trace, the
format of ``launch trace``) once they are READY; ``--no-prefetch`` turns off reading a
local model's weight files into the page cache from the start (threads, cancelled at
stop), which overlaps a cold load with the engines' start.

Exit codes: 0 stopped on request (Ctrl-C, SIGTERM); 2 bad arguments or a layout this
command does not start (multi-node, external or hybrid load balancing, headless, gRPC);
3 startup failed; 4 a process died while serving. A failure prints, last, the process
that failed first (an engine, and through it the worker's rank), its exception and its
own traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .. import StartMethod

USAGE = "launch vllm serve [MODEL] [vllm serve options]  (launch vllm serve --help)"
ENGINE_PRELOAD = (
    "vllm.v1.engine.core",
    "vllm.v1.executor.multiproc_executor",
    "launch.integrations.vllm",
    "launch.integrations.vllm_dp",
)
# vLLM's server entry points moved in 0.3x: (module of run_server_worker, of cli_args,
# of setup_server) for 0.32, then for 0.26; ``_vllm_server`` picks the one present
_SERVER_MODULES = (
    (
        "vllm.entrypoints.launchers.api_server.entry",
        "vllm.entrypoints.launchers.cli_args",
        "vllm.entrypoints.launchers.launcher",
    ),
    (
        "vllm.entrypoints.openai.api_server",
        "vllm.entrypoints.openai.cli_args",
        "vllm.entrypoints.openai.api_server",
    ),
)
API_SERVER_TARGET = "launch.integrations.vllm_serve:api_server"
EXIT_STOPPED, EXIT_USAGE, EXIT_STARTUP, EXIT_DIED = 0, 2, 3, 4


def _err(message: str) -> None:
    print(f"launch vllm serve: {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    """Run ``launch vllm ARGV``: only ``serve`` is a subcommand.

    Args:
        argv: the arguments after ``launch vllm``.

    Returns:
        The exit code (module docstring).
    """
    if not argv or argv[0] != "serve":
        print(f"usage: {USAGE}", file=sys.stderr)
        return EXIT_USAGE
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        _err("vLLM is not installed: pip install 'launch-tree[vllm]'")
        return EXIT_USAGE
    import launch

    if "-h" not in argv and "--help" not in argv and not any(a.startswith("--help=") for a in argv):
        # first: the server imports vLLM's engine while this process imports the rest
        launch.prewarm(list(ENGINE_PRELOAD))
    # until the event loop watches them: Ctrl-C or SIGTERM while vLLM's modules import and
    # its config is built is a stop on request too (the forkserver is all there is)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        try:
            own, rest = split_own_options(argv[1:])
            args = parse_args(rest)
        except ValueError as exc:
            _err(str(exc))
            return EXIT_USAGE
        args.launch_trace, args.launch_prefetch = own.trace, own.prefetch
        import anyio

        code: int = anyio.run(serve, args, backend="asyncio", backend_options={"use_uvloop": True})
    except KeyboardInterrupt:
        code = EXIT_STOPPED  # every child was stopped on the way out
    finally:  # also on a bad argument or a config vLLM refuses
        _stop_forkserver()
    if code in (EXIT_STARTUP, EXIT_DIED):
        # every process is gone and the cause is printed: the interpreter's teardown of
        # vLLM and torch (seconds) would only delay the exit that reports the failure
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


START_ENV = "LAUNCH_VLLM_SERVE_START"  # "forkserver" (default) or "spawn"


def _start_method() -> StartMethod:
    """``forkserver`` once launch's forkserver has imported vLLM's engine modules, or
    ``spawn`` (what ``vllm serve`` itself uses) when it cannot serve: where importing vLLM
    initialises CUDA (vLLM 0.26 on a GPU host does, probing pinned memory at import),
    launch's forkserver refuses to fork, since its children could not use the GPU.
    Blocking: call it in a worker thread."""
    from .. import ForkserverError
    from ..hooks import wait_forkserver_warm

    if os.environ.get(START_ENV) == "spawn":
        return "spawn"
    try:
        wait_forkserver_warm()
    except ForkserverError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _err(f"engines start as fresh interpreters (spawn): {first}")
        return "spawn"
    return "forkserver"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_forkserver() -> None:
    """Stop launch's forkserver now rather than at exit: every child it forked has been
    reaped, and its own exit (an interpreter holding vLLM and torch) takes seconds that
    the command's exit would wait for. SIGKILL, then the usual reap."""
    from ..hooks import forkserver_pid, stop_forkserver

    pid = forkserver_pid()  # our unreaped child: the pid cannot have been reused
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    stop_forkserver()


def split_own_options(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """launch's own options (``--launch-trace FILE``, ``--no-prefetch``) out of ``argv``.

    Args:
        argv: what follows ``launch vllm serve``.

    Returns:
        The namespace of launch's options (``trace``, ``prefetch``) and the rest, for vLLM.

    Raises:
        ValueError: ``--launch-trace`` without a file.
    """
    own = argparse.Namespace(trace=None, prefetch=True)
    rest: list[str] = []
    items = iter(argv)
    for arg in items:
        if arg == "--launch-trace":
            own.trace = next(items, None)
            if own.trace is None or own.trace.startswith("-"):
                raise ValueError("--launch-trace needs a file")
        elif arg.startswith("--launch-trace="):
            own.trace = arg.split("=", 1)[1]
        elif arg == "--no-prefetch":
            own.prefetch = False
        else:
            rest.append(arg)
    return own, rest


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``vllm serve``'s own parser and checks, then the layouts this command refuses.

    Args:
        argv: what follows ``launch vllm serve``.

    Returns:
        The namespace ``vllm serve`` would run with, ``api_server_count`` resolved.

    Raises:
        ValueError: a layout that is not one node's engines behind internal load
            balancing, or an invalid combination of vLLM's own options.
    """
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    vllm_server = _vllm_server()
    parser = vllm_server.cli_args.make_arg_parser(
        FlexibleArgumentParser(
            prog="launch vllm serve",
            description="vLLM's OpenAI-compatible server; engines and workers started by launch.",
        )
    )
    args: argparse.Namespace = parser.parse_args(argv)
    if getattr(args, "model_tag", None) is not None:
        args.model = args.model_tag
    vllm_server.cli_args.validate_parsed_serve_args(args)
    refused = [
        option
        for option, value in (
            ("--headless", args.headless),
            ("--grpc", getattr(args, "grpc", False)),
            ("--data-parallel-external-lb", args.data_parallel_external_lb),
            ("--data-parallel-hybrid-lb", args.data_parallel_hybrid_lb),
            ("--data-parallel-multi-port-external-lb", args.data_parallel_multi_port_external_lb),
            ("--data-parallel-rank", args.data_parallel_rank is not None),
            ("--data-parallel-start-rank", args.data_parallel_start_rank is not None),
            ("--nnodes > 1", (getattr(args, "nnodes", 1) or 1) > 1),
            (
                "--data-parallel-size-local != --data-parallel-size",
                args.data_parallel_size_local not in (None, args.data_parallel_size),
            ),
        )
        if value
    ]
    if refused:
        raise ValueError(
            "starts the engines of one node behind vLLM's internal load balancing; "
            f"not supported: {', '.join(refused)} (use `vllm serve`)"
        )
    if args.api_server_count is None:
        args.api_server_count = args.data_parallel_size  # vLLM's default for internal LB
    if args.api_server_count < 1:
        raise ValueError(f"--api-server-count must be at least 1, got {args.api_server_count}")
    return args


def describe_failure(failure: BaseException) -> str:
    """What the command prints last on a failure: the first process that failed, its
    exception and its whole traceback (an engine's ends with its worker's)."""
    from .. import LaunchFailed

    if not isinstance(failure, LaunchFailed):
        return f"{type(failure).__name__}: {failure}"
    first = failure.first
    text = f"startup failed: {first.summary()}"
    if first.remote_traceback:
        text += f"\n--- traceback of {first.name!r} ---\n{first.remote_traceback.rstrip()}"
    return text


async def serve(args: argparse.Namespace) -> int:
    """Start the engines (and the API servers) and serve until a signal or a failure;
    meanwhile (unless ``args.launch_prefetch`` is False) read a local model's weight
    files into the page cache.

    Args:
        args: from :func:`parse_args` (``launch_trace``, ``launch_prefetch``: launch's
            own options, :func:`split_own_options`).

    Returns:
        The exit code.
    """
    import anyio

    async with anyio.create_task_group() as tg:
        if getattr(args, "launch_prefetch", True):
            tg.start_soon(_prefetch, args.model)
        try:
            code = await _serve(args)
        finally:
            tg.cancel_scope.cancel()  # the prefetch, if it still reads
    return code


async def _prefetch(model: str) -> None:
    """``prefetch_weights`` of a local model directory; a failure to read only costs
    the overlap (vLLM's own load reports a real problem)."""
    from .. import prefetch_weights

    with contextlib.suppress(Exception):
        await prefetch_weights(model)


async def _serve(args: argparse.Namespace) -> int:
    import anyio
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext

    from .. import LaunchFailed
    from .vllm import engine_executor, remove_ipc_sockets, zmq_addresses_of
    from .vllm_dp import engine_addresses, open_engine_cores

    count: int = args.api_server_count
    engine_args = AsyncEngineArgs.from_cli_args(args)
    vllm_server = _vllm_server()
    propagate = getattr(vllm_server.cli_args, "propagate_flash_late_interaction", None)
    if propagate is not None:  # vLLM >= 0.3x
        propagate(args, engine_args)
    engine_args._api_process_count = count
    engine_args._api_process_rank = -1
    config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    if count > 1:
        _multiprocess_prometheus()
    # bound before any engine starts, as vLLM does: a busy port fails at once
    listen_address, sock = vllm_server.setup_server(args, reuse_port=count > 1)
    state = {"stopped": False, "serving": False}

    addresses = engine_addresses(config, count)
    start_method = await anyio.to_thread.run_sync(_start_method, abandon_on_cancel=True)

    async def run(tg: Any) -> None:
        if count == 1:  # this process serves: its imports overlap the engines' start
            tg.start_soon(anyio.to_thread.run_sync, importlib.import_module, vllm_server.entry)
        else:
            # API servers start with the engines (their clients wait for the engines'
            # connections, as in vLLM's multi-API-server mode). This process keeps the
            # port bound, never listening; each server binds it with SO_REUSEPORT.
            await tg.start(_run_api_servers, args, addresses, start_method)
        async with open_engine_cores(
            config,
            executor_class=engine_executor(config),
            log_stats=not engine_args.disable_log_stats,
            start_method=start_method,
            addresses=addresses,
        ) as cores:
            state["serving"] = True
            trace = getattr(args, "launch_trace", None)
            if trace:
                with contextlib.suppress(OSError):
                    cores.group.timeline.write_trace(trace)
            if count > 1:
                await anyio.sleep_forever()  # until a signal, or a process dies
            entry = importlib.import_module(vllm_server.entry)
            await entry.run_server_worker(listen_address, sock, args, cores.client_config(0))

    failure: LaunchFailed | None = None
    try:
        async with anyio.create_task_group() as tg:

            async def watch_signals() -> None:
                # until vLLM's server installs its own handlers (it then shuts down itself)
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        state["stopped"] = True
                        tg.cancel_scope.cancel()

            tg.start_soon(watch_signals)
            await run(tg)
            tg.cancel_scope.cancel()
    except BaseException as exc:
        failure = _launch_failure(exc)
        if failure is None:
            raise
    finally:
        sock.close()
        remove_ipc_sockets(zmq_addresses_of(addresses))
    if failure is not None:
        _err(describe_failure(failure))
        return EXIT_DIED if state["serving"] else EXIT_STARTUP
    return EXIT_STOPPED


def _launch_failure(exc: BaseException) -> Any:
    """The ``LaunchFailed`` in ``exc`` (itself, or inside task groups' exception groups)."""
    from .. import LaunchFailed

    if isinstance(exc, LaunchFailed):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _launch_failure(inner)
            if found is not None:
                return found
    return None


async def _run_api_servers(
    args: argparse.Namespace, addresses: Any, start_method: StartMethod, *, task_status: Any
) -> None:
    """API servers 0..N-1 as one launch group, each vLLM's ``run_server_worker`` with
    its own client addresses; reports once they are spawned and READY, then holds them
    (a signal cancels; a server dying raises ``LaunchFailed``)."""
    import anyio

    from .. import ProcessSpec, ShutdownPolicy, open_group
    from .vllm_dp import client_config

    specs = [
        ProcessSpec(
            API_SERVER_TARGET,
            name=f"ApiServer_{index}",
            kwargs={"args": args, "client_config": client_config(addresses, index)},
            start_method=start_method,  # forkserver: vLLM's base modules are in it
            ready_timeout=None,
        )
        for index in range(args.api_server_count)
    ]
    shutdown = ShutdownPolicy(stop_timeout=5.0, term_timeout=3.0, kill_timeout=1.0)
    async with open_group(specs, name="vllm-api-servers", shutdown=shutdown):
        task_status.started()
        await anyio.sleep_forever()


def _multiprocess_prometheus() -> None:
    """vLLM's metrics directory for several API servers: it sets an environment
    variable, so under launch's lock (children spawned later inherit it)."""
    from vllm.v1.metrics.prometheus import setup_multiprocess_prometheus

    from ..hooks import environ_lock

    with environ_lock():
        setup_multiprocess_prometheus()


def api_server(*, args: argparse.Namespace, client_config: dict[str, Any]) -> None:
    """Target of one API server child: vLLM's ``run_server_worker`` on its own socket
    (bound with ``SO_REUSEPORT`` to the command's port) and its own client addresses.

    READY at once, so that its imports overlap the engines' start (a failure after
    that is a death while serving); launch's cooperative stop is vLLM's SIGTERM
    shutdown."""
    from .. import ready
    from .vllm import exit_after_stop, stop_with_sigterm

    ready({"client_index": client_config["client_index"]})
    stop_with_sigterm()
    import uvloop  # type: ignore[import-not-found]  # vLLM's dependency

    vllm_server = _vllm_server()
    entry = importlib.import_module(vllm_server.entry)
    listen_address, sock = vllm_server.setup_server(args, reuse_port=True)
    uvloop.run(entry.run_server_worker(listen_address, sock, args, client_config))
    exit_after_stop()


class _VllmServer:
    """Where the running vLLM keeps ``vllm serve``'s pieces (they moved in 0.3x)."""

    def __init__(self, entry: str, cli_args: str, launcher: str) -> None:
        self.entry = entry  # the module of run_server_worker
        self.cli_args: Any = importlib.import_module(cli_args)
        self._launcher: Any = importlib.import_module(launcher)

    def setup_server(self, args: argparse.Namespace, *, reuse_port: bool) -> tuple[str, Any]:
        """vLLM's ``setup_server``: validate the server options, bind the socket."""
        setup = self._launcher.setup_server
        if "reuse_port" in inspect.signature(setup).parameters:
            listen_address, sock = setup(args, reuse_port=reuse_port)
        else:  # 0.26: SO_REUSEPORT always
            listen_address, sock = setup(args)
        return str(listen_address), sock


def _vllm_server() -> _VllmServer:
    for entry, cli_args, launcher in _SERVER_MODULES:
        try:
            importlib.import_module(cli_args)
        except ModuleNotFoundError:
            continue
        return _VllmServer(entry, cli_args, launcher)
    raise RuntimeError("this vLLM has neither of the server layouts launch knows (0.26, 0.32)")
