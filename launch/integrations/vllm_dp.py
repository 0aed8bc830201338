"""vLLM's data-parallel engine cores started as one launch group.

    async with open_engine_cores(vllm_config) as cores:
        llm = AsyncLLM.from_vllm_config(vllm_config, client_addresses=cores.client_addresses)
        ...
        llm.shutdown()

What changes against vLLM's own ``launch_core_engines``:

- Every ``EngineCore_DP<r>`` process (and the DP coordinator, when vLLM needs one) is
  spawned concurrently through launch's narrow lock. The coordinator's sockets are IPC
  paths chosen up front, so no engine waits for the coordinator to start.
- Device visibility is set inside each engine: ``CUDA_VISIBLE_DEVICES`` (the platform's
  device variable) is that rank's slice, applied by the child before it imports torch,
  and the engine runs as local DP rank 0 of its slice (the pattern of vLLM's external
  load balancing). Nothing patches the parent's ``os.environ``.
- Each rank gets its own copy of the config; the caller's ``VllmConfig`` is never
  mutated (vLLM sets a shared config's device ids before each ``start()``).
- The HELLO/READY ZMQ handshakes of all engines are served concurrently with the
  spawns, under each engine's ``ready_timeout``. An engine dying or timing out tears
  every other one down at once, and the error is launch's ``LaunchFailed`` with that
  engine's own traceback (vLLM: "Engine core initialization failed. See root cause
  above").
- The engines' addresses go to vLLM through its client-addresses path
  (``AsyncLLM(client_addresses=...)``), the one its multi-API-server mode uses.

Across nodes, with ``placement=`` (a ``launch.integrations.ray.RayPlacement``, one bundle
per DP rank): engine ``r`` runs on bundle ``r``'s node, its workers on that node too, and
the DP coordinator stays on this machine, in the same group. What changes then:

- Every address an engine reaches is TCP on the driver's address (``data_parallel_master_ip``
  when it is not a loopback address, else Ray's node IP of this process), bound here
  before any engine starts: the handshake socket and the clients' input and output
  listeners (vLLM's ``input_listener``/``output_listener``, which the client adopts) on
  port 0, and the coordinator's engine-side sockets by the coordinator itself on port 0,
  reported to the handshake before any engine is answered. No port is picked and bound
  later, so none can be taken in between.
- No device variable is set by the parent: Ray sets the bundle's devices, and each engine
  runs as local DP rank 0 of what it sees.

Written against vLLM 0.32 (``vllm.v1.engine.utils``); ``data_parallel_backend = "mp"``,
every DP rank started from here (on this node, or placed). Leave the block after
``AsyncLLM.shutdown()``: leaving it stops the engines (cooperative stop, which an engine
takes as vLLM's SIGTERM shutdown).
"""

from __future__ import annotations

import copy
import importlib
import ipaddress
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.to_thread
import msgspec
import zmq
from vllm.config import VllmConfig
from vllm.platforms import current_platform
from vllm.utils.network_utils import get_open_zmq_ipc_path, get_tcp_uri
from vllm.v1.engine.utils import EngineHandshakeMetadata, EngineZmqAddresses

from .. import Group, ProcessSpec, ShutdownPolicy, StartMethod, open_group
from ..hooks import sole_exception
from ._split_placement import SplitPlacement
from .vllm import (
    exit_after_stop,
    ready_from_busy_loop,
    remove_ipc_sockets,
    stop_with_sigterm,
    zmq_addresses_of,
)

if TYPE_CHECKING:
    from vllm.utils.network_utils import ZmqListener

    from .ray import RayPlacement

