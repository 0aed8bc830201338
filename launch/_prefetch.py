"""Reading a model directory's weights and config files into the OS page cache,
overlapped with spawning the children that will load them."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

WEIGHT_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.gguf",
    "*.json",
    "*.model",
    "*.tiktoken",
    "*.txt",
)
CHUNK = 8 * 1024 * 1024


@dataclass
class PrefetchStats:
    """What a prefetch did: files and bytes read, when, or why it was skipped.

    Attributes:
        path: the directory asked for.
        files: how many files were to be read.
        bytes_read: bytes read so far.
        started_at: when it started (``time.monotonic()``).
        finished_at: when it ended, None while it runs.
        skipped: why nothing was read (not a local directory, no such files), or None.
        cancelled: True if its task was cancelled before every file was read.
        done: the files read completely.
    """

    path: str
    files: int = 0
    bytes_read: int = 0
    started_at: float = 0.0
    finished_at: float | None = None
    skipped: str | None = None
    cancelled: bool = False
    done: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if self.skipped:
            return f"prefetch {self.path}: skipped ({self.skipped})"
        took = (self.finished_at or time.monotonic()) - self.started_at
        state = "cancelled after" if self.cancelled else "read"
        return (
            f"prefetch {self.path}: {state} {self.bytes_read / 2**20:.0f} MiB "
            f"in {len(self.done)}/{self.files} files, {took:.2f}s"
        )


def weight_files(path: Path, patterns: tuple[str, ...] = WEIGHT_PATTERNS) -> list[Path]:
    """The files a model load reads: weights, configs, tokenizer files (top level and one
    folder down), symlinks resolved (a hub cache's snapshot links to its blobs)."""
    found: dict[Path, None] = {}
    for pattern in patterns:
        for match in (*path.glob(pattern), *path.glob(f"*/{pattern}")):
            real = match.resolve()
            if real.is_file():
                found[real] = None
    return sorted(found, key=lambda p: -p.stat().st_size)  # big shards first


def _read(path: Path, stop: threading.Event) -> int:
    """Read ``path`` through (or until ``stop``); returns the bytes read."""
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        buffer = bytearray(CHUNK)
        with open(fd, "rb", buffering=0, closefd=False) as file:
            while not stop.is_set():
                count = file.readinto(buffer)
                if not count:
                    break
                total += count
    finally:
        os.close(fd)
    return total


async def prefetch_weights(
    path: str | os.PathLike[str],
    *,
    max_parallel: int = 4,
    patterns: tuple[str, ...] = WEIGHT_PATTERNS,
) -> PrefetchStats:
    """Read a local model directory's files into the page cache, ``max_parallel`` at a time.

    Run it as a task beside the spawn (``tg.start_soon(prefetch_weights, path)``, or
    ``PipelineSpec(prefetch=[path])``): the children's weight loads then read from
    memory. Cancelled with its task group; the reading threads stop within one chunk
    (8 MiB). A path that is not a local directory (a hub model id) or holds no such
    files is skipped, with the reason in the returned stats.

    Args:
        path: the model directory; files at its top level and one folder down are read,
            symlinks resolved, biggest first.
        max_parallel: how many files are read at once, each in a worker thread.
        patterns: which files: weights, configs and tokenizer files by default.

    Returns:
        What was read, or why nothing was.

    Raises:
        ValueError: ``max_parallel`` is below 1.
        ExceptionGroup: of the ``OSError`` of a file that could not be read (a pipeline's
            own prefetch reports it in its stats instead).
    """
    if max_parallel < 1:
        raise ValueError(f"prefetch_weights: max_parallel must be >= 1, got {max_parallel}")
    stats = PrefetchStats(str(path), started_at=time.monotonic())
    root = Path(path)
    if not root.is_dir():
        stats.skipped = "not a local directory"
        return stats
    files = await anyio.to_thread.run_sync(weight_files, root, patterns)
    if not files:
        stats.skipped = "no weight, config or tokenizer files"
        return stats
    stats.files = len(files)
    limiter = anyio.CapacityLimiter(max_parallel)
    stop = threading.Event()

    async def read(file: Path) -> None:
        async with limiter:
            count = await anyio.to_thread.run_sync(_read, file, stop, abandon_on_cancel=True)
            stats.bytes_read += count  # after the await: no update lost to another task
            stats.done.append(str(file))

    try:
        async with anyio.create_task_group() as tg:
            for file in files:
                tg.start_soon(read, file)
    except BaseException:
        stats.cancelled = True
        raise
    finally:
        stop.set()
        stats.finished_at = time.monotonic()
    return stats
