"""Children on a Ray cluster: :class:`RayPlacement` and :func:`open_placement`.

Each child is launch's own bootstrap, started by a Ray actor that Ray placed in the
child's bundle of a placement group, on the child's node. The driver speaks launch's
control protocol to the child over TCP, unchanged; a second TCP connection to the actor
carries the child's exit code, signal requests and heartbeats (see
:class:`~launch.integrations._ray_process.RayProcess`).

``ray`` is imported lazily (``pip install 'launch-tree[ray]'``); launch's core never
imports it.

A group or a pipeline stage is placed by passing a :class:`RayPlacement` (which
implements launch's placement protocol, :meth:`RayPlacement.open`)::

    placement = RayPlacement([{"CPU": 1, "GPU": 1}] * 2, strategy="STRICT_SPREAD")
    async with launch.open_group(specs, name="dp", placement=placement) as group:
        group["w0"].node                     # RayNode(node_id, ip)

Below it, the start of one child (what the group's startup does, per child)::

    async with open_placement(placement, n_children=len(specs)) as placed:
        spawned = await placed.spawn(0, specs[0], group="dp")   # a launch Spawned
        spawned.process.node, spawned.process.clock_offset
        # spawned.sock is the child's control socket: send build_boot(spec, group) ...
"""

from __future__ import annotations

import importlib
import math
import secrets
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from .._errors import SpawnFailed
from .._fds import own_socket
from .._spec import ProcessSpec
from .._start.spawn import Spawned, Starter
from ._ray_host import ChildHost
from ._ray_process import (
    RayNode,
    RayProcess,
    Supervision,
    SupervisionLost,
    estimate_offset,
)
from ._ray_wire import (
    HELLO_SIZE,
    ROLE_CONTROL,
    ROLE_SUPERVISION,
    TOKEN_BYTES,
    keepalive,
    parse_hello,
)

__all__ = [
    "PlacementError",
    "PlacedGroup",
    "RayNode",
    "RayPlacement",
    "RayProcess",
    "open_placement",
]

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
_HELLO_TIMEOUT_S = 5.0  # a connection that has not said who it is by then is dropped
_SETUP_TIMEOUT_S = 30.0  # the actor's node report and the child's start
_ACTOR_START_S = 300.0  # an actor's start (worker process, runtime env), without ready_timeout
_CLOCK_SAMPLES = 5
_POLL_S = (0.02, 0.5)  # placement and actor polls: first and longest interval
_CLEANUP_S = 30.0  # bound on killing the actors and removing the placement group
_RAY_KILLS_CHILDREN = "RAY_kill_child_processes_on_worker_exit"
_INTERNAL = ("node:", "bundle_group_", "memory", "object_store_memory")


class PlacementError(RuntimeError):
    """A placement group could not be placed within ``placement_timeout``; nothing of it
    is left in Ray.

    Attributes:
        bundles (list[dict[str, float]]): The bundles asked for.
        strategy (str): The strategy asked for.
        unplaceable (list[int]): The indexes of the bundles that no node of the cluster
            can hold at all (a resource no node has, or too much of one); empty when each
            fits somewhere and the group as a whole did not (a strategy the nodes cannot
            satisfy, or resources taken by other work).
        cluster (str): What the cluster had when it failed, node by node.
    """

    def __init__(
        self,
        message: str,
        *,
        bundles: list[dict[str, float]],
        strategy: str,
        unplaceable: list[int],
        cluster: str,
    ) -> None:
        super().__init__(message)
        self.bundles = bundles
        self.strategy = strategy
        self.unplaceable = unplaceable
        self.cluster = cluster


