"""Runs a real group and holds it: the signal tests kill or interrupt this process.

usage: hold_group.py BACKEND INIT_SECONDS [--end-worker-threads]
Prints "starting", then one JSON line with the children's pids once all are READY (one
child per start method), then sleeps. With ``--end-worker-threads``, before that line it
ends the worker threads that spawned the children (as their idle timeout would, 10 s
later) and waits until they are gone; the line then names the threads left.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import anyio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import launch
from launch._spec import START_METHODS


def shorten_trio_idle_timeout() -> None:
    """trio's worker threads retire after 0.05 s idle instead of 10 s."""
    import trio._core._thread_cache as cache

    cache.IDLE_TIMEOUT = 0.05  # type: ignore[assignment]


async def end_worker_threads(backend: str) -> list[str]:
    """End every idle worker thread (those that spawned the children among them) and
    wait, bounded, until they are gone: trio's retire by themselves (their idle timeout
    is shortened), anyio's asyncio workers only when pruned, which ``stop()`` does.

    Returns:
        The names of the threads left besides the main thread.
    """
    workers: list[threading.Thread] = []
    if backend == "trio":
        import trio._core._thread_cache as cache

        workers += [w._thread for w in cache.THREAD_CACHE._idle_workers]
    else:
        from anyio._backends._asyncio import WorkerThread

        for worker in [t for t in threading.enumerate() if isinstance(t, WorkerThread)]:
            worker.stop()  # what anyio's pruning of an idle worker does
            workers.append(worker)
    with anyio.fail_after(10):
        while any(t.is_alive() for t in workers):
            await anyio.sleep(0.02)
    return [t.name for t in threading.enumerate() if t is not threading.main_thread()]


async def main(backend: str, init: float, end_threads: bool) -> None:
    specs = [
        launch.ProcessSpec("targets:serve", name=m, kwargs={"init": init}, start_method=m)  # type: ignore[arg-type]
        for m in START_METHODS
    ]
    print("starting", flush=True)
    async with launch.open_group(specs, name="held") as group:
        import launch._start.forkserver as fs

        info: dict[str, object] = {
            "children": {c.name: c.pid for c in group.children},
            "forkserver": fs.FORKSERVER.pid,
        }
        if end_threads:
            info["threads_left"] = await end_worker_threads(backend)
        print(json.dumps(info), flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    backend, end_threads = sys.argv[1], "--end-worker-threads" in sys.argv[3:]
    if end_threads and backend == "trio":
        shorten_trio_idle_timeout()
    anyio.run(main, backend, float(sys.argv[2]), end_threads, backend=backend)
