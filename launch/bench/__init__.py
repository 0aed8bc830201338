"""``launch bench``: launch's startup and teardown against today's launch strategies.

Every strategy starts the same children (a child model: synthetic, torch or GPU) in the
same run, on the same machine; see ``docs/benchmarks.md``. The Python entry point is
:func:`run_bench`; the CLI is ``launch bench``.

Names load on first use: the bench's children import ``launch.bench._child`` and must
not pay for the driver's imports (asyncio, multiprocessing, the strategies).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._config import MODELS, BenchConfig
    from ._results import BenchResult
    from ._run import run_bench
    from ._strategies import BASELINES, LAUNCH_STRATEGIES, PEERS, STRATEGIES

_LAZY = {
    "MODELS": "._config",
    "BenchConfig": "._config",
    "BenchResult": "._results",
    "run_bench": "._run",
    "BASELINES": "._strategies",
    "LAUNCH_STRATEGIES": "._strategies",
    "PEERS": "._strategies",
    "STRATEGIES": "._strategies",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'launch.bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "BASELINES",
    "LAUNCH_STRATEGIES",
    "MODELS",
    "PEERS",
    "STRATEGIES",
    "BenchConfig",
    "BenchResult",
    "run_bench",
]
