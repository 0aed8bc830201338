"""A Ray driver for the driver-death test: it gets SIGKILLed with its children running.

usage: ray_driver.py BACKEND ADDRESS

Connects to the Ray cluster at ADDRESS, places one ``with_grandchild`` child on
``node_a`` and one on ``node_b``, and once both are READY prints ``{"pids": [...],
"grandchildren": [...], "hosts": [...]}`` (one JSON line), then sleeps until killed.
"""

from __future__ import annotations

import json
import os
import sys

import anyio

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # ray_targets, ray_helpers; targets, procs

from ray_helpers import GROUP, Remote, spec  # noqa: E402

from launch.integrations.ray import RayPlacement, open_placement  # noqa: E402


async def main(address: str) -> None:
    import ray

    ray.init(address=address, log_to_driver=False)
    placement = RayPlacement([{"CPU": 1, "node_a": 0.5}, {"CPU": 1, "node_b": 0.5}])
    specs = [spec("ray_targets:with_grandchild", f"w{i}") for i in range(2)]
    async with open_placement(placement) as placed:
        remotes = [Remote(await placed.spawn(i, s, GROUP), s) for i, s in enumerate(specs)]
        payloads = [await r.payload() for r in remotes]
        print(
            json.dumps(
                {
                    "pids": [p["pid"] for p in payloads],
                    "grandchildren": [p["grandchild"] for p in payloads],
                }
            ),
            flush=True,
        )
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[2], backend=sys.argv[1])
