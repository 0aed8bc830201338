"""One node's share of a torch.distributed process group spread over several machines.

Start it once per node, each with its node rank and the same rendezvous address (node 0's
address and a free port); every launcher starts and supervises the ranks of its own node:

    python multinode.py --node-rank 0 --nodes 2 --per-node 4 --master 10.0.0.1:29500
    python multinode.py --node-rank 1 --nodes 2 --per-node 4 --master 10.0.0.1:29500

It stays up until Ctrl-C or SIGTERM (or ``--up-s`` seconds), then stops its ranks.
Needs torch (``pip install 'launch-tree[torch]' torch==2.13.0``); gloo runs on the CPU.
"""

from __future__ import annotations

import argparse
import signal
import sys

import launch
from launch.integrations.torch import WORKER


def node_specs(
    node_rank: int, nodes: int, per_node: int, master: str, backend: str = "gloo"
) -> list[launch.ProcessSpec]:
    """The ranks of node ``node_rank``: global ranks ``node_rank * per_node`` onwards, each
    with its local device."""
    world_size = nodes * per_node
    first = node_rank * per_node
    return [
        launch.ProcessSpec(
            WORKER,
            name=f"rank-{first + local}",
            kwargs={
                "rank": first + local,
                "world_size": world_size,
                "init_method": f"tcp://{master}",
                "backend": backend,
            },
            env={"CUDA_VISIBLE_DEVICES": str(local), "OMP_NUM_THREADS": "1"},
        )
        for local in range(per_node)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-rank", type=int, required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--per-node", type=int, default=1)
    parser.add_argument("--master", required=True, help="HOST:PORT of the rendezvous")
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    parser.add_argument("--up-s", type=float, help="stop after this many seconds")
    args = parser.parse_args()
    # SIGTERM (from a scheduler) stops the ranks the way Ctrl-C does
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    specs = node_specs(args.node_rank, args.nodes, args.per_node, args.master, args.backend)
    try:
        with launch.start_group(specs, name=f"node-{args.node_rank}") as group:
            for child in group.children:
                print(f"{child.name}: {child.payload}", flush=True)
            group.wait(timeout=args.up_s)  # returns at the timeout; raises if a rank died
    except KeyboardInterrupt:
        print("stopped", flush=True)
    except launch.LaunchFailed as exc:
        print(exc.first, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