ENGINE_TARGET = "launch.integrations.vllm_dp:engine_core"
COORDINATOR_TARGET = "launch.integrations.vllm_dp:coordinator"
COORDINATOR = "DPCoordinator"
# the coordinator's identity on the handshake socket (an engine's is its 2-byte DP rank)
COORDINATOR_IDENTITY = b"DPCoordinator"
# term_timeout: an engine still in its startup (KV cache, warm-up) takes SIGTERM as a
# request vLLM only acts on once started; seconds that a sibling's failure must not wait
SHUTDOWN = ShutdownPolicy(stop_timeout=5.0, term_timeout=0.5, kill_timeout=1.0)
_POLL_MS = 100


@dataclass(frozen=True)
class EngineCores:
    """The running engine cores: the launch group and where a client reaches them."""

    group: Group
    client_addresses: dict[str, Any]
    """For ``AsyncLLM.from_vllm_config(..., client_addresses=...)`` (the first client)."""
    addresses: EngineZmqAddresses
    client_listeners: tuple[dict[str, Any], ...] = field(default=(), repr=False)
    """With a placement: each client's bound TCP listeners (``input_listener``,
    ``output_listener``: sockets its vLLM client adopts); empty without one."""

    def client_config(self, index: int = 0) -> dict[str, Any]:
        """What client ``index`` passes to vLLM's API server (:func:`client_config`),
        with its listeners when the engines are placed."""
        config = client_config(self.addresses, index)
        if self.client_listeners:
            config.update(self.client_listeners[index])
        return config


def engine_addresses(vllm_config: VllmConfig, api_server_count: int = 1) -> EngineZmqAddresses:
    """Fresh IPC addresses for the engines of ``vllm_config`` and ``api_server_count``
    clients: each client's input and output, and the DP coordinator's when vLLM needs
    one. Chosen before anything starts, so the clients can start with the engines.

    Args:
        vllm_config: the engines' config (does it need a DP coordinator?).
        api_server_count: how many clients (API servers) the engines serve.

    Returns:
        The addresses, for ``open_engine_cores(..., addresses=...)``.

    Raises:
        ValueError: ``api_server_count`` is below 1.
    """
    if api_server_count < 1:
        raise ValueError(f"api_server_count must be at least 1, got {api_server_count}")
    addresses = EngineZmqAddresses(
        inputs=[get_open_zmq_ipc_path() for _ in range(api_server_count)],
        outputs=[get_open_zmq_ipc_path() for _ in range(api_server_count)],
    )
    if vllm_config.needs_dp_coordinator:
        front, back_out, back_pub = (get_open_zmq_ipc_path() for _ in range(3))
        addresses.coordinator_input, addresses.coordinator_output = back_pub, back_out
        addresses.frontend_stats_publish_address = front
    return addresses


def client_config(addresses: EngineZmqAddresses, index: int = 0) -> dict[str, Any]:
    """What client ``index`` passes to vLLM's API server (``run_server_worker``'s
    ``client_config``): its own input and output addresses, the coordinator's stats
    address, and the client count and index.

    Args:
        addresses: the engines' addresses (:func:`engine_addresses`).
        index: which client.

    Returns:
        The ``client_config`` mapping.
    """
    return {
        "input_address": addresses.inputs[index],
        "output_address": addresses.outputs[index],
        "stats_update_address": addresses.frontend_stats_publish_address,
        "client_count": len(addresses.inputs),
        "client_index": index,
    }


