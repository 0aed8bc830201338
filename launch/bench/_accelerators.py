"""``launch bench --accelerators``: what the startup accelerators buy, each against the
same startup without it, at the focus N.

- forkserver: spawn; launch's forkserver started *cold* when the clock starts (its
  preload overlapping nothing but the spawn); and *warm* (prewarmed earlier).
- parent preload (synthetic model): the parent needs a module that takes ``import_s`` to
  import: import it, then start the group; or ``preload_modules`` overlapping the start.
- prefetch (synthetic model): each child reads a weights shard before its init, from
  disk (shards evicted from the page cache with ``POSIX_FADV_DONTNEED``), with
  ``prefetch_weights`` overlapping the spawn, or from a warm page cache.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ._strategies import ChildPlan, launch_specs

Trial = Callable[[], float]


def forkserver_trial(
    plans: Sequence[ChildPlan], preload: list[str], variant: str, timeout: float
) -> float:
    """Seconds to all READY: ``spawn``, ``cold`` (server started at t0) or ``warm``."""
    import anyio

    from .._group import open_group
    from .._start.forkserver import FORKSERVER, prewarm

    method = "spawn" if variant == "spawn" else "forkserver"
    specs = launch_specs(plans, method, timeout)
    if variant == "cold":
        FORKSERVER.stop()
    elif variant == "warm":
        prewarm(preload)
        FORKSERVER.wait_warm()

    async def main() -> float:
        t0 = time.monotonic()
        if variant == "cold":
            prewarm(preload)
        async with open_group(specs, name="bench"):
            return time.monotonic() - t0

    result: float = anyio.run(main, backend="trio")
    return result


def parent_preload_trial(
    plans: Sequence[ChildPlan], module: str, variant: str, timeout: float
) -> float:
    """Seconds until every child is READY *and* the parent has imported ``module``."""
    import anyio

    from .._group import open_group
    from .._preload import preload_modules

    specs = launch_specs(plans, "spawn", timeout)

    async def main() -> float:
        t0 = time.monotonic()
        if variant == "import first":
            importlib.import_module(module)
            async with open_group(specs, name="bench"):
                return time.monotonic() - t0
        async with (
            preload_modules([module]) as preload,
            open_group(specs, name="bench"),
        ):
            await preload.wait()
            return time.monotonic() - t0

    result: float = anyio.run(main, backend="trio")
    return result


def write_shards(directory: Path, count: int, size: int) -> list[Path]:
    """``count`` shard files of ``size`` bytes, flushed to disk (so they can be evicted)."""
    directory.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    shards = []
    for index in range(count):
        path = directory / f"model-{index:05d}-of-{count:05d}.safetensors"
        if not path.exists() or path.stat().st_size != size:
            with open(path, "wb") as out:
                for _ in range(size // len(block)):
                    out.write(block)
                out.write(block[: size % len(block)])
                out.flush()
                os.fsync(out.fileno())
        shards.append(path)
    return shards


def evict(paths: Sequence[Path]) -> None:
    """Drop the files' clean pages from the page cache (no root needed)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def prefetch_trial(
    plans: Sequence[ChildPlan], shards: list[Path], variant: str, timeout: float
) -> float:
    """Seconds to all READY when each child reads its shard: ``cold``, ``prefetch`` or
    ``warm``."""
    import anyio

    from .._group import open_group
    from .._prefetch import prefetch_weights

    with_shards = [
        replace(plan, params={**plan.params, "read_file": str(shards[i % len(shards)])})
        for i, plan in enumerate(plans)
    ]
    specs = launch_specs(with_shards, "spawn", timeout)
    if variant == "warm":
        for shard in shards:
            shard.read_bytes()
    else:
        evict(shards)

    async def main() -> float:
        t0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            if variant == "prefetch":
                tg.start_soon(prefetch_weights, shards[0].parent)
            async with open_group(specs, name="bench"):
                took = time.monotonic() - t0
            tg.cancel_scope.cancel()
        return took

    result: float = anyio.run(main, backend="trio")
    return result


FORKSERVER_VARIANTS = ("spawn", "cold", "warm")
PRELOAD_VARIANTS = ("import first", "preload_modules")
PREFETCH_VARIANTS = ("cold", "prefetch", "warm")
