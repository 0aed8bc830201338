"""vLLM-Omni's own stage process (``StageEngineCoreProc``) started by launch.

    async with open_omni_stages([OmniStageLaunch("thinker", thinker_config, devices=[0]),
                                 OmniStageLaunch("talker", talker_config, devices=[1])]) as st:
        client = st["thinker"].make_client(metadata)  # Omni's StageEngineCoreClient
        ...
        client.shutdown()

What changes against vLLM-Omni's own ``AsyncOmniEngine._initialize_llm_replica``
(``spawn_stage_core`` under its launch lock with the parent's device variable set, fcntl
device locks, then ``complete_stage_handshake`` per replica in a thread pool):

- every replica is a launch child running Omni's ``StageEngineCoreProc.run_stage_core``,
  all spawned concurrently through launch's narrow lock; the device variable is set in
  the child, never in the parent's ``os.environ``; launch's device locks (stages sharing a
  device take turns, each holding the lock until it is READY);
- the HELLO/INIT/READY handshake of every replica is served by launch (one thread for all
  of them) with Omni's own addresses (``get_engine_zmq_addresses``), under each replica's
  ``ready_timeout`` and raced against its death;
- the first replica that fails tears every other one down, and the error is launch's
  ``LaunchFailed`` with that replica's own traceback.

What goes back to Omni: each replica's client addresses, in the shape
``_initialize_llm_replica`` passes them to ``StageEngineCoreClientBase.make_async_mp_client``
(:meth:`OmniStageProcess.make_client` makes that client). The client gets no process
handle: launch owns the process, reaps it and watches it (``proc=None`` is Omni's own
mode for stages it did not spawn).

Written against vLLM-Omni 0.22 (``vllm_omni.engine.stage_engine_core_proc``) and vLLM
0.22; LLM stages only (a diffusion stage runs another process), one replica per DP=1
engine.
"""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

from .. import (
    Pipeline,
    PipelineSpec,
    ProcessSpec,
    ShutdownPolicy,
    StageSpec,
    StartMethod,
    open_pipeline,
)
from ..hooks import sole_exception

STAGE_TARGET = "launch.integrations._omni_stage:stage_core"
# as vllm_dp: a stage still in its startup takes SIGTERM only once started
SHUTDOWN = ShutdownPolicy(stop_timeout=5.0, term_timeout=0.5, kill_timeout=1.0)
_POLL_MS = 100


@dataclass(frozen=True)
class OmniStageLaunch:
    """One Omni LLM stage replica to start: what ``_initialize_llm_replica`` has in hand
    when it calls ``spawn_stage_core``.

    Attributes:
        name: The launch stage's name (unique): ``thinker``, ``talker-r1``...
        vllm_config: The replica's engine config (Omni's ``plan.stage_vllm_config``);
            launch gives the child a copy and never changes this one.
        executor_class: The engine's executor; vLLM's choice for the config if None.
        devices: The replica's devices (indexes into the visible devices): its device
            locks, and its device variable inside the child. ``()``: none.
        stage_id: Omni's stage id (the process title, Omni's heartbeats).
        replica: The replica's index within its stage.
        env: Variables set in the child.
    """

    name: str
    vllm_config: Any
    executor_class: type[Any] | None = None
    devices: Sequence[int | str] = ()
    stage_id: int | str | None = None
    replica: int = 0
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OmniStageProcess:
    """One running stage replica: where Omni's stage client reaches it.

    Attributes:
        name: The launch stage's name.
        stage_id: Omni's stage id, as given.
        replica: The replica's index.
        vllm_config: The replica's config as the handshake left it (``num_gpu_blocks``
            from the engine's READY): the config its client is built with.
        executor_class: The engine's executor.
        addresses: The engine's ZMQ addresses (``EngineZmqAddresses``).
        pid: The stage process's pid.
    """

    name: str
    stage_id: int | str | None
    replica: int
    vllm_config: Any
    executor_class: type[Any]
    addresses: Any
    pid: int

    @property
    def client_addresses(self) -> dict[str, str]:
        """What ``make_async_mp_client(client_addresses=...)`` takes, built as
        ``AsyncOmniEngine._initialize_llm_replica`` builds it."""
        addresses = {
            "input_address": self.addresses.inputs[0],
            "output_address": self.addresses.outputs[0],
        }
        if self.addresses.frontend_stats_publish_address is not None:
            addresses["stats_update_address"] = self.addresses.frontend_stats_publish_address
        return addresses

    def make_client(self, metadata: Any, *, log_stats: bool = False) -> Any:
        """Omni's stage client for this replica, as ``_initialize_llm_replica`` makes it,
        without a process handle (launch owns the process).

        Args:
            metadata: Omni's ``StageMetadata`` of the stage (``extract_stage_metadata``).
            log_stats: Passed to the client.

        Returns:
            A ``StageEngineCoreClient`` (``DPLBStageEngineCoreClient`` for internal DP);
            call its ``shutdown()`` before leaving :func:`open_omni_stages`.
        """
        client = importlib.import_module("vllm_omni.engine.stage_engine_core_client")
        return client.StageEngineCoreClientBase.make_async_mp_client(
            vllm_config=self.vllm_config,
            executor_class=self.executor_class,
            log_stats=log_stats,
            metadata=metadata,
            client_addresses=self.client_addresses,
            proc=None,
        )


