"""On a GPU host: does NVML open ``/dev/nvidia-uvm``, does launch's forkserver guard
(``cuda_initialized``) then still let it fork, and can a child forked after NVML use
CUDA? Then ``cuInit`` in the parent: the guard must refuse. Prints one line per check."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _launch_child._forkserver import cuda_initialized


def uvm_open() -> bool:
    return any(
        os.readlink(f"/proc/self/fd/{fd}").startswith("/dev/nvidia-uvm")
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    )


def main() -> int:
    import pynvml  # nvidia-ml-py, as vLLM's platform probe uses it

    pynvml.nvmlInit()
    count = pynvml.nvmlDeviceGetCount()
    pynvml.nvmlShutdown()
    print(f"after NVML ({count} GPUs): uvm open {uvm_open()}, guard: {cuda_initialized()}")
    import torch

    pid = os.fork()
    if pid == 0:
        ok = 1
        try:
            x = torch.ones(1024, device="cuda")
            print(f"child forked after NVML: CUDA works, sum {float(x.sum())}", flush=True)
            ok = 0
        finally:
            os._exit(ok)
    _, status = os.waitpid(pid, 0)
    print(f"child exit status {os.waitstatus_to_exitcode(status)}")
    torch.cuda.init()
    print(f"after torch.cuda.init(): uvm open {uvm_open()}, guard: {cuda_initialized()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
