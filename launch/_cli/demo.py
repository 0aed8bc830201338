"""The embedded default pipeline that ``launch demo`` runs.

Three stages shaped like a vLLM-Omni thinker → talker → vocoder. Each stage's ranks
form a real torch.distributed process group on CPU (gloo) and run a barrier and an
all-reduce before READY. Without torch, the same shape runs :func:`python_worker`,
which does the same rendezvous and sum over plain TCP sockets.
"""

from __future__ import annotations

import importlib.util
import socket
import struct
import time
from urllib.parse import urlsplit

from .. import phase, ready, wait_for_stop
from .._pipeline_spec import PipelineSpec, StageSpec
from .._spec import StartMethod

PYTHON_WORKER = "launch._cli.demo:python_worker"
STAGES: tuple[tuple[str, int, tuple[int, ...]], ...] = (
    ("thinker", 2, (0, 1)),
    ("talker", 1, (2,)),
    ("vocoder", 1, (3,)),
)
INSTALL_TORCH = (
    "for the torch one: pip install 'launch-tree[torch]' torch==2.13.0 (from PyPI on Linux "
    "that is the CUDA build, several GB; the CPU build is on https://download.pytorch.org/whl/cpu)"
)


def torch_available() -> bool:
    """Whether torch can be imported, without importing it in the parent."""
    return importlib.util.find_spec("torch") is not None


def demo_pipeline(*, use_torch: bool, start_method: StartMethod = "spawn") -> PipelineSpec:
    """The demo pipeline: torch gloo workers, or the pure-Python stand-in."""
    from ..integrations.torch import WORKER, free_ports, process_group_specs

    ports = free_ports(len(STAGES))
    stages = []
    for (name, world_size, devices), port in zip(STAGES, ports, strict=True):
        specs = process_group_specs(
            name,
            world_size,
            target=WORKER if use_torch else PYTHON_WORKER,
            start_method=start_method,
            port=port,
            ready_timeout=120.0,
            # the children's threads would compete for this machine's few cores
            env={"OMP_NUM_THREADS": "1"},
        )
        stages.append(StageSpec(name, specs, devices=devices))
    return PipelineSpec(stages, name="omni-demo")


def _exchange(rank: int, world_size: int, host: str, port: int, deadline: float) -> float:
    """A sum over TCP: rank 0 collects every rank's value and sends back the total."""
    value = float(rank + 1)
    if world_size == 1:
        return value
    if rank == 0:
        with socket.create_server((host, port)) as server:
            server.settimeout(max(0.1, deadline - time.monotonic()))
            peers = [server.accept()[0] for _ in range(world_size - 1)]
            total: float = value + sum(struct.unpack("!d", _recv(peer, 8))[0] for peer in peers)
            for peer in peers:
                with peer:
                    peer.sendall(struct.pack("!d", total))
            return total
    while True:  # rank 0 may not be listening yet
        try:
            conn = socket.create_connection((host, port), timeout=1.0)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    with conn:
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        conn.sendall(struct.pack("!d", value))
        result: float = struct.unpack("!d", _recv(conn, 8))[0]
        return result


def _recv(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed the connection during the rendezvous")
        data += chunk
    return data


def python_worker(
    *,
    rank: int,
    world_size: int,
    init_method: str,
    backend: str = "tcp",
    timeout_s: float = 60.0,
) -> None:
    """The torch-free stand-in: same phases and kwargs as the torch worker."""
    phase("import")
    import decimal  # noqa: F401  (a few real imports, in place of torch's)
    import json  # noqa: F401
    import statistics  # noqa: F401

    phase("rendezvous + all_reduce")
    address = urlsplit(init_method)
    host, port = address.hostname or "127.0.0.1", address.port or 0
    total = _exchange(rank, world_size, host, port, time.monotonic() + timeout_s)
    expected = world_size * (world_size + 1) / 2
    if total != expected:
        raise RuntimeError(f"sum gave {total}, expected {expected} (rank {rank})")
    ready({"rank": rank, "world_size": world_size, "backend": "python-tcp", "all_reduce": total})
    wait_for_stop()