@dataclass(frozen=True)
class OmniStages:
    """The running stage replicas: ``stages["thinker"]`` is one :class:`OmniStageProcess`.

    Attributes:
        pipeline: The launch pipeline that owns the processes.
        processes: Each replica, by name, in the order given.
    """

    pipeline: Pipeline
    processes: dict[str, OmniStageProcess]

    def __getitem__(self, name: str) -> OmniStageProcess:
        return self.processes[name]

    def __iter__(self) -> Iterator[OmniStageProcess]:
        return iter(self.processes.values())

    def __len__(self) -> int:
        return len(self.processes)


@asynccontextmanager
async def open_omni_stages(
    stages: Sequence[OmniStageLaunch],
    *,
    log_stats: bool = False,
    ready_timeout: float | None = 600.0,
    start_method: StartMethod = "spawn",
    name: str = "omni-stages",
    device_env: str = "CUDA_VISIBLE_DEVICES",
    lock_dir: str | Path | None = None,
    device_lock_timeout: float | None = 600.0,
    shutdown: ShutdownPolicy | None = None,
) -> AsyncIterator[OmniStages]:
    """Start every replica as vLLM-Omni's own stage process, as launch children; enter
    the block once every one has completed Omni's handshake and is in its busy loop.
    Leaving the block stops them all (SIGTERM, which Omni's stage takes as its shutdown).

    Args:
        stages: The replicas, one :class:`OmniStageLaunch` each (unique names).
        log_stats: Passed to every engine core.
        ready_timeout: Seconds from each replica's spawn to its READY (handshake
            included); None: no deadline. Omni's own is ``stage_init_timeout``.
        start_method: How each stage process starts.
        name: The launch pipeline's name.
        device_env: The device variable set in each child (Omni's platform's
            ``device_control_env_var``).
        lock_dir: The device lock directory (see :class:`launch.PipelineSpec`).
        device_lock_timeout: How long a replica waits for its devices' locks.
        shutdown: How replicas are stopped.

    Yields:
        The :class:`OmniStages`.

    Raises:
        ValueError: Two replicas have the same name, or none is given.
        LaunchFailed: A replica failed to start (its own traceback), died before its
            handshake, or was not READY within ``ready_timeout``.
    """
    from vllm.utils.network_utils import get_open_zmq_ipc_path
    from vllm.v1.engine.utils import get_engine_zmq_addresses
    from vllm.v1.executor import Executor

    names = [stage.name for stage in stages]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"open_omni_stages needs replicas with unique names, got {names}")
    handshakes = _Handshakes()
    specs, planned = [], []
    try:
        for stage in stages:
            config = copy.deepcopy(stage.vllm_config)
            executor = stage.executor_class or Executor.get_class(config)
            addresses = get_engine_zmq_addresses(config)
            handshake_address = get_open_zmq_ipc_path()
            handshakes.add(stage.name, handshake_address, addresses, config)
            planned.append((stage, config, executor, addresses))
            process = ProcessSpec(
                STAGE_TARGET,
                name=stage.name,
                kwargs={
                    "vllm_config": config,
                    "handshake_address": handshake_address,
                    "executor_class": executor,
                    "log_stats": log_stats,
                    "stage_id": stage.stage_id,
                    "replica": stage.replica,
                },
                env=dict(stage.env),
                start_method=start_method,
                ready_timeout=ready_timeout,
            )
            specs.append(StageSpec(stage.name, [process], devices=tuple(stage.devices)))
        spec = PipelineSpec(
            specs,
            name=name,
            device_env=device_env,
            lock_dir=lock_dir,
            device_lock_timeout=device_lock_timeout,
            shutdown=shutdown or SHUTDOWN,
        )
        async with _running(spec, handshakes) as pipeline:
            processes = {
                stage.name: OmniStageProcess(
                    name=stage.name,
                    stage_id=stage.stage_id,
                    replica=stage.replica,
                    vllm_config=config,
                    executor_class=executor,
                    addresses=addresses,
                    pid=int(pipeline[stage.name][stage.name].payload["pid"]),
                )
                for stage, config, executor, addresses in planned
            }
            yield OmniStages(pipeline, processes)
    finally:
        handshakes.close()