def _placed_addresses(
    vllm_config: VllmConfig, api_server_count: int, host: str
) -> tuple[EngineZmqAddresses, list[ZmqListener]]:
    """The addresses of placed engines: each client's input and output a TCP listener
    bound on ``host`` now (port 0), the coordinator's engine-side addresses ``tcp://host:0``
    (it binds them and reports where), its clients' stats address IPC (the clients are
    on this machine)."""
    if api_server_count < 1:
        raise ValueError(f"api_server_count must be at least 1, got {api_server_count}")
    try:  # newer vLLMs (0.32; not 0.26): a client adopts a listener bound beforehand
        from vllm.utils.network_utils import make_zmq_listener
    except ImportError as exc:
        version = importlib.import_module("vllm").__version__
        raise ImportError(
            f"placed engines need a vLLM whose clients adopt bound listeners "
            f"(vllm.utils.network_utils.make_zmq_listener), not vllm {version}"
        ) from exc
    listeners: list[ZmqListener] = []
    try:
        for _ in range(api_server_count):
            listeners.append(make_zmq_listener(get_tcp_uri(host, 0), zmq.ROUTER))
            listeners.append(make_zmq_listener(get_tcp_uri(host, 0), zmq.PULL))
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    addresses = EngineZmqAddresses(
        inputs=[listener.address for listener in listeners[0::2]],
        outputs=[listener.address for listener in listeners[1::2]],
    )
    if vllm_config.needs_dp_coordinator:
        addresses.frontend_stats_publish_address = get_open_zmq_ipc_path()
        # filled in by the coordinator's report (_Handshake)
        addresses.coordinator_input = addresses.coordinator_output = None
    return addresses, listeners


def _driver_host(parallel: Any) -> str:
    """The address every node reaches this process at: ``data_parallel_master_ip`` when
    it is not a loopback address (vLLM's ``--data-parallel-address``), else Ray's IP of
    this node."""
    given = parallel.data_parallel_master_ip
    try:
        loopback = ipaddress.ip_address(given).is_loopback
    except ValueError:  # a host name
        loopback = given == "localhost"
    if given and not loopback:
        return str(given)
    try:
        ray_util = importlib.import_module("ray.util")
    except ImportError:
        raise ImportError(
            "open_engine_cores with a placement: set data_parallel_master_ip (vLLM's "
            "--data-parallel-address) to an address of this machine that every node "
            "reaches, or install ray for its node IP"
        ) from None
    return str(ray_util.get_node_ip_address())


def engine_name(dp_rank: int) -> str:
    """The child name of one engine core, as vLLM names the process."""
    return f"EngineCore_DP{dp_rank}"


def engine_device_env(dp_rank: int, world_size: int) -> dict[str, str]:
    """The device variable of DP rank ``dp_rank``: its ``world_size`` devices, counted in
    the parent's own visible devices. Empty on platforms without one (the CPU)."""
    if not current_platform.is_cuda_alike():
        return {}
    ids = [
        str(current_platform.device_id_to_physical_device_id(i))
        for i in range(dp_rank * world_size, (dp_rank + 1) * world_size)
    ]
    return {current_platform.device_control_env_var: ",".join(ids)}


def _rank_config(
    vllm_config: VllmConfig, dp_rank: int, placed: bool = False
) -> tuple[VllmConfig, int]:
    """This rank's own copy of the config, and the local DP rank it runs as (0 when
    placed: the engine's devices are whatever its bundle's node gives it)."""
    config = copy.deepcopy(vllm_config)
    if placed or current_platform.is_cuda_alike():
        return config, 0  # its devices are the child's whole visible set
    try:  # what vLLM does to a shared config before each start(), on a copy instead
        from vllm.v1.engine.utils import set_assigned_physical_gpu_ids_for_dp_rank
    except ImportError:
        return config, dp_rank
    user_ids = vllm_config.parallel_config.assigned_physical_gpu_ids
    set_assigned_physical_gpu_ids_for_dp_rank(config, dp_rank, user_ids)
    return config, dp_rank


