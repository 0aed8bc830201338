"""Stand-in workers for Omni's stage process (tests/vllm/test_omni_process.py,
tools/omni_stage_compare.py): vLLM's stand-in worker, and one that kills its stage process
outright while "loading", so the stage dies between HELLO and READY without a traceback."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from standin_worker import StandInWorker


class StageKillingWorker(StandInWorker):
    def load_model(self, *, load_dummy_weights: bool = False) -> None:
        options: dict[str, Any] = self._options()
        time.sleep(options.get("load_s", 0.0))
        os.kill(os.getppid(), signal.SIGKILL)  # the stage process: no traceback, no goodbye
        time.sleep(60)  # vLLM's death watch ends this worker
