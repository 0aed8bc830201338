"""Child side of the bench: one startup, run the same way under every strategy.

Standard library only until the model needs more (torch): the children of every
strategy pay the same imports.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

LAUNCH_TARGET = "launch.bench._child:launch_entry"


def work(seconds: float, kind: str) -> None:
    """Spend ``seconds``: asleep (``"sleep"``) or burning CPU (``"spin"``)."""
    if seconds <= 0:
        return
    if kind == "spin":
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
    else:
        time.sleep(seconds)


def _no_phase(name: str) -> None:
    pass


def startup(model: str, params: dict[str, Any], on_phase: Callable[[str], None]) -> dict[str, Any]:
    """The child's startup for ``model``; returns what READY carries."""
    if "pid_file" in params:
        with open(params["pid_file"], "w") as pid_file:
            pid_file.write(str(os.getpid()))
    if model == "synthetic":
        config = params["config"]  # unpickling it imported its (slow) module already
        if "read_file" in params:  # its weights shard: page cache or disk
            on_phase("load weights")
            with open(params["read_file"], "rb", buffering=0) as shard:
                while shard.read(8 << 20):
                    pass
        on_phase("init")
        crash_after = params.get("crash_after_s")
        if crash_after is not None:
            work(crash_after, config.work)
            with open(params["stamp"], "w") as stamp:
                stamp.write(repr(time.monotonic()))
            raise RuntimeError("injected failure during init (launch bench teardown)")
        work(params.get("init_s", config.init_s), config.work)
        return {"pid": os.getpid()}
    from launch.integrations.torch import join_process_group

    return join_process_group(
        rank=params["rank"],
        world_size=params["world_size"],
        init_method=params["init_method"],
        backend=params["backend"],
        timeout_s=params.get("timeout_s", 120.0),
        on_phase=on_phase,
    )


def _leave(model: str) -> None:
    if model != "synthetic":
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def launch_entry(model: str, params: dict[str, Any]) -> None:
    """Target of the launch strategies."""
    from _launch_child._api import phase, ready, wait_for_stop

    ready(startup(model, params, phase))
    wait_for_stop()
    _leave(model)


def mp_entry(conn: Any, model: str, params: dict[str, Any]) -> None:
    """Target of the multiprocessing baselines: READY over a Pipe, then wait for stop.

    A parent that has stopped listening (it was interrupted, or gave up on this trial)
    ends the child quietly: there is no one left to report to.
    """
    try:
        info = startup(model, params, _no_phase)
    except Exception:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))  # the parent reports it
        raise SystemExit(1) from None
    try:
        conn.send(("ready", info))
        conn.recv()  # the stop message, or EOF when the parent closes its end
    except (EOFError, OSError):
        pass
    _leave(model)