def _check(
    vllm_config: VllmConfig,
    placement: RayPlacement | None = None,
    addresses: EngineZmqAddresses | None = None,
) -> None:
    parallel = vllm_config.parallel_config
    problems = []
    if parallel.data_parallel_backend != "mp":
        problems.append(f"data_parallel_backend={parallel.data_parallel_backend!r} (not 'mp')")
    if parallel.data_parallel_size_local != parallel.data_parallel_size:
        problems.append(
            f"data_parallel_size_local={parallel.data_parallel_size_local} of "
            f"data_parallel_size={parallel.data_parallel_size} "
            + (
                "(every rank must be local; pass placement= for engines on other nodes)"
                if placement is None
                else "(with a placement every rank is started from here, in its bundle: "
                "leave data_parallel_size_local at data_parallel_size)"
            )
        )
    if placement is not None:
        problems += _placement_problems(vllm_config, placement, addresses)
    # with DP=1 vLLM sets data_parallel_rank_local (its offline mode): one engine, rank 0
    if parallel.data_parallel_size > 1 and parallel.data_parallel_rank_local is not None:
        problems.append("data_parallel_rank_local is set (offline one-engine-per-LLM mode)")
    if parallel.data_parallel_rank != 0:
        problems.append(f"data_parallel_rank={parallel.data_parallel_rank} (must be 0)")
    if problems:
        raise ValueError(
            (
                "open_engine_cores starts every engine of one node: "
                if placement is None
                else "open_engine_cores with a placement: "
            )
            + "; ".join(problems)
        )


def _placement_problems(
    vllm_config: VllmConfig, placement: RayPlacement, addresses: EngineZmqAddresses | None
) -> list[str]:
    """What cannot work with engines placed across nodes, each naming its key."""
    parallel = vllm_config.parallel_config
    dp_size = parallel.data_parallel_size
    problems = []
    if len(placement.bundles) != dp_size:
        problems.append(
            f"{len(placement.bundles)} bundles for data_parallel_size={dp_size} "
            "(one bundle per DP rank)"
        )
    if getattr(parallel, "nnodes", 1) > 1:
        problems.append(
            f"nnodes={parallel.nnodes} (one rank's workers across nodes; a placed engine "
            "starts its workers on its own node)"
        )
    if dp_size > 1 and vllm_config.model_config.is_moe:
        problems.append(
            "a MoE model with data_parallel_size > 1 (its engines form one DP process group "
            "whose rank 0 binds on data_parallel_master_ip, where vLLM also looks for the "
            "driver's coordination store: ParallelConfig._pick_stateless_dp_port and "
            "get_cached_tcp_store_client(data_parallel_master_ip, _coord_store_port) "
            "assume DP rank 0 runs on the driver's node)"
        )
    if getattr(parallel, "assigned_physical_gpu_ids", None) is not None:
        problems.append(
            f"assigned_physical_gpu_ids={parallel.assigned_physical_gpu_ids} (device ids: "
            "a placed engine's devices are its bundle's)"
        )
    if addresses is not None:
        problems.append(
            "addresses= (with a placement, open_engine_cores binds them on the driver's "
            "address itself: pass EngineCores.client_config(i) to each client)"
        )
    return problems


