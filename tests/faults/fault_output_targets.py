"""Children for the output fault tests (standard library and launch's child API only)."""

from __future__ import annotations

import os
import sys
import time

from _launch_child._api import ready, stop_requested, wait_for_stop

# Three bytes ("x" then "é" in UTF-8): pieces of a fixed byte size end inside characters.
UNIT = "xé".encode()
END = "the end"


def chatty_forever(batch: int = 100, pause: float = 0.01) -> None:
    """READY, then about 1 MB/s of 100-byte lines on stdout until stopped."""
    ready()
    line = "y" * 90
    i = 0
    while not stop_requested():
        sys.stdout.write("".join(f"{i + n:08} {line}\n" for n in range(batch)))
        sys.stdout.flush()
        i += batch
        time.sleep(pause)


def no_newline(total: int, pause_every: int = 4 << 20, pause: float = 0.05) -> None:
    """READY, then ``total`` bytes without a newline (UNIT repeated), then END. It pauses
    after every ``pause_every`` bytes, so that the parent's loop gets to run meanwhile."""
    ready()
    block = UNIT * (1 << 18)  # 768 KiB
    written = since_pause = 0
    while written < total:
        size = min(len(block), total - written)
        data = memoryview(block)[:size]
        while data:
            data = data[os.write(1, data) :]
        written += size
        since_pause += size
        if since_pause >= pause_every:
            time.sleep(pause)
            since_pause = 0
    os.write(1, f"{END}\n".encode())
    wait_for_stop()
