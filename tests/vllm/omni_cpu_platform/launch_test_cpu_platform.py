"""vLLM's CPU platform for the vllm 0.22.1 CUDA wheel on a machine without a GPU (``nox -s
omni``): the wheel's own detection finds neither CUDA nor a CPU build and leaves vLLM on
``UnspecifiedPlatform``. Registered through vLLM's platform plugin entry point group
(``vllm.platform_plugins``) by the dist-info next to this file; on ``PYTHONPATH`` only
in that session."""


def cpu() -> str:
    return "vllm.platforms.cpu.CpuPlatform"
