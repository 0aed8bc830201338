"""vLLM through launch: tensor-parallel workers started as a launch group.

``LaunchExecutor`` is a ``MultiprocExecutor`` whose workers are launch children:

    LLM(model, tensor_parallel_size=4,
        distributed_executor_backend="launch.integrations.vllm.LaunchExecutor")

or pass the class itself. What changes against vLLM's own ``mp`` backend:

- Every worker is spawned concurrently, outside any lock but launch's narrow one (the
  large ``VllmConfig`` goes over the control socket after the spawn, so no ``start()``
  waits for a worker's imports); READY is raced against the worker's death and a
  deadline (``LAUNCH_VLLM_READY_TIMEOUT``, default 600 s).
- The first worker that fails tears every other one down at once (SIGTERM to a worker
  that is not READY; vLLM waits 5 s, then SIGTERM, then 4 s), and the error raised is
  launch's ``LaunchFailed``, whose text ends with that worker's own traceback.
- Per-rank OpenMP environment (vLLM's CPU backend) is applied inside each worker, not by
  patching the engine process's ``os.environ`` around each spawn.
- A worker dying later marks the executor failed and calls vLLM's failure callback, as
  vLLM's monitor thread does; launch's death watch replaces that thread.

Written against vLLM 0.32 and 0.26 (``vllm.v1.executor.multiproc_executor``); single node,
``nnodes_within_dp == 1``. Workers start the way vLLM's own executor would start them
(``fork`` by default, ``spawn`` once CUDA is up); ``LAUNCH_VLLM_START_METHOD`` overrides it
with ``spawn``, ``fork`` or ``forkserver`` (launch's own; preload with ``launch.prewarm``).

``open_async_llm`` (async) and ``start_llm`` (blocking) are vLLM's ``AsyncLLM`` and an
``LLM``-like ``generate`` whose engine cores (``launch.integrations.vllm_dp``) and workers
run in launch's tree: a worker failing reaches their caller as ``LaunchFailed``.
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import stat
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from vllm.config import VllmConfig
from vllm.distributed.device_communicators.shm_broadcast import MessageQueue
from vllm.envs import VLLM_MQ_MAX_CHUNK_BYTES_MB
from vllm.utils import network_utils
from vllm.utils.ompmultiprocessing import OMPProcessManager
from vllm.v1.executor.multiproc_executor import (
    MultiprocExecutor,
    WorkerProc,
    WorkerProcHandle,
    set_multiprocessing_worker_envs,
)

from .. import (
    Child,
    GroupHandle,
    LaunchFailed,
    ProcessSpec,
    ShutdownPolicy,
    StartMethod,
    start_group,
)
from ..hooks import environ_lock

if TYPE_CHECKING:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.outputs import RequestOutput
    from vllm.v1.engine.async_llm import AsyncLLM

    from .vllm_dp import EngineCores

T = TypeVar("T")
logger = logging.getLogger("launch")

WORKER_TARGET = "launch.integrations.vllm:worker"
SHUTDOWN = ShutdownPolicy(stop_timeout=2.0, term_timeout=2.0, kill_timeout=1.0)


class LaunchedProcess:
    """Stands where vLLM keeps a worker's ``multiprocessing`` process: its name, pid and
    liveness, read from the launch child."""

    def __init__(self, child: Child) -> None:
        self._child = child
        self.name = child.name

    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def exitcode(self) -> int | None:
        return self._child.exitcode

    def is_alive(self) -> bool:
        # not "exitcode is None": a child whose exit status died with launch's forkserver
        # has exited with exitcode None
        return self._child.pid is not None and not self._child.has_exited


def _omp_env(manager: OMPProcessManager, rank: int, local_rank: int) -> dict[str, str]:
    """The per-rank OpenMP variables vLLM would set on ``os.environ`` around a spawn,
    read under the launch lock and handed to the child instead."""
    with environ_lock():
        before = dict(os.environ)
        with manager.configure_omp_envs(rank=rank, local_rank=local_rank):
            after = dict(os.environ)
    return {key: value for key, value in after.items() if before.get(key) != value}


def _set_worker_envs(local_world_size: int) -> None:
    if inspect.signature(set_multiprocessing_worker_envs).parameters:  # 0.32 takes a count
        set_multiprocessing_worker_envs(local_world_size)
    else:
        set_multiprocessing_worker_envs()


def _mq_options(parallel_config: Any) -> dict[str, Any]:
    if "enable_shm_tensor_arena" in inspect.signature(MessageQueue).parameters:
        return {"enable_shm_tensor_arena": parallel_config.enable_shm_tensor_arena}
    return {}


def _distributed_init_method() -> str:
    """Where the workers meet for torch.distributed, as the running vLLM chooses it."""
    requires_tcp = getattr(network_utils, "aiter_requires_tcp_store", lambda: True)
    file_store = getattr(network_utils, "get_file_store_init_method", None)
    if file_store is None or requires_tcp():
        return str(
            network_utils.get_distributed_init_method(
                network_utils.get_loopback_ip(), network_utils.get_open_port()
            )
        )
    return str(file_store())


def _start_method() -> str:
    """``LAUNCH_VLLM_START_METHOD``, else what vLLM's own executor would use (``fork``,
    unless CUDA is already up in this process or ``VLLM_WORKER_MULTIPROC_METHOD`` says
    otherwise): a forked worker skips the ~8 s of importing torch and vLLM again."""
    chosen = os.environ.get("LAUNCH_VLLM_START_METHOD")
    if chosen:
        return chosen
    from vllm.utils.system_utils import get_mp_context

    return str(get_mp_context().get_start_method())


def _set_runtime_threads() -> None:
    try:  # vLLM >= 0.3x: the engine process only schedules, so it drops its torch threads
        from vllm.utils.torch_utils import set_torch_threads_for_runtime
    except ImportError:
        return
    set_torch_threads_for_runtime()


class LaunchExecutor(MultiprocExecutor):  # type: ignore[misc]
    """vLLM's multiprocessing executor with its workers started and supervised by launch."""

    # The helpers' names carry "_launch_": MultiprocExecutor's own private methods
    # differ between vLLM versions, and none may be overridden by accident.

    def _init_executor(self) -> None:
        self.is_failed = False
        self.failure_callback = None
        self.shutting_down = False
        self._exit = ExitStack()
        self._launch_check_layout()
        _set_worker_envs(self.local_world_size)  # vLLM's own env policy
        self.rpc_broadcast_mq = MessageQueue(
            self.world_size,
            self.local_world_size,
            max_chunk_bytes=VLLM_MQ_MAX_CHUNK_BYTES_MB * 1024 * 1024,
            connect_ip=network_utils.get_ip(),
            **_mq_options(self.parallel_config),
        )
        self._group = self._launch_start_workers(self._launch_worker_specs())
        self.workers = self._launch_worker_handles(self._group)
        _set_runtime_threads()
        self.response_mqs = [worker.worker_response_mq for worker in self.workers]
        self.rpc_broadcast_mq.wait_until_ready()
        for response_mq in self.response_mqs:
            response_mq.wait_until_ready()
        self.futures_queue: deque[Any] = deque()
        self._post_init_executor()
        self.output_rank = self._get_output_rank()

    def _launch_check_layout(self) -> None:
        """Refuse what this executor does not start: a world size that is not the
        product of the parallel sizes, or workers on more than one node."""
        tp_size, pp_size, pcp_size = self._get_parallel_sizes()
        if self.world_size != tp_size * pp_size * pcp_size:
            raise ValueError(
                f"world_size ({self.world_size}) must be tensor_parallel_size ({tp_size}) "
                f"x pipeline_parallel_size ({pp_size}) x prefill_context_parallel_size "
                f"({pcp_size})"
            )
        if self.parallel_config.nnodes_within_dp != 1:
            raise NotImplementedError("LaunchExecutor starts the workers of one node")

    def _launch_worker_specs(self) -> list[ProcessSpec]:
        """One spec per local rank: vLLM's worker arguments (the broadcast queue's
        handle among them) and the rank's OpenMP environment."""
        init_method = _distributed_init_method()
        handle = self.rpc_broadcast_mq.export_handle()
        omp = OMPProcessManager(self.vllm_config)
        method = _start_method()
        timeout = float(os.environ.get("LAUNCH_VLLM_READY_TIMEOUT", "600"))
        return [
            ProcessSpec(
                WORKER_TARGET,
                name=f"VllmWorker-{rank}",
                kwargs={
                    "vllm_config": self.vllm_config,
                    "local_rank": rank,
                    "rank": rank,
                    "distributed_init_method": init_method,
                    "input_shm_handle": handle,
                    "is_driver_worker": self._is_driver_worker(rank),
                },
                env=_omp_env(omp, rank, rank),
                start_method=method,  # type: ignore[arg-type]
                ready_timeout=timeout,
            )
            for rank in range(self.local_world_size)
        ]

    def _launch_start_workers(self, specs: list[ProcessSpec]) -> GroupHandle:
        """Start the workers as one launch group, held until :meth:`shutdown`; returns
        once every one is READY. The broadcast queue is shut down if they fail."""
        try:
            group: GroupHandle = self._exit.enter_context(
                start_group(
                    specs,
                    name="vllm-workers",
                    shutdown=SHUTDOWN,
                    on_child_died=self._on_worker_died,
                )
            )
        except BaseException:
            self.rpc_broadcast_mq.shutdown()
            raise
        return group

    def _launch_worker_handles(self, group: GroupHandle) -> list[WorkerProcHandle]:
        """vLLM's handle of each worker: its process, and its response queue (from the
        READY payload)."""
        return [
            WorkerProcHandle(
                proc=LaunchedProcess(child),
                rank=rank,
                worker_response_mq=MessageQueue.create_from_handle(child.payload["handle"], 0),
                peer_worker_response_mqs=[],
                death_writer=None,
            )
            for rank, child in enumerate(group.children)
        ]

    def start_worker_monitor(self, inline: bool = False) -> None:
        """launch's death watch is the monitor (``_on_worker_died``): no thread here."""

    def _on_worker_died(self, failure: LaunchFailed) -> None:
        # called in the launch loop's thread, after every sibling was torn down
        if self.shutting_down:
            return
        self.is_failed = True
        logger.error("vLLM worker failed, executor shut down: %s", failure.first)
        callback, self.failure_callback = self.failure_callback, None
        if callback is not None:
            callback()

    def shutdown(self) -> None:
        """Stop every worker through launch (bounded: cooperative stop, SIGTERM, SIGKILL),
        then close the message queues."""
        if self.shutting_down:
            return
        self.shutting_down = True
        try:
            self._exit.close()
        except LaunchFailed:
            pass  # already reported through _on_worker_died
        for mq in [getattr(self, "rpc_broadcast_mq", None), *getattr(self, "response_mqs", [])]:
            if mq is not None:
                mq.shutdown()
        self.rpc_broadcast_mq = None
        self.response_mqs = []