@asynccontextmanager
async def _running(spec: PipelineSpec, handshakes: _Handshakes) -> AsyncIterator[Pipeline]:
    """The pipeline, with every handshake served while it starts; yields once every
    replica is READY (over ZMQ first, then to launch). An error comes out unwrapped."""
    unwrapped: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(handshakes.serve)
            async with open_pipeline(spec) as pipeline:
                await handshakes.done.wait()
                yield pipeline
    except BaseExceptionGroup as eg:
        unwrapped = sole_exception(eg)  # the handshake's, the pipeline's, or the caller's
        if unwrapped is None:
            raise
    if unwrapped is not None:
        raise unwrapped


class _Handshakes:
    """The parent's side of ``complete_stage_handshake`` for every replica at once: each
    replica's ROUTER socket answers HELLO with its addresses (``EngineHandshakeMetadata``,
    no parallel config, as Omni's) and takes READY (its ``num_gpu_blocks`` into the
    replica's config, as Omni's)."""

    def __init__(self) -> None:
        import zmq

        self.context = zmq.Context()
        self.sockets: dict[Any, tuple[str, Any, Any]] = {}
        self.state: dict[str, str] = {}
        self.done = anyio.Event()

    def add(self, name: str, address: str, addresses: Any, config: Any) -> None:
        import zmq

        socket = self.context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.bind(address)
        self.sockets[socket] = (name, addresses, config)
        self.state[name] = "NEW"

    async def serve(self) -> None:
        await anyio.to_thread.run_sync(self._serve_blocking)
        self.done.set()

    def _serve_blocking(self) -> None:
        import msgspec
        import zmq

        poller = zmq.Poller()
        for socket in self.sockets:
            poller.register(socket, zmq.POLLIN)
        while any(state != "READY" for state in self.state.values()):
            anyio.from_thread.check_cancelled()  # a failed replica ends the wait at once
            for socket, _ in poller.poll(_POLL_MS):
                identity, body = socket.recv_multipart()
                self._on_message(socket, identity, msgspec.msgpack.decode(body))

    def _on_message(self, socket: Any, identity: bytes, message: Any) -> None:
        import msgspec
        from vllm.v1.engine.utils import EngineHandshakeMetadata

        name, addresses, config = self.sockets[socket]
        state, status = self.state[name], message.get("status")
        if status == "HELLO" and state == "NEW":
            init = EngineHandshakeMetadata(addresses=addresses, parallel_config={})
            socket.send_multipart((identity, msgspec.msgpack.encode(init)))
            self.state[name] = "CONNECTED"
        elif status == "READY" and state == "CONNECTED":
            blocks = message.get("num_gpu_blocks")
            if blocks is not None:
                config.cache_config.num_gpu_blocks = blocks
            self.state[name] = "READY"
        else:
            raise RuntimeError(f"stage {name}: unexpected {status} in handshake state {state}")

    def close(self) -> None:
        for socket in self.sockets:
            socket.close(linger=0)
        self.context.term()


def stage_core(
    *,
    vllm_config: Any,
    handshake_address: str,
    executor_class: type[Any],
    log_stats: bool,
    stage_id: int | str | None,
    replica: int,
) -> None:
    """Target of one replica: Omni's ``StageEngineCoreProc.run_stage_core`` with the
    arguments ``spawn_stage_core`` gives it; READY to launch once the engine has done its
    handshake and enters its busy loop."""
    from .. import phase, stop_requested
    from .vllm import exit_after_stop, ready_from_busy_loop

    stage_engine_core_proc: Any = importlib.import_module("vllm_omni.engine.stage_engine_core_proc")
    StageEngineCoreProc = stage_engine_core_proc.StageEngineCoreProc
    # This process is the stage's own: these two assignments touch nothing else. READY is
    # told from the busy loop's entry; Omni's parent-death signal is left out because its
    # "parent" is the thread that spawned the process (a launch worker thread, which
    # exits when idle); launch's guard stops the stage when launch's process dies.
    said_ready = ready_from_busy_loop(
        (StageEngineCoreProc,), {"stage_id": stage_id, "replica": replica, "pid": os.getpid()}
    )
    stage_engine_core_proc.set_death_signal = lambda _sig: None
    phase("stage engine init (executor, workers, KV cache)")
    try:
        StageEngineCoreProc.run_stage_core(
            vllm_config=vllm_config,
            local_client=True,
            handshake_address=handshake_address,
            executor_class=executor_class,
            log_stats=log_stats,
            dp_rank=0,
            local_dp_rank=0,
            omni_stage_id=stage_id,
            omni_replica_id=replica,
        )
    except SystemExit:
        # Omni's SIGTERM handler exits 128 + SIGTERM: a stop launch asked for is clean
        if said_ready() and stop_requested():
            exit_after_stop()
        raise
