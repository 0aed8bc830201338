"""launch: a structured-concurrency launch layer for multi-process inference engines.

Start a tree of processes concurrently, wait until each says READY, supervise them,
and tear every one down, fast and completely, with the root cause in hand.

``import launch`` is cheap: the names that need anyio load on first use, so a child
process that only calls ``launch.ready()`` never imports anyio or trio.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from _launch_child._api import phase, ready, stop_requested, wait_for_stop

from ._errors import (
    ChildCrashed,
    ChildDied,
    ChildFailed,
    DeviceLockError,
    DeviceLockTimeout,
    LaunchFailed,
    ReadyTimeout,
    SpawnFailed,
)
from ._pipeline_spec import PipelineSpec, StageSpec
from ._spec import ProcessSpec, ShutdownPolicy, StartMethod

__version__ = "0.1.0"

logging.getLogger("launch").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from ._blocking import GroupHandle, PipelineHandle, start_group, start_pipeline
    from ._child import Child, ChildState, ChildTimes
    from ._config import ConfigError, load_pipeline
    from ._group import Group, open_group
    from ._pipeline import Pipeline, open_pipeline
    from ._prefetch import PrefetchStats, prefetch_weights
    from ._preload import Preload, preload_modules
    from ._start.forkserver import ForkserverError, prewarm
    from ._teardown import Unreaped
    from ._timeline import Slice, Timeline, Track

_LAZY = {
    "GroupHandle": "._blocking",
    "PipelineHandle": "._blocking",
    "start_group": "._blocking",
    "start_pipeline": "._blocking",
    "ConfigError": "._config",
    "load_pipeline": "._config",
    "Child": "._child",
    "ChildState": "._child",
    "ChildTimes": "._child",
    "Group": "._group",
    "open_group": "._group",
    "Pipeline": "._pipeline",
    "open_pipeline": "._pipeline",
    "prewarm": "._start.forkserver",
    "PrefetchStats": "._prefetch",
    "prefetch_weights": "._prefetch",
    "Preload": "._preload",
    "preload_modules": "._preload",
    "ForkserverError": "._start.forkserver",
    "Unreaped": "._teardown",
    "Slice": "._timeline",
    "Timeline": "._timeline",
    "Track": "._timeline",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'launch' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Child",
    "ChildCrashed",
    "ChildDied",
    "ChildFailed",
    "ChildState",
    "ConfigError",
    "DeviceLockError",
    "DeviceLockTimeout",
    "ChildTimes",
    "ForkserverError",
    "Group",
    "GroupHandle",
    "LaunchFailed",
    "Pipeline",
    "PipelineHandle",
    "PipelineSpec",
    "Preload",
    "PrefetchStats",
    "ProcessSpec",
    "ReadyTimeout",
    "ShutdownPolicy",
    "Slice",
    "SpawnFailed",
    "StageSpec",
    "StartMethod",
    "Timeline",
    "Track",
    "Unreaped",
    "load_pipeline",
    "open_group",
    "open_pipeline",
    "phase",
    "prefetch_weights",
    "preload_modules",
    "prewarm",
    "ready",
    "start_group",
    "start_pipeline",
    "stop_requested",
    "wait_for_stop",
]
