"""A vLLM-Omni-shaped pipeline built in Python (docs/pipelines.md).

The thinker's two ranks form a torch.distributed gloo group before READY (or, without
torch, the stand-in stages of omni_stages.py); the talker and the vocoder share device 2,
so the vocoder, which also starts after the talker, initializes once the talker is READY.

usage: python examples/omni_pipeline.py [trio|asyncio]
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile

import anyio

import launch
from launch.integrations.torch import process_group_specs


def engine(name: str, role: str, **kwargs: object) -> launch.ProcessSpec:
    return launch.ProcessSpec("omni_stages:engine", name=name, kwargs={"role": role, **kwargs})


if importlib.util.find_spec("torch") is not None:
    thinker = process_group_specs("thinker", 2, env={"OMP_NUM_THREADS": "1"})
else:
    thinker = [engine(f"thinker-{rank}", "thinker", rank=rank) for rank in range(2)]


def omni(lock_dir: str) -> launch.PipelineSpec:
    return launch.PipelineSpec(
        [
            launch.StageSpec("thinker", thinker, devices=(0, 1)),
            launch.StageSpec("talker", [engine("talker-0", "talker")], devices=(2,)),
            launch.StageSpec(
                "vocoder", [engine("vocoder-0", "vocoder")], devices=(2,), after=("talker",)
            ),
        ],
        name="omni",
        device_env="CUDA_VISIBLE_DEVICES",
        lock_dir=lock_dir,
    )


async def main() -> None:
    # a private lock directory, so the example never waits on a real deployment's devices
    with tempfile.TemporaryDirectory() as lock_dir:
        await run(omni(lock_dir))


async def run(pipe: launch.PipelineSpec) -> None:
    async with launch.open_pipeline(pipe) as running:
        for group in running:  # running["stage"] is that stage's Group
            for child in group:
                print(f"{group.name}/{child.name}: {child.payload}")
        talker, vocoder = running["talker"]["talker-0"], running["vocoder"]["vocoder-0"]
        assert talker.times.ready is not None and vocoder.times.spawn_requested is not None
        print(
            f"vocoder spawned {vocoder.times.spawn_requested - talker.times.ready:+.2f}s "
            "after the talker was READY"
        )
    print("all stopped:", [child.exitcode for child in running.children])


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "trio")