@asynccontextmanager
async def open_engine_cores(
    vllm_config: VllmConfig,
    *,
    executor_class: type[Any] | None = None,
    log_stats: bool = False,
    ready_timeout: float | None = 600.0,
    start_method: StartMethod | None = None,
    shutdown: ShutdownPolicy | None = None,
    api_server_count: int = 1,
    addresses: EngineZmqAddresses | None = None,
    placement: RayPlacement | None = None,
) -> AsyncIterator[EngineCores]:
    """Start vLLM's engine cores, one per DP rank, as a launch group; enter the block once
    every engine has completed its handshake and is in its busy loop.

    With ``placement`` (a ``RayPlacement`` with one bundle per DP rank), engine ``r``
    runs on bundle ``r``'s node (a fresh interpreter there, whatever ``start_method``)
    and starts its workers on that node; the DP coordinator stays on this machine. The
    engines reach this process over TCP on its address (module docstring);
    ``group[engine_name(r)].node`` says where each runs.

    ``executor_class`` defaults to vLLM's choice for the config (pass
    ``launch.integrations.vllm.LaunchExecutor`` for workers started by launch too).
    ``start_method`` defaults to the one vLLM would use (``fork`` unless CUDA is up in
    this process): a forked engine does not import torch and vLLM again.

    Args:
        vllm_config: the engine config; each rank gets a copy, this one is not changed.
        executor_class: the engines' executor; vLLM's choice for the config by default.
        log_stats: passed to each engine core.
        ready_timeout: seconds for each engine's start and handshake; None: no deadline.
        start_method: how engines start; the one vLLM would use by default.
        shutdown: how engines are stopped when the block is left.
        api_server_count: how many clients (API servers) the engines serve, each with
            its own input and output address (:meth:`EngineCores.client_config`).
        addresses: the addresses to use (:func:`engine_addresses`), when the clients
            start before the engines are READY; fresh ones by default. Not with a
            placement (the engines' addresses are bound here then).
        placement: where the engines run (a ``launch.integrations.ray.RayPlacement``,
            bundle ``r`` for DP rank ``r``); None: on this machine.

    Yields:
        The :class:`EngineCores`: the group, and the addresses for ``AsyncLLM``.

    Raises:
        ValueError: the config is not one node's internal data parallelism, or (with a
            placement) asks for what cannot work across nodes: the message names the key.
        ImportError: a placement, no ``data_parallel_master_ip`` other than loopback,
            and no ray to find this machine's address.
        PlacementError: the placement's bundles could not be placed in time.
        LaunchFailed: an engine failed to start (its traceback, or its worker's).
    """
    from vllm.v1.executor import Executor

    _check(vllm_config, placement, addresses)
    executor = executor_class or Executor.get_class(vllm_config)
    if start_method is None:
        start_method = _default_start_method()
    listeners: list[ZmqListener] = []
    coord_store, parallel = None, vllm_config.parallel_config
    host = ""
    picked: list[str | None] = []  # ipc addresses chosen here: their files are ours
    if placement is not None:
        host = _driver_host(vllm_config.parallel_config)
        addresses, listeners = _placed_addresses(vllm_config, api_server_count, host)
        picked.append(addresses.frontend_stats_publish_address)
        handshake_bind = get_tcp_uri(host, 0)
    else:
        if addresses is None:
            addresses = engine_addresses(vllm_config, api_server_count)
            picked += zmq_addresses_of(addresses)
        # a local of this frame: the store serves the engines' port picks while they run
        coord_store, parallel = _coord_store(vllm_config.parallel_config)
        handshake_bind = get_open_zmq_ipc_path()
        picked.append(handshake_bind)
    handshake: _Handshake | None = None
    try:
        handshake = _Handshake(
            handshake_bind,
            addresses,
            vllm_config,
            parallel,
            coordinator_reports=placement is not None and vllm_config.needs_dp_coordinator,
        )
        specs = _coordinator_specs(
            vllm_config,
            addresses,
            start_method,
            ready_timeout,
            report_to=None if placement is None else (handshake.address, host),
        )
        specs += _engine_specs(
            vllm_config,
            parallel,
            handshake.address,
            coord_store_port=None if coord_store is None else coord_store.port,
            executor_class=executor,
            log_stats=log_stats,
            start_method=start_method,
            ready_timeout=ready_timeout,
            placed=placement is not None,
        )
        where = None if placement is None else SplitPlacement(placement, [COORDINATOR])
        cores = _running(specs, handshake, addresses, shutdown or SHUTDOWN, where, listeners)
        async with cores as running:
            yield running
    finally:
        if handshake is not None:
            handshake.close()
        for listener in listeners:
            listener.close()  # no-op for one a client adopted
        remove_ipc_sockets(picked)


def _default_start_method() -> StartMethod:
    """The start method vLLM would use for its engines (``fork`` unless CUDA is up)."""
    from vllm.utils.system_utils import get_mp_context

    method: StartMethod = get_mp_context().get_start_method()
    return method