def stop_with_sigterm() -> None:
    """Deliver launch's cooperative stop as the SIGTERM that vLLM's processes handle
    (its bootstrap, or vLLM's own handler, turns it into an orderly exit). A daemon
    thread: the child has no event loop, and the thread must not keep it alive."""
    from .. import wait_for_stop

    def stop_on_request() -> None:
        wait_for_stop()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_on_request, daemon=True, name="launch-stop").start()


def ready_from_busy_loop(
    classes: Sequence[type[Any]], payload: dict[str, Any]
) -> Callable[[], bool]:
    """In an engine core's own process: wrap each class's ``run_busy_loop`` so that the
    first entry (the engine's handshake done) says READY to launch with ``payload`` and
    starts :func:`stop_with_sigterm`. Touches only this process's classes.

    Args:
        classes: the engine classes whose busy loop may run (a subclass that does not
            override it wraps its parent's).
        payload: the READY payload.

    Returns:
        A function telling whether READY was said.
    """
    from .. import ready

    said: list[bool] = []

    def with_ready(run_busy_loop: Any) -> Any:
        def run(self: Any) -> Any:
            if not said:
                said.append(True)
                ready(payload)
                stop_with_sigterm()
            return run_busy_loop(self)

        return run

    for cls in classes:
        cls.run_busy_loop = with_ready(cls.__dict__.get("run_busy_loop", cls.run_busy_loop))
    return lambda: bool(said)


