"""A stand-in worker that writes what it sees of some environment variables to a file
(tests/vllm/test_omni_engine.py): a stage's ``runtime.env`` and device variable, as the
stage's worker process inherits them. ``additional_config={"standin": {"env_dump": path,
"env_keys": [...]}}``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from standin_worker import StandInWorker


class EnvDumpingWorker(StandInWorker):
    def load_model(self, *, load_dummy_weights: bool = False) -> None:
        options = self._options()
        seen = {key: os.environ.get(key) for key in options["env_keys"]}
        Path(options["env_dump"]).write_text(json.dumps(seen))
        super().load_model(load_dummy_weights=load_dummy_weights)