@dataclass(frozen=True)
class RayPlacement:
    """Where a group's children run: one Ray placement-group bundle per child.

    Args:
        bundles: One ``{resource: amount}`` per child, child ``i`` in bundle ``i``;
            e.g. ``[{"CPU": 1, "GPU": 1}] * 4``. The child's host actor takes the whole
            bundle, so Ray sets the bundle's device visibility (``CUDA_VISIBLE_DEVICES``)
            for the child.
        strategy: Ray's placement strategy: ``"PACK"``, ``"SPREAD"``, ``"STRICT_PACK"`` or
            ``"STRICT_SPREAD"``.
        address: Where the Ray cluster is (``ray.init(address=...)``), used only when
            this process is not connected to Ray yet; ``"auto"`` finds a local one.
        placement_timeout: Seconds to wait for the bundles to be placed; then a
            :class:`PlacementError` names them (Ray itself would wait forever).

    Raises:
        ValueError: An empty or malformed ``bundles`` list (each bundle a non-empty
            mapping of resource names to finite non-negative numbers, at least one
            positive), an unknown ``strategy``, or a ``placement_timeout`` that is not a
            finite positive number.
    """

    bundles: Sequence[Mapping[str, float]]
    strategy: str = "PACK"
    address: str | None = "auto"
    placement_timeout: float = 300.0
    _bundles: tuple[dict[str, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.bundles, Mapping) or not isinstance(self.bundles, Sequence):
            raise ValueError(
                f"RayPlacement: bundles must be a list of {{resource: amount}}, "
                f"got {type(self.bundles).__name__}"
            )
        if not self.bundles:
            raise ValueError("RayPlacement: bundles must not be empty (one per child)")
        checked = tuple(_check_bundle(i, bundle) for i, bundle in enumerate(self.bundles))
        object.__setattr__(self, "_bundles", checked)
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"RayPlacement: unknown strategy {self.strategy!r}; expected one of "
                f"{', '.join(STRATEGIES)}"
            )
        timeout = self.placement_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ValueError(
                f"RayPlacement: placement_timeout must be a finite positive number of "
                f"seconds, got {timeout!r}"
            )
        if self.address is not None and not isinstance(self.address, str):
            raise ValueError(f"RayPlacement: address must be a string, got {self.address!r}")

    def open(
        self, specs: Sequence[ProcessSpec], group: str
    ) -> AbstractAsyncContextManager[Starter]:
        """The placement protocol of ``launch.open_group(..., placement=...)`` and of a
        pipeline stage: reserve the bundles, yield a starter that starts ``specs[i]`` in
        bundle ``i``, and kill every actor and remove the placement group on leaving.

        Args:
            specs: The group's children, at most one per bundle.
            group: The group's name, for errors.

        Returns:
            An async context manager around :func:`open_placement`, yielding
            :meth:`PlacedGroup.starter` of ``specs``.

        Raises:
            ValueError: More children than bundles (raised by this call).
        """
        if not 0 < len(specs) <= len(self._bundles):
            raise ValueError(
                f"group {group!r}: {len(specs)} children for {len(self._bundles)} bundles: "
                "a RayPlacement needs one bundle per child"
            )
        return _opened(self, tuple(specs))


def _check_bundle(index: int, bundle: object) -> dict[str, float]:
    where = f"RayPlacement: bundle {index}"
    if not isinstance(bundle, Mapping) or not bundle:
        raise ValueError(
            f"{where} must be a non-empty {{resource: amount}} mapping, got {bundle!r}"
        )
    out: dict[str, float] = {}
    for key, value in bundle.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}: resource names must be non-empty strings, got {key!r}")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(
                f"{where}: {key!r} must be a finite non-negative number, got {value!r}"
            )
        out[key] = float(value)
    if not any(out.values()):
        raise ValueError(f"{where} asks for nothing (every amount is 0): Ray refuses it")
    return out


def _ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ImportError(
            "launch's Ray placement needs ray: pip install 'launch-tree[ray]'"
        ) from None


