"""Stage targets for omni_pipeline.toml: stand-ins for a vLLM-Omni thinker, talker and
vocoder. Each reports its startup phases, says READY with where it listens, and serves
until launch stops it."""

from __future__ import annotations

import os
import time

import launch


def engine(*, role: str, rank: int = 0, load_s: float = 0.5, warmup_s: float = 0.2) -> None:
    launch.phase("load_weights")
    time.sleep(load_s)
    launch.phase("warmup")
    time.sleep(warmup_s)
    launch.ready(
        {
            "role": role,
            "rank": rank,
            "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "pid": os.getpid(),
        }
    )
    launch.wait_for_stop()
