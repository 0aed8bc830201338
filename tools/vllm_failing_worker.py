"""vLLM's own GPU worker, failing on purpose after its weights are on the GPU: rank
``$LAUNCH_FAIL_RANK`` raises at the end of ``load_model``. For tools/vllm_gpu_startup.py."""

from __future__ import annotations

import os
import time

from vllm.v1.worker.gpu_worker import Worker


class FailingWorker(Worker):  # type: ignore[misc]
    def load_model(self, *args: object, **kwargs: object) -> None:
        super().load_model(*args, **kwargs)
        if str(self.rank) == os.environ.get("LAUNCH_FAIL_RANK"):
            stamp = os.environ.get("LAUNCH_FAIL_STAMP")
            if stamp:
                with open(stamp, "w") as out:
                    out.write(repr(time.time()))
            raise RuntimeError(f"rank {self.rank}: weights shard is corrupt (injected failure)")