def remove_ipc_sockets(addresses: Iterable[str | None]) -> None:
    """Remove the socket files of the ``ipc://`` addresses launch picked, once nothing
    connects to them again: ZMQ leaves each one behind in the temp directory. Only a
    socket of this user is removed (a sticky temp directory keeps others from swapping it).

    Args:
        addresses: ZMQ addresses; other than ``ipc://`` ones (and None) are skipped.
    """
    for address in addresses:
        if not address or not address.startswith("ipc://"):
            continue
        path = address.removeprefix("ipc://")
        try:
            st = os.lstat(path)
            if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid():
                os.unlink(path)
        except OSError:
            pass


def zmq_addresses_of(addresses: Any) -> list[str | None]:
    """Every address in vLLM's ``EngineZmqAddresses``: clients', coordinator's, stats'."""
    return [
        *addresses.inputs,
        *addresses.outputs,
        addresses.coordinator_input,
        addresses.coordinator_output,
        addresses.frontend_stats_publish_address,
    ]


def exit_after_stop() -> None:
    """Leave a stopped vLLM process once vLLM's shutdown has run: the interpreter's own
    teardown of torch and gloo adds ~1.5 s per stop (measured on 2 cores) and releases
    nothing an exiting process needs."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def worker(
    *,
    vllm_config: VllmConfig,
    local_rank: int,
    rank: int,
    distributed_init_method: str,
    input_shm_handle: Any,
    is_driver_worker: bool,
) -> None:
    """Target of one vLLM worker (``WorkerProc``), started by :class:`LaunchExecutor`."""
    from .. import phase, ready

    phase("init_device + load_model")
    proc = WorkerProc(
        vllm_config,
        local_rank,
        rank,
        distributed_init_method,
        input_shm_handle,
        None,  # shared_worker_lock: only the multimodal shm cache uses it
        is_driver_worker,
    )
    ready(
        {
            "handle": proc.worker_response_mq.export_handle(),
            "peer_response_handles": proc.peer_response_handles,
        }
    )

    stop_with_sigterm()
    if proc.rpc_broadcast_mq is not None:
        proc.rpc_broadcast_mq.wait_until_ready()
    proc.worker_response_mq.wait_until_ready()
    try:
        proc.worker_busy_loop()
    except SystemExit:
        proc.shutdown()  # stopped (launch's stop or a SIGTERM): vLLM's own cleanup, then
        exit_after_stop()
    except BaseException:
        proc.shutdown()
        raise


def _engine_config(engine_args: EngineArgs | VllmConfig, usage_context: Any) -> VllmConfig:
    if isinstance(engine_args, VllmConfig):
        return engine_args
    config: VllmConfig = engine_args.create_engine_config(usage_context=usage_context)
    return config


def engine_executor(vllm_config: VllmConfig) -> type[Any]:
    """The executor class for the engines of ``vllm_config``: :class:`LaunchExecutor`
    where vLLM would use its own ``mp`` backend (more than one worker on the node),
    else vLLM's choice (``uni``: the worker runs inside the engine; or the user's)."""
    from vllm.v1.executor import Executor

    if vllm_config.parallel_config.distributed_executor_backend == "mp":
        return LaunchExecutor
    executor: type[Any] = Executor.get_class(vllm_config)
    return executor


@asynccontextmanager
async def open_async_llm(
    engine_args: EngineArgs | VllmConfig,
    *,
    ready_timeout: float | None = 600.0,
    start_method: StartMethod | None = None,
    shutdown: ShutdownPolicy | None = None,
    **async_llm_kwargs: Any,
) -> AsyncIterator[AsyncLLM]:
    """vLLM's ``AsyncLLM`` whose engine cores (every DP rank, and the DP coordinator)
    and workers are started and supervised by launch (asyncio only: vLLM's client is).

        async with open_async_llm(AsyncEngineArgs(model, tensor_parallel_size=2)) as llm:
            async for out in llm.generate(prompt, SamplingParams(), "req-0"): ...

    The engines start as :func:`~launch.integrations.vllm_dp.open_engine_cores` starts
    them, with :class:`LaunchExecutor` where vLLM would use its ``mp`` executor. The
    block is entered once every engine is in its busy loop; an engine or worker dying
    while it runs cancels it. Leaving it shuts the client down, then stops the engines.

    Args:
        engine_args: vLLM's ``AsyncEngineArgs`` (or ``EngineArgs``), or a ``VllmConfig``.
        ready_timeout: seconds for each engine's start and handshake; None: no deadline.
        start_method: how the engines start; the one vLLM would use by default.
        shutdown: how the engines are stopped when the block is left.
        **async_llm_kwargs: passed to ``AsyncLLM.from_vllm_config`` (``stat_loggers``,
            ``enable_log_requests``, ``disable_log_stats``, ...).

    Yields:
        The running ``AsyncLLM``.

    Raises:
        LaunchFailed: an engine (or one of its workers) failed; ``.first`` names it and
            carries its own exception and traceback (a worker's, through its engine's).
        ValueError: the config is not one node's data parallelism (``open_engine_cores``).
    """
    async with _open_llm_and_cores(
        engine_args,
        ready_timeout=ready_timeout,
        start_method=start_method,
        shutdown=shutdown,
        **async_llm_kwargs,
    ) as (llm, _):
        yield llm


@asynccontextmanager
async def _open_llm_and_cores(
    engine_args: EngineArgs | VllmConfig,
    *,
    ready_timeout: float | None = 600.0,
    start_method: StartMethod | None = None,
    shutdown: ShutdownPolicy | None = None,
    **async_llm_kwargs: Any,
) -> AsyncIterator[tuple[AsyncLLM, EngineCores]]:
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    from .vllm_dp import open_engine_cores

    usage = async_llm_kwargs.get("usage_context", UsageContext.ENGINE_CONTEXT)
    config = _engine_config(engine_args, usage)
    log_stats = not async_llm_kwargs.get("disable_log_stats", False)
    async with open_engine_cores(
        config,
        executor_class=engine_executor(config),
        log_stats=log_stats,
        ready_timeout=ready_timeout,
        start_method=start_method,
        shutdown=shutdown,
    ) as cores:
        llm = AsyncLLM.from_vllm_config(
            config, client_addresses=cores.client_addresses, **async_llm_kwargs
        )
        try:
            yield llm, cores
        finally:
            llm.shutdown()


class LaunchedLLM:
    """A blocking ``generate`` over an ``AsyncLLM`` whose engines run in launch's tree
    (what :func:`start_llm` yields): vLLM's ``LLM.generate`` for prompts and sampling
    parameters, with the engines' failure raised as :class:`LaunchFailed`."""

    def __init__(self, runner: _LLMRunner, reported: list[BaseException]) -> None:
        self._runner = runner
        self._reported = reported
        self._count = 0

    @property
    def async_llm(self) -> AsyncLLM:
        """The ``AsyncLLM`` (it lives in the runner's event loop: use :meth:`call`)."""
        assert self._runner.llm is not None
        return self._runner.llm

    @property
    def engines(self) -> EngineCores:
        """The running engine cores: their launch group and addresses."""
        assert self._runner.cores is not None
        return self._runner.cores

    def call(self, fn: Callable[[AsyncLLM], Awaitable[T]]) -> T:
        """Run ``await fn(async_llm)`` in the engines' event loop and return its result.

        Raises:
            LaunchFailed: the engines failed before or while it ran.
        """
        try:
            return self._runner.call(fn)
        except LaunchFailed as failure:
            self._reported.append(failure)
            raise

    def generate(
        self, prompts: Any, sampling_params: Any = None, *, request_prefix: str = "launch"
    ) -> list[RequestOutput]:
        """vLLM's ``LLM.generate``: one output per prompt, in order.

        Args:
            prompts: a prompt (text, or ``{"prompt_token_ids": [...]}``) or a list of them.
            sampling_params: one ``SamplingParams`` for all, or one per prompt; vLLM's
                defaults when None.
            request_prefix: prefix of the request ids.

        Returns:
            The final ``RequestOutput`` of each prompt.

        Raises:
            LaunchFailed: an engine or worker failed.
        """
        from vllm import SamplingParams

        many = isinstance(prompts, list)
        batch: list[Any] = list(prompts) if many else [prompts]
        if sampling_params is None or not isinstance(sampling_params, Sequence):
            params = [sampling_params or SamplingParams()] * len(batch)
        else:
            params = list(sampling_params)
        if len(params) != len(batch):
            raise ValueError(f"{len(params)} sampling params for {len(batch)} prompts")
        first = self._count
        self._count += len(batch)

        async def run(llm: AsyncLLM) -> list[RequestOutput]:
            results: list[Any] = [None] * len(batch)

            async def one(i: int) -> None:
                request_id = f"{request_prefix}-{first + i}"
                async for output in llm.generate(batch[i], params[i], request_id):
                    results[i] = output

            async with anyio.create_task_group() as tg:
                for i in range(len(batch)):
                    tg.start_soon(one, i)
            return results

        return self.call(run)


class _LLMRunner:
    """Holds :func:`open_async_llm` open in a task of a blocking portal's loop; runs the
    caller's requests inside it, so that the engines' failure cancels them."""

    def __init__(self, engine_args: EngineArgs | VllmConfig, kwargs: dict[str, Any]) -> None:
        self.engine_args = engine_args
        self.kwargs = kwargs
        self.llm: AsyncLLM | None = None
        self.cores: EngineCores | None = None
        self.stop = anyio.Event()
        self.failure: BaseException | None = None
        self._scopes: set[anyio.CancelScope] = set()
        self._portal: Any = None

    async def serve(self, *, task_status: Any) -> None:
        try:
            async with _open_llm_and_cores(self.engine_args, **self.kwargs) as (llm, cores):
                self.llm, self.cores = llm, cores
                task_status.started()
                await self.stop.wait()
        except BaseException as exc:
            self.failure = exc
            raise
        finally:
            for scope in self._scopes:
                scope.cancel()

    async def _call(self, fn: Callable[[AsyncLLM], Awaitable[T]]) -> T:
        if self.failure is not None:
            raise self.failure
        assert self.llm is not None
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                return await fn(self.llm)
            finally:
                self._scopes.discard(scope)
        assert self.failure is not None  # cancelled: only serve() cancels it, on its way out
        raise self.failure

    def call(self, fn: Callable[[AsyncLLM], Awaitable[T]]) -> T:
        result: T = self._portal.call(self._call, fn)
        return result


@contextmanager
def start_llm(
    engine_args: EngineArgs | VllmConfig,
    *,
    ready_timeout: float | None = 600.0,
    start_method: StartMethod | None = None,
    shutdown: ShutdownPolicy | None = None,
    **async_llm_kwargs: Any,
) -> Iterator[LaunchedLLM]:
    """Blocking :func:`open_async_llm`: an object with vLLM's ``LLM.generate`` whose
    engines and workers run in launch's tree, for synchronous code.

        with start_llm(EngineArgs(model, tensor_parallel_size=2)) as llm:
            outputs = llm.generate(["Hello"], SamplingParams(max_tokens=8))

    The engines' event loop (asyncio) runs in a thread of its own (an anyio blocking
    portal), so this works from a plain script and from a thread whose loop runs.

    Args:
        engine_args: vLLM's ``EngineArgs`` (or ``AsyncEngineArgs``), or a ``VllmConfig``.
        ready_timeout: seconds for each engine's start and handshake; None: no deadline.
        start_method: how the engines start; the one vLLM would use by default.
        shutdown: how the engines are stopped when the block is left.
        **async_llm_kwargs: passed to ``AsyncLLM.from_vllm_config``.

    Yields:
        A :class:`LaunchedLLM` (``generate``, ``call``, ``async_llm``, ``engines``).

    Raises:
        LaunchFailed: an engine or worker failed: at start, from ``generate`` while the
            engines run, or on leaving the block if no call has raised it yet.
    """
    from anyio.from_thread import start_blocking_portal

    runner = _LLMRunner(
        engine_args,
        dict(
            async_llm_kwargs,
            ready_timeout=ready_timeout,
            start_method=start_method,
            shutdown=shutdown,
        ),
    )
    with start_blocking_portal("asyncio") as portal:
        runner._portal = portal
        future, _ = portal.start_task(runner.serve)
        reported: list[BaseException] = []
        try:
            yield LaunchedLLM(runner, reported)
        finally:
            if not future.done():
                portal.call(runner.stop.set)
            try:
                future.result()
            except LaunchFailed as failure:
                if failure not in reported:
                    raise
