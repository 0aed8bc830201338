"""torch.distributed workers that form their process group before READY.

Child side: :func:`join_process_group` (call it from your own target) and
:func:`worker` (a ready-made target). Parent side: :func:`process_group_specs` builds
the specs of one process group, with a rendezvous address picked in the parent.

Works with ``gloo`` on CPU and ``nccl`` on GPUs: with nccl each rank binds the GPU
``rank % torch.cuda.device_count()`` of those its stage made visible. torch is imported
only inside the children, never by ``import launch.integrations.torch``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from .. import ProcessSpec, StartMethod, phase, ready, wait_for_stop

WORKER = "launch.integrations.torch:worker"


def join_process_group(
    *,
    rank: int,
    world_size: int,
    init_method: str,
    backend: str = "gloo",
    timeout_s: float = 120.0,
    on_phase: Callable[[str], None] = phase,
) -> dict[str, Any]:
    """Import torch, form the process group, run a barrier and an all-reduce.

    Each step is a ``launch.phase`` (or a call of ``on_phase``, for callers outside a
    launch child), so the timeline shows where startup went.

    Args:
        rank: this process's rank.
        world_size: how many ranks the group has.
        init_method: the rendezvous, ``tcp://host:port``.
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (binds GPU ``rank % device_count``).
        timeout_s: how long ``init_process_group`` and the collectives may take.
        on_phase: called with each step's name; ``launch.phase`` by default.

    Returns:
        What a READY payload would carry: rank, world size, backend, device, and the
        all-reduce result.

    Raises:
        RuntimeError: the all-reduce gave the wrong sum.
    """
    on_phase("import torch")
    import torch.distributed as dist

    device = _bind_device(backend, rank, on_phase)
    on_phase("init_process_group")
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
        device_id=device if backend == "nccl" else None,
    )
    total = _check_collectives(device, rank, world_size, on_phase)
    return {
        "rank": rank,
        "world_size": world_size,
        "backend": backend,
        "device": str(device),
        "all_reduce": total,
    }


def _bind_device(backend: str, rank: int, on_phase: Callable[[str], None]) -> Any:
    """The rank's torch device: with nccl, GPU ``rank % device_count`` (made current)."""
    import torch

    if backend != "nccl":
        return torch.device("cpu")
    on_phase("cuda init")
    index = rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _check_collectives(
    device: Any, rank: int, world_size: int, on_phase: Callable[[str], None]
) -> float:
    """A barrier, then an all-reduce of ``rank + 1`` whose sum is checked; returns it."""
    import torch
    import torch.distributed as dist

    on_phase("barrier")
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()
    on_phase("all_reduce")
    value = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(value)
    total: float = value.item()
    expected = world_size * (world_size + 1) / 2
    if total != expected:
        raise RuntimeError(f"all_reduce gave {total}, expected {expected} (rank {rank})")
    return total


def worker(
    *,
    rank: int,
    world_size: int,
    init_method: str,
    backend: str = "gloo",
    timeout_s: float = 120.0,
) -> None:
    """A target: join the process group, say READY with its facts, serve until stopped.

    Args:
        rank: this process's rank.
        world_size: how many ranks the group has.
        init_method: the rendezvous, ``tcp://host:port``.
        backend: ``"gloo"`` or ``"nccl"``.
        timeout_s: how long ``init_process_group`` and the collectives may take.
    """
    info = join_process_group(
        rank=rank,
        world_size=world_size,
        init_method=init_method,
        backend=backend,
        timeout_s=timeout_s,
    )
    ready(info)
    wait_for_stop()
    import torch.distributed as dist

    dist.destroy_process_group()


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free TCP ports (held open together while picked, so no repeats).

    Args:
        count: how many ports.
        host: the address to bind while picking.

    Returns:
        The port numbers.
    """
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def process_group_specs(
    name: str,
    world_size: int,
    *,
    backend: str = "gloo",
    target: str = WORKER,
    kwargs: Mapping[str, Any] | None = None,
    start_method: StartMethod = "spawn",
    ready_timeout: float | None = 600.0,
    host: str = "127.0.0.1",
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> list[ProcessSpec]:
    """Specs of one process group: children ``{name}-0`` … ``{name}-{world_size-1}``.

    Each gets ``rank``, ``world_size``, ``init_method`` (``tcp://host:port``, port picked
    here if not given) and ``backend`` as kwargs, on top of ``kwargs``; ``target`` must
    accept them (the default, :func:`worker`, does).

    Args:
        name: the group's name; children are ``name-0`` and so on.
        world_size: how many ranks.
        backend: ``"gloo"`` or ``"nccl"``.
        target: the ``module:qualname`` each rank runs.
        kwargs: more keyword arguments for every rank.
        start_method: how each rank starts.
        ready_timeout: seconds from spawn to READY; None: no deadline.
        host: the rendezvous host.
        port: the rendezvous port; a free one is picked if None.
        env: variables set in every rank (inside the child).

    Returns:
        The specs, rank 0 first.

    Raises:
        ValueError: ``world_size`` is below 1.
    """
    if world_size < 1:
        raise ValueError(f"process group {name!r}: world_size must be >= 1, got {world_size}")
    port = port if port is not None else free_ports(1, host)[0]
    shared = dict(kwargs or {})
    return [
        ProcessSpec(
            target,
            name=f"{name}-{rank}",
            kwargs={
                **shared,
                "rank": rank,
                "world_size": world_size,
                "init_method": f"tcp://{host}:{port}",
                "backend": backend,
            },
            env=dict(env or {}),
            start_method=start_method,
            ready_timeout=ready_timeout,
        )
        for rank in range(world_size)
    ]