def _coordinator_specs(
    vllm_config: VllmConfig,
    addresses: EngineZmqAddresses,
    start_method: StartMethod,
    ready_timeout: float | None,
    report_to: tuple[str, str] | None = None,
) -> list[ProcessSpec]:
    """The DP coordinator's spec, when vLLM needs one (else none). On one node, on the
    IPC addresses chosen up front: no engine waits for it to bind. With ``report_to``
    (the handshake's address, the driver's host), its engine-side sockets are bound on
    TCP port 0 and reported to the handshake, which answers no engine before."""
    if not vllm_config.needs_dp_coordinator:
        return []
    back_output, back_publish = addresses.coordinator_output, addresses.coordinator_input
    if report_to is not None:
        back_output = back_publish = get_tcp_uri(report_to[1], 0)
    return [
        ProcessSpec(
            COORDINATOR_TARGET,
            name=COORDINATOR,
            kwargs={
                "engine_count": vllm_config.parallel_config.data_parallel_size,
                "front_publish_address": addresses.frontend_stats_publish_address,
                "back_output_address": back_output,
                "back_publish_address": back_publish,
                "enable_wave_coordination": vllm_config.model_config.is_moe,
                "report_address": None if report_to is None else report_to[0],
            },
            start_method=start_method,
            ready_timeout=ready_timeout,
        )
    ]


def _coord_store(parallel: Any) -> tuple[Any, Any]:
    """The TCP store vLLM's DP engines pick their group's ports through, when there are
    several and the running vLLM has one (else None), and the parallel config that
    names its port (a copy; the caller's is not changed)."""
    if parallel.data_parallel_size <= 1 or not hasattr(parallel, "_coord_store_port"):
        return None, parallel
    from vllm.distributed.utils import create_tcp_store

    store = create_tcp_store(
        parallel.data_parallel_master_ip, 0, is_master=True, world_size=-1,
        wait_for_workers=False,
    )  # fmt: skip
    parallel = copy.copy(parallel)
    parallel._coord_store_port = store.port
    return store, parallel


def _engine_specs(
    vllm_config: VllmConfig,
    parallel: Any,
    handshake_address: str,
    *,
    coord_store_port: int | None,
    executor_class: type[Any],
    log_stats: bool,
    start_method: StartMethod,
    ready_timeout: float | None,
    placed: bool = False,
) -> list[ProcessSpec]:
    """One spec per DP rank: its own copy of the config, its slice of the devices (none
    when ``placed``: its bundle's), and the handshake address it reports to."""
    specs = []
    for rank in range(parallel.data_parallel_size):
        config, local_rank = _rank_config(vllm_config, rank, placed)
        if coord_store_port is not None:
            config.parallel_config._coord_store_port = coord_store_port
        specs.append(
            ProcessSpec(
                ENGINE_TARGET,
                name=engine_name(rank),
                kwargs={
                    "vllm_config": config,
                    "handshake_address": handshake_address,
                    "executor_class": executor_class,
                    "log_stats": log_stats,
                    "dp_rank": rank,
                    "local_dp_rank": local_rank,
                },
                env={} if placed else engine_device_env(rank, parallel.world_size),
                start_method=start_method,
                ready_timeout=ready_timeout,
            )
        )
    return specs


@asynccontextmanager
async def _running(
    specs: list[ProcessSpec],
    handshake: _Handshake,
    addresses: EngineZmqAddresses,
    shutdown: ShutdownPolicy,
    placement: SplitPlacement | None = None,
    listeners: list[ZmqListener] | None = None,
) -> AsyncIterator[EngineCores]:
    """The engines' group, with their handshake served while they spawn; yields once
    every engine is READY (over ZMQ first, then to launch). An error comes out unwrapped
    from the task group."""
    unwrapped: BaseException | None = None
    pairs = list(zip(*[iter(listeners or [])] * 2, strict=True))
    client_listeners = tuple(
        {"input_listener": i.socket, "output_listener": o.socket} for i, o in pairs
    )
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(handshake.serve)
            async with open_group(
                specs, name="vllm-engines", shutdown=shutdown, placement=placement
            ) as group:
                await handshake.done.wait()  # every engine READY over ZMQ came first
                cores = EngineCores(
                    group=group,
                    client_addresses={},
                    addresses=addresses,
                    client_listeners=client_listeners,
                )
                # what AsyncLLM(client_addresses=...) takes: the first client's config
                # less the client count and index
                first = cores.client_config(0)
                del first["client_count"], first["client_index"]
                cores.client_addresses.update(first)
                yield cores
    except BaseExceptionGroup as eg:
        unwrapped = sole_exception(eg)  # the handshake's error, the group's, or the caller's
        if unwrapped is None:
            raise
    if unwrapped is not None:
        raise unwrapped