def _show(resources: Mapping[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if not k.startswith(_INTERNAL)}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


def _fits(bundle: Mapping[str, float], resources: Mapping[str, float]) -> bool:
    return all(resources.get(key, 0.0) >= amount for key, amount in bundle.items() if amount)


def _explain(ray: Any, placement: RayPlacement, waited: float) -> PlacementError:
    """The error for a placement group not placed in time: which bundles, and why."""
    bundles = list(placement._bundles)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    try:
        available = ray.available_resources()
    except Exception:
        available = {}
    unplaceable = [
        i
        for i, bundle in enumerate(bundles)
        if not any(_fits(bundle, n["Resources"]) for n in nodes)
    ]
    reasons = [
        f"bundle {i} {_show(bundles[i])} fits on no node (none has that much of each resource)"
        for i in unplaceable
    ]
    if not reasons:
        if placement.strategy == "STRICT_SPREAD" and len(bundles) > len(nodes):
            reasons.append(
                f"STRICT_SPREAD needs a node per bundle: {len(bundles)} bundles, "
                f"{len(nodes)} live nodes"
            )
        elif placement.strategy == "STRICT_PACK":
            total = {k: sum(b.get(k, 0.0) for b in bundles) for b in bundles for k in b}
            if not any(_fits(total, n["Resources"]) for n in nodes):
                reasons.append(f"STRICT_PACK needs one node with {_show(total)} in all")
        if not reasons:
            reasons.append(
                "every bundle fits on some node, but not all at once now: resources are "
                "taken by other work, or the strategy cannot be met"
            )
    cluster = "\n".join(
        f"  node {n.get('NodeManagerAddress')} ({str(n.get('NodeID'))[:12]}): "
        f"{_show(n['Resources'])}"
        for n in nodes
    )
    cluster += f"\n  available now: {_show(available)}"
    listed = ", ".join(f"{i}: {_show(b)}" for i, b in enumerate(bundles))
    message = (
        f"Ray could not place {len(bundles)} bundles ({placement.strategy}) within "
        f"placement_timeout={placement.placement_timeout:g}s (waited {waited:.1f}s): "
        + "; ".join(reasons)
        + f".\nbundles: {listed}\ncluster ({len(nodes)} live nodes):\n{cluster}"
    )
    return PlacementError(
        message,
        bundles=bundles,
        strategy=placement.strategy,
        unplaceable=unplaceable,
        cluster=cluster,
    )


class PlacedGroup:
    """A placement group that is ready, and the means to start a child in each bundle.

    Made by :func:`open_placement`; valid inside its block.

    Attributes:
        placement (RayPlacement): What was asked for.
        placement_group (Any): Ray's ``PlacementGroup``.
    """

    def __init__(self, ray: Any, placement: RayPlacement, placement_group: Any, driver_ip: str):
        self.placement = placement
        self.placement_group = placement_group
        self._ray = ray
        self._driver_ip = driver_ip
        self._actors: list[Any] = []
        self._used: set[int] = set()
        self._host_class: Any = None

    def _create_actor(self, index: int, address: tuple[str, int], token: bytes) -> Any:
        """Create the host actor in bundle ``index`` and start its ``run`` (blocking Ray
        calls: run in a worker thread). The actor is registered for the teardown before
        anything can fail after its creation."""
        ray = self._ray
        strategies = importlib.import_module("ray.util.scheduling_strategies")
        if self._host_class is None:
            self._host_class = ray.remote(ChildHost)
        bundle = dict(self.placement._bundles[index])
        options: dict[str, Any] = {
            "num_cpus": bundle.pop("CPU", 0.0),
            "num_gpus": bundle.pop("GPU", 0.0),
            "resources": bundle,
            "max_restarts": 0,
            "max_task_retries": 0,
            # Ray SIGKILLs a worker's direct children as the worker exits: the child
            # then dies before it can kill its own subtree, and a grandchild that left
            # its process group is orphaned to init. Launch's guard does better (SIGTERM,
            # a grace, then its whole subtree), so the host's worker leaves it to it.
            "runtime_env": {"env_vars": {_RAY_KILLS_CHILDREN: "0"}},
            "scheduling_strategy": strategies.PlacementGroupSchedulingStrategy(
                self.placement_group, placement_group_bundle_index=index
            ),
        }
        if "memory" in bundle:
            options["memory"] = bundle.pop("memory")
        actor = self._host_class.options(**options).remote()
        self._actors.append(actor)
        return actor.run.remote(address, token)

    def starter(self, specs: Sequence[ProcessSpec]) -> Starter:
        """A launch :data:`~launch._start.spawn.Starter` that starts each of ``specs`` in
        its bundle: ``specs[i]`` in bundle ``i``, by name.

        Args:
            specs: The group's children, in bundle order.

        Returns:
            ``async (spec, group, overlay) -> Spawned``, for the group's runs.

        Raises:
            ValueError: More specs than bundles.
        """
        if len(specs) > len(self.placement._bundles):
            raise ValueError(
                f"{len(specs)} children for {len(self.placement._bundles)} bundles: a "
                "placement needs one bundle per child"
            )
        index = {spec.name: i for i, spec in enumerate(specs)}

        async def start(
            spec: ProcessSpec, group: str, overlay: Mapping[str, str] | None = None
        ) -> Spawned:
            return await self.spawn(index[spec.name], spec, group, overlay)

        return start

    async def spawn(
        self,
        index: int,
        spec: ProcessSpec,
        group: str,
        overlay: Mapping[str, str] | None = None,
    ) -> Spawned:
        """Start ``spec``'s child in bundle ``index``: its host actor, then the child.

        Returns once the child's process exists on its node. The caller then speaks
        launch's protocol on ``Spawned.sock`` (the boot frame first), as with a local
        child; ``Spawned.process`` is a :class:`RayProcess`.

        Args:
            index: The bundle, ``0 <= index < len(placement.bundles)``; each at most once.
            spec: The child. Its ``start_method`` is not used (the child is always a fresh
                interpreter on its node) and its output goes to the actor's stdout and
                stderr (Ray's worker logs, which Ray shows on the driver).
            group: The group's name, for errors.
            overlay: Parent-side env: set in the child's environment from its start, on
                top of the host actor's (which has Ray's device visibility).

        Returns:
            The started child: ``process`` (a :class:`RayProcess`), ``sock`` (the
            connected TCP control socket), ``node`` (a :class:`RayNode`),
            ``clock_offset`` (the node's clock minus this process's), ``lock_wait_s``
            (0: the launch lock is not taken) and ``output_fds`` (None).

        Raises:
            ValueError: ``index`` is out of range or used already.
            SpawnFailed: The actor could not be created or started, did not connect back
                in time (``spec.ready_timeout``, or 300 s without one), or the child could
                not be started on the node.
        """
        if not 0 <= index < len(self.placement._bundles):
            raise ValueError(
                f"bundle index {index} out of range: {len(self.placement._bundles)} bundles"
            )
        if index in self._used:
            raise ValueError(f"bundle {index} already hosts a child")
        self._used.add(index)

        def failed(detail: str, exc: BaseException | None = None) -> SpawnFailed:
            return SpawnFailed(
                spec.name,
                group=group,
                failed_at=time.monotonic(),
                remote_type=type(exc).__name__ if exc is not None else None,
                remote_message=str(exc).splitlines()[0][:500] if exc and str(exc) else None,
                detail=f"on Ray (bundle {index} {_show(self.placement._bundles[index])}): {detail}",
            )

        requested = time.monotonic()
        bound = spec.ready_timeout if spec.ready_timeout is not None else _ACTOR_START_S
        token = secrets.token_bytes(TOKEN_BYTES)
        listener = own_socket(socket.create_server((self._driver_ip, 0), backlog=16))
        listener.setblocking(False)
        control: socket.socket | None = None
        supervision: Supervision | None = None
        try:
            address = listener.getsockname()[:2]
            try:
                run_ref = await anyio.to_thread.run_sync(self._create_actor, index, address, token)
            except Exception as exc:
                raise failed("its host actor could not be created", exc) from exc
            with anyio.move_on_after(bound) as scope:
                control_sock, supervision_sock = await self._accept(
                    listener, token, run_ref, failed
                )
            if scope.cancelled_caught:
                raise failed(f"its host actor did not connect back within {bound:g}s")
            control = control_sock
            supervision = Supervision(supervision_sock)
            try:
                node, process = await self._start_child(supervision, dict(overlay or {}))
            except SupervisionLost as exc:
                raise failed(f"its host actor stopped answering ({exc})") from None
            except _StartRefused as exc:
                raise failed(f"the child could not be started on its node: {exc}") from None
        except BaseException:
            if control is not None:
                control.close()
            if supervision is not None:
                supervision.close()
            raise
        finally:
            anyio.notify_closing(listener)
            listener.close()
        pid, offset, error = process
        return Spawned(
            RayProcess(pid, node, supervision, clock_offset=offset, clock_error=error),
            control,
            lock_wait_s=0.0,
            spawned_at=time.monotonic(),
            output_fds=None,
            requested_at=requested,
            node=node,
            clock_offset=offset,
        )

    async def _accept(
        self, listener: socket.socket, token: bytes, run_ref: Any, failed: Any
    ) -> tuple[socket.socket, socket.socket]:
        """Accept connections until the actor's two (authenticated by ``token``) are in;
        anything else is closed. Raises ``failed(...)`` if the actor's run ends first."""
        got: dict[bytes, socket.socket] = {}
        done = anyio.Event()

        async def greet(sock: socket.socket) -> None:
            keep = False
            try:
                with anyio.move_on_after(_HELLO_TIMEOUT_S):
                    data = b""
                    while len(data) < HELLO_SIZE:
                        try:
                            chunk = sock.recv(HELLO_SIZE - len(data))
                        except BlockingIOError:
                            await anyio.wait_readable(sock)
                            continue
                        if not chunk:
                            return
                        data += chunk
                    hello = parse_hello(data)
                    if hello is None or not secrets.compare_digest(hello[1], token):
                        return
                    role = hello[0]
                    if role in got:  # the same role twice: not our actor's doing
                        return
                    got[role] = sock
                    keep = True
                    if len(got) == 2:
                        done.set()
            except OSError:
                return
            finally:
                if not keep:
                    anyio.notify_closing(sock)
                    sock.close()

        async def serve(tg: anyio.abc.TaskGroup) -> None:
            while True:
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    await anyio.wait_readable(listener)
                    continue
                sock.setblocking(False)
                tg.start_soon(greet, own_socket(sock))

        async def watch_actor() -> None:
            delay = _POLL_S[0]
            while True:
                ready, _ = await anyio.to_thread.run_sync(
                    lambda: self._ray.wait([run_ref], timeout=0), abandon_on_cancel=True
                )
                if ready:
                    try:
                        await anyio.to_thread.run_sync(self._ray.get, run_ref)
                    except Exception as exc:
                        raise failed("its host actor failed before connecting back", exc) from exc
                    raise failed("its host actor returned before connecting back")
                await anyio.sleep(delay)
                delay = min(delay * 2, _POLL_S[1])

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve, tg)
                tg.start_soon(watch_actor)
                await done.wait()
                tg.cancel_scope.cancel()
        except BaseException:
            for sock in got.values():
                sock.close()
            raise
        for sock in got.values():
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            keepalive(sock)
        return got[ROLE_CONTROL], got[ROLE_SUPERVISION]

    @staticmethod
    async def _start_child(
        supervision: Supervision, overlay: dict[str, str]
    ) -> tuple[RayNode, tuple[int, float, float]]:
        """Learn the node, align the clocks, start the child: ``(node, (pid, offset,
        error))``."""
        message = await supervision.receive(_SETUP_TIMEOUT_S)
        if message[0] != "node":
            raise SupervisionLost(f"expected the node report, got {message[0]!r}")
        node = RayNode(node_id=message[1], ip=message[2])
        samples = []
        for _ in range(_CLOCK_SAMPLES):
            t0 = time.monotonic()
            await supervision.send("clock")
            answer = await supervision.receive(_SETUP_TIMEOUT_S)
            t1 = time.monotonic()
            if answer[0] != "clock":
                raise SupervisionLost(f"expected a clock reading, got {answer[0]!r}")
            samples.append((t0, float(answer[1]), t1))
        offset, rtt = estimate_offset(samples)
        await supervision.send("start", overlay)
        message = await supervision.receive(_SETUP_TIMEOUT_S)
        if message[0] == "failed":
            raise _StartRefused(message[1])
        if message[0] != "started":
            raise SupervisionLost(f"expected the child's pid, got {message[0]!r}")
        return node, (message[1], offset, rtt / 2)

    def _kill_all(self) -> None:
        """Kill every actor made and remove the placement group (blocking Ray calls)."""
        for actor in self._actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:
                pass
        if self.placement_group is not None:
            _remove(self._ray, self.placement_group)


