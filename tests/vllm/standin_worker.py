"""A stand-in for vLLM's GPU worker (``worker_cls``): the CPU-only vLLM wheel has no
kernels to run a model, but everything around the worker is vLLM's own. It forms vLLM's
distributed environment (gloo), "loads" for ``load_s`` seconds, and can fail on purpose.

``additional_config={"standin": {"load_s": 0.5, "fail_rank": 1}}`` on the engine args
(``fail_dp_rank`` fails every worker of that data-parallel engine).
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

    def load_model(self, *, load_dummy_weights: bool = False) -> None:
        self._last: dict[str, int] = {}
        self._step: list[str] = []
        options = self._options()
        time.sleep(options.get("load_s", 0.0))
        dp_rank = getattr(self.parallel_config, "data_parallel_index", None)
        if options.get("fail_dp_rank") is not None and options["fail_dp_rank"] == dp_rank:
            if os.environ.get("LAUNCH_FAIL_STAMP"):
                with open(os.environ["LAUNCH_FAIL_STAMP"], "w") as stamp:
                    stamp.write(repr(time.time()))
            raise RuntimeError(f"engine {dp_rank}: weights are corrupt (stand-in failure)")
        if options.get("fail_rank") == self.rank:
            if "stamp" in options:  # when it failed, for tools/vllm_failure_compare.py
                with open(options["stamp"], "w") as stamp:
                    stamp.write(repr(time.monotonic()))
            if os.environ.get("LAUNCH_FAIL_STAMP"):  # wall clock, as tools/vllm_failing_worker
                with open(os.environ["LAUNCH_FAIL_STAMP"], "w") as stamp:
                    stamp.write(repr(time.time()))
            raise RuntimeError(f"weights shard {self.rank} is corrupt (stand-in failure)")

    def ping(self) -> dict[str, int]:
        return {"rank": self.rank, "pid": os.getpid()}

    # What the engine core asks of a worker during its own startup and its busy loop.
    # The stand-in is an attention-free "model": no KV cache, and each step samples the
    # token after the request's last one, so a caller can check what came back.

    def get_kv_cache_spec(self) -> dict[str, Any]:
        return {}

    def initialize_from_config(self, kv_cache_config: Any) -> None:
        pass

    def compile_or_warm_up_model(self) -> Any:
        from vllm.v1.worker.worker_base import CompilationTimes

        return CompilationTimes(language_model=0.0, encoder=0.0)

    def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    def execute_model(self, scheduler_output: Any) -> Any:
        for new in scheduler_output.scheduled_new_reqs:
            self._last[new.req_id] = new.prompt_token_ids[-1]
        self._step = list(scheduler_output.num_scheduled_tokens)
        for done in scheduler_output.finished_req_ids:
            self._last.pop(done, None)
        return None

    def sample_tokens(self, grammar_output: Any) -> Any:
        from vllm.v1.outputs import ModelRunnerOutput

        vocab = self.model_config.get_vocab_size()
        for req_id in self._step:
            self._last[req_id] = (self._last[req_id] + 1) % vocab
        return ModelRunnerOutput(
            req_ids=list(self._step),
            req_id_to_index={req_id: i for i, req_id in enumerate(self._step)},
            sampled_token_ids=[[self._last[req_id]] for req_id in self._step],
        )


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
