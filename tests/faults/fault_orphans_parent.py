"""A real launch parent for the orphan and fd fault tests: they kill it, or read what it
prints (one JSON object per line).

usage: fault_orphans_parent.py BACKEND MODE

- ``hold``: holds over 1024 fds (so every fd launch opens is above 1023) and 64 MiB of
  memory (so that its forked children are large: their guards start as fresh
  interpreters, the others' as forks), starts a group of one ``family`` child per start
  method and mode (``serve``, ``gil``), prints ``{"children": {name: pid}, "payloads":
  {name: {...}}, "fd": n}`` once all are READY, then sleeps until it is killed.
- ``stop``: the same, then leaves the block and prints ``{"exitcodes": {name: code},
  "teardown_s": seconds}``.
- ``emfile``: with every fd under a lowered soft RLIMIT_NOFILE in use, opens a group per
  start method and prints ``{"failures": {method: [type, text]}}``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import anyio

import launch
from launch._spec import START_METHODS

HELD_FDS = 1100
BALLAST = 64 << 20  # bytes, every page touched
SHUTDOWN = launch.ShutdownPolicy(stop_timeout=2.0, term_timeout=0.5, kill_timeout=2.0)


def hold_fds() -> list[int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = HELD_FDS + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return [os.open(os.devnull, os.O_RDONLY) for _ in range(HELD_FDS)]


def emit(obj: object) -> None:
    print(json.dumps(obj), flush=True)


async def family(mode: str) -> None:
    held = hold_fds()
    ballast = b"\x01" * BALLAST  # noqa: F841 - held for the group's lifetime
    specs = [
        launch.ProcessSpec(
            "fault_orphans_targets:family",
            name=f"{method}-{kind}",
            kwargs={"mode": kind},
            start_method=method,  # type: ignore[arg-type]
        )
        for method in START_METHODS
        for kind in ("serve", "gil")
    ]
    async with launch.open_group(specs, name="family", shutdown=SHUTDOWN) as group:
        emit(
            {
                "children": {c.name: c.pid for c in group.children},
                "payloads": {c.name: c.payload for c in group.children},
                "fd": max(held),
            }
        )
        if mode == "hold":
            await anyio.sleep_forever()
        left = time.monotonic()
    emit(
        {
            "exitcodes": {c.name: c.exitcode for c in group.children},
            "teardown_s": time.monotonic() - left,
        }
    )


async def emfile() -> None:
    # Everything imported and the forkserver running first: only the spawns lack fds.
    warm = [launch.ProcessSpec("targets:serve", name=m, start_method=m) for m in START_METHODS]  # type: ignore[arg-type]
    async with launch.open_group(warm, name="warm"):
        pass
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    filler = []
    try:
        while True:
            filler.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    failures: dict[str, list[str]] = {}
    for method in START_METHODS:
        try:
            spec = launch.ProcessSpec("targets:serve", name="x", start_method=method)  # type: ignore[arg-type]
            async with launch.open_group([spec], name=method):
                pass
        except launch.LaunchFailed as exc:
            leaf = exc.first
            failures[method] = [type(leaf).__name__, str(leaf)]
        except BaseException as exc:  # the failure this test is about: not LaunchFailed
            failures[method] = [type(exc).__name__, repr(exc)[:300]]
    for fd in filler:
        os.close(fd)
    emit({"failures": failures})


if __name__ == "__main__":
    backend, mode = sys.argv[1], sys.argv[2]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # targets
    anyio.run(emfile if mode == "emfile" else (lambda: family(mode)), backend=backend)
