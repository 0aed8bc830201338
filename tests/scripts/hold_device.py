"""Holds a device lock with launch's own locking until stdin closes.

usage: hold_device.py LOCK_DIR DEVICE
Prints "held" once the lock is taken.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from launch._devicelock import acquire_device_locks


async def main(lock_dir: str, device: str) -> None:
    locks = await acquire_device_locks(
        [device], stage="holder", lock_dir=Path(lock_dir), timeout=10
    )
    print("held", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.read)
    locks.release()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