class _Handshake:
    """The parent's side of vLLM's engine startup handshake (``wait_for_engine_startup``):
    answer each engine's HELLO with the client addresses, count its READY.

    With ``coordinator_reports``, the coordinator's engine-side addresses are not known
    up front: the coordinator reports them on this socket once bound, and the HELLOs
    that came first are answered then. Binds ``bind`` at once (``address``: where it
    is bound, its port when ``bind`` asked for port 0)."""

    def __init__(
        self,
        bind: str,
        addresses: EngineZmqAddresses,
        config: VllmConfig,
        parallel: Any,
        *,
        coordinator_reports: bool = False,
    ) -> None:
        dp_size = parallel.data_parallel_size
        self.addresses = addresses
        self.parallel = parallel
        self.coordinated = dp_size > 1 and config.model_config.is_moe
        self.pending = {rank.to_bytes(2, "little"): "NEW" for rank in range(dp_size)}
        self.awaiting_coordinator = coordinator_reports
        self.held: list[bytes] = []  # engines' HELLOs waiting for the coordinator's report
        self.done = anyio.Event()
        self.context = zmq.Context()
        try:
            self.socket = self.context.socket(zmq.ROUTER)
            self.socket.setsockopt(zmq.LINGER, 0)
            if bind.startswith("tcp://["):
                self.socket.setsockopt(zmq.IPV6, 1)
            self.socket.bind(bind)
            self.address: str = self.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        except BaseException:
            self.context.destroy(linger=0)
            raise

    async def serve(self) -> None:
        await anyio.to_thread.run_sync(self._serve_blocking)
        self.done.set()

    def _serve_blocking(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while any(state != "READY" for state in self.pending.values()):
            anyio.from_thread.check_cancelled()  # a failed spawn ends the wait at once
            if not poller.poll(_POLL_MS):
                continue
            identity, body = self.socket.recv_multipart()
            self._on_message(identity, msgspec.msgpack.decode(body))

    def _on_message(self, identity: bytes, message: dict[str, Any]) -> None:
        status = message.get("status")
        if identity == COORDINATOR_IDENTITY and self.awaiting_coordinator:
            if status != "BOUND":
                raise RuntimeError(f"unexpected {status} from the DP coordinator")
            _, back_output, back_publish = message["addresses"]
            self.addresses.coordinator_output = back_output
            self.addresses.coordinator_input = back_publish
            self.awaiting_coordinator = False
            for held in self.held:
                self._welcome(held)
            self.held.clear()
            return
        rank = int.from_bytes(identity, "little")
        state = self.pending.get(identity)
        if state is None:
            raise RuntimeError(f"handshake from unexpected DP rank {rank}")
        if status == "HELLO" and state == "NEW":
            self.pending[identity] = "CONNECTED"
            if self.awaiting_coordinator:
                self.held.append(identity)
            else:
                self._welcome(identity)
        elif status == "READY" and state == "CONNECTED":
            if self.coordinated and message.get("parallel_config_hash") != (
                expected := self.parallel.compute_hash()
            ):
                raise RuntimeError(
                    f"{engine_name(rank)} has a different parallel config "
                    f"(hash {message.get('parallel_config_hash')}, expected {expected})"
                )
            self.pending[identity] = "READY"
        else:
            raise RuntimeError(f"unexpected {status} from {engine_name(rank)} in state {state}")

    def _welcome(self, identity: bytes) -> None:
        """Answer an engine's HELLO: the addresses, and the DP group's keys when the
        engines are coordinated."""
        keys = (
            "data_parallel_master_ip",
            "data_parallel_master_port",
            "_data_parallel_master_port_list",
            "_coord_store_port",
            "data_parallel_size",
        )
        parallel = (
            {k: getattr(self.parallel, k) for k in keys if hasattr(self.parallel, k)}
            if self.coordinated
            else {}
        )
        init = EngineHandshakeMetadata(addresses=self.addresses, parallel_config=parallel)
        self.socket.send_multipart((identity, msgspec.msgpack.encode(init)))

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


def engine_core(
    *,
    vllm_config: VllmConfig,
    handshake_address: str,
    executor_class: type[Any],
    log_stats: bool,
    dp_rank: int,
    local_dp_rank: int,
) -> None:
    """Target of one engine core: vLLM's ``EngineCoreProc.run_engine_core``, READY to
    launch once the engine has finished its handshake and enters its busy loop."""
    from vllm.v1.engine.core import DPEngineCoreProc, EngineCoreProc

    from .. import phase

    said_ready = ready_from_busy_loop(
        (EngineCoreProc, DPEngineCoreProc), {"dp_rank": dp_rank, "pid": os.getpid()}
    )
    phase("engine init (executor, workers, KV cache)")
    try:
        EngineCoreProc.run_engine_core(
            vllm_config=vllm_config,
            local_client=True,
            handshake_address=handshake_address,
            executor_class=executor_class,
            log_stats=log_stats,
            dp_rank=dp_rank,
            local_dp_rank=local_dp_rank,
        )
    except SystemExit as exc:
        if said_ready() and exc.code in (None, 0):
            exit_after_stop()
        raise


class _ReadyPipe:
    """Stands where ``DPCoordinatorProc`` sends its bound addresses to its parent: READY
    to launch, and first, with ``report_address``, the addresses to the driver's
    handshake (placed engines learn them from it)."""

    def __init__(self, report_address: str | None = None) -> None:
        self.report_address = report_address

    def send(self, bound: Any) -> None:
        from .. import ready

        if self.report_address is not None:
            _report(self.report_address, list(bound))
        ready({"addresses": list(bound)})
        stop_with_sigterm()

    def close(self) -> None:
        pass


def coordinator(
    *,
    engine_count: int,
    front_publish_address: str,
    back_output_address: str,
    back_publish_address: str,
    enable_wave_coordination: bool,
    report_address: str | None = None,
) -> None:
    """Target of vLLM's DP coordinator (load stats and request waves), READY once bound;
    with ``report_address``, its bound addresses are reported there first."""
    from vllm.v1.engine.coordinator import DPCoordinatorProc

    DPCoordinatorProc.run_coordinator(
        engine_count=engine_count,
        front_publish_address=front_publish_address,
        back_output_address=back_output_address,
        back_publish_address=back_publish_address,
        zmq_addr_pipe=_ReadyPipe(report_address),
        enable_wave_coordination=enable_wave_coordination,
    )


_REPORT_LINGER_MS = 10_000  # bounds the wait for the driver to take the report


def _report(address: str, bound: list[str]) -> None:
    """Send the coordinator's bound addresses to the driver's handshake socket."""
    context = zmq.Context()
    try:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, COORDINATOR_IDENTITY)
        sock.setsockopt(zmq.LINGER, _REPORT_LINGER_MS)
        if address.startswith("tcp://["):
            sock.setsockopt(zmq.IPV6, 1)
        sock.connect(address)
        sock.send(msgspec.msgpack.encode({"status": "BOUND", "addresses": bound}))
        sock.close()  # lingers until the message is out (or the bound)
    finally:
        context.term()
