"""Start four workers as one group, each pinned to its own device; print their payloads.

python examples/tp_workers.py            # trio
python examples/tp_workers.py asyncio    # asyncio
"""

from __future__ import annotations

import os
import sys
import time

import anyio

import launch


def worker(rank: int, init_s: float) -> None:
    """The child side: phases, READY with a payload, then serve until stopped."""
    launch.phase("load_model")
    time.sleep(init_s)  # stands in for loading weights
    launch.phase("warmup")
    launch.ready({"rank": rank, "device": os.environ["CUDA_VISIBLE_DEVICES"]})
    launch.wait_for_stop()


async def main() -> None:
    specs = [
        launch.ProcessSpec(
            "tp_workers:worker",
            name=f"worker-{rank}",
            kwargs={"rank": rank, "init_s": 1.0},
            env={"CUDA_VISIBLE_DEVICES": str(rank)},  # applied inside the child
        )
        for rank in range(4)
    ]
    started = time.monotonic()
    async with launch.open_group(specs, name="tp") as group:
        print(f"all READY in {time.monotonic() - started:.2f}s (each child inits for 1.00s)")
        for child in group.children:
            print(f"  {child.name}: pid {child.pid}, payload {child.payload}")
    print("all stopped:", [child.exitcode for child in group.children])


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "trio")