class _StartRefused(Exception):
    """The host actor could not start the child process."""


def _remove(ray: Any, placement_group: Any) -> None:
    try:
        importlib.import_module("ray.util").remove_placement_group(placement_group)
    except Exception:  # removed already (the job ended), or Ray is gone
        pass


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to Ray unless connected; True if this call made the connection."""
    if ray.is_initialized():
        return False
    ray.init(address=address, log_to_driver=True, ignore_reinit_error=True)
    return True


@asynccontextmanager
async def _opened(
    placement: RayPlacement, specs: tuple[ProcessSpec, ...]
) -> AsyncIterator[Starter]:
    async with open_placement(placement, n_children=len(specs)) as placed:
        yield placed.starter(specs)


@asynccontextmanager
async def open_placement(
    placement: RayPlacement, n_children: int | None = None
) -> AsyncIterator[PlacedGroup]:
    """Reserve ``placement``'s bundles on the Ray cluster; yield once they are placed.

    Connects to Ray (``ray.init(address=placement.address)``) unless this process is
    connected already, creates the placement group and waits for it without a thread
    per child (one short poll at a time). On leaving, whatever the outcome (cancellation
    included, shielded, bounded), every actor started through it is killed and the
    placement group removed; a Ray connection this call made is shut down, one it found
    is left as it was.

    Args:
        placement: The bundles and strategy.
        n_children: How many children will be started (at most one per bundle); None
            for one per bundle.

    Yields:
        The :class:`PlacedGroup`; start each child with :meth:`PlacedGroup.spawn`.

    Raises:
        ValueError: More children than bundles.
        ImportError: ray is not installed.
        PlacementError: The bundles were not placed within ``placement_timeout``; the
            message names them, says why where it can, and what the cluster has.
    """
    if n_children is not None and not 0 < n_children <= len(placement._bundles):
        raise ValueError(
            f"{n_children} children for {len(placement._bundles)} bundles: a placement "
            "needs one bundle per child"
        )
    ray = _ray()
    made_connection = await anyio.to_thread.run_sync(_connect, ray, placement.address)
    placed: PlacedGroup | None = None
    try:
        util = importlib.import_module("ray.util")
        driver_ip = await anyio.to_thread.run_sync(util.get_node_ip_address)
        started = time.monotonic()
        # Registered as soon as it exists: a cancel from here on still removes it.
        placed = PlacedGroup(ray, placement, None, driver_ip)

        def create() -> Any:
            # Assigned in the thread: a cancel during the call still finds it to remove.
            placed.placement_group = util.placement_group(
                list(placement._bundles), strategy=placement.strategy
            )
            return placed.placement_group

        pg = await anyio.to_thread.run_sync(create)
        delay = _POLL_S[0]
        with anyio.move_on_after(placement.placement_timeout) as scope:
            while True:
                state = await anyio.to_thread.run_sync(
                    lambda: util.placement_group_table(pg).get("state"), abandon_on_cancel=True
                )
                if state == "CREATED":
                    break
                if state == "REMOVED":
                    raise PlacementError(
                        "the placement group was removed while it was being placed",
                        bundles=list(placement._bundles),
                        strategy=placement.strategy,
                        unplaceable=[],
                        cluster="",
                    )
                await anyio.sleep(delay)
                delay = min(delay * 1.5, _POLL_S[1])
        if scope.cancelled_caught:
            waited = time.monotonic() - started
            raise await anyio.to_thread.run_sync(_explain, ray, placement, waited)
        yield placed
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_S):
            if placed is not None:
                await anyio.to_thread.run_sync(placed._kill_all, abandon_on_cancel=True)
            if made_connection:
                await anyio.to_thread.run_sync(ray.shutdown, abandon_on_cancel=True)
