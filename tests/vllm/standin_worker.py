"""A stand-in for vLLM's GPU worker (``worker_cls``): the CPU-only vLLM wheel has no
kernels to run a model, but everything around the worker is vLLM's own. It forms vLLM's
distributed environment (gloo), "loads" for ``load_s`` seconds, and can fail on purpose.

``additional_config={"standin": {"load_s": 0.5, "fail_rank": 1}}`` on the engine args.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from vllm.distributed import ensure_model_parallel_initialized, init_distributed_environment
from vllm.v1.worker.worker_base import WorkerBase


class StandInWorker(WorkerBase):  # type: ignore[misc]
    def _options(self) -> dict[str, Any]:
        extra = self.vllm_config.additional_config or {}
        options: dict[str, Any] = extra.get("standin", {})
        return options

    def init_device(self) -> None:
        init_distributed_environment(
            world_size=self.parallel_config.world_size,
            rank=self.rank,
            distributed_init_method=self.distributed_init_method,
            local_rank=self.local_rank,
            backend="gloo",
        )
        ensure_model_parallel_initialized(
            self.parallel_config.tensor_parallel_size,
            self.parallel_config.pipeline_parallel_size,
        )

    def load_model(self) -> None:
        options = self._options()
        time.sleep(options.get("load_s", 0.0))
        if options.get("fail_rank") == self.rank:
            if "stamp" in options:  # when it failed, for tools/vllm_failure_compare.py
                with open(options["stamp"], "w") as stamp:
                    stamp.write(repr(time.monotonic()))
            raise RuntimeError(f"weights shard {self.rank} is corrupt (stand-in failure)")

    def ping(self) -> dict[str, int]:
        return {"rank": self.rank, "pid": os.getpid()}


def tiny_llama(path: Path) -> Path:
    """Save a tiny random-weight Llama at ``path`` (no hub access); returns ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path
