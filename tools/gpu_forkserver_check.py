"""On a GPU machine: launch's forkserver guard rail against real CUDA.

1. ``prewarm(["torch"])`` is accepted (importing torch does not initialise CUDA), and a
   forked child then initialises CUDA itself and allocates on its GPU.
2. A preload module that calls ``torch.cuda.init()`` at import time is refused, with the
   error naming the module; nothing is forked.

Run from the repository root: ``python3 tools/gpu_forkserver_check.py``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio

import launch
from launch._start.forkserver import FORKSERVER

CUDA_AT_IMPORT = "import torch\ntorch.cuda.init()\n"


def gpu_child() -> None:
    import torch

    x = torch.ones(1024, device="cuda")
    launch.ready({"sum": float(x.sum()), "device": torch.cuda.get_device_name()})
    launch.wait_for_stop()


async def main() -> int:
    # the child imports this file as a module: tools/ is on sys.path (see below)
    spec = launch.ProcessSpec(
        "gpu_forkserver_check:gpu_child", name="gpu", start_method="forkserver"
    )
    launch.prewarm(["torch"])
    async with launch.open_group([spec], name="accepted") as group:
        print("preload torch: accepted; forked child:", group["gpu"].payload, flush=True)
    FORKSERVER.stop()
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "cuda_at_import.py").write_text(CUDA_AT_IMPORT)
        sys.path.insert(0, tmp)
        launch.prewarm(["cuda_at_import"])
        try:
            async with launch.open_group([spec], name="refused"):
                print("NOT refused: the guard rail missed a CUDA init", flush=True)
                return 1
        except launch.LaunchFailed as exc:
            print("preload cuda_at_import: refused:", exc.first.summary(), flush=True)
        finally:
            FORKSERVER.stop()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(anyio.run(main, backend="trio"))
