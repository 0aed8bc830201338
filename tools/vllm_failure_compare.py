"""vLLM's mp executor against launch's, on the same TP=2 worker failure during init.

Runs each executor on a tiny random Llama with the stand-in worker of tests/vllm (rank 1
fails in load_model after ``--load-s``), and prints per executor: seconds from the
executor's construction to its error, seconds from the worker's failure to the error,
the first line of the error, and the worker processes still alive 0.1 s after it.

    VLLM_TARGET_DEVICE=cpu VLLM_CPU_OMP_THREADS_BIND=nobind \\
        python tools/vllm_failure_compare.py --repeats 3

Needs vllm (DEVELOPERS.md has the CPU recipe) and transformers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "vllm"))  # standin_worker; workers inherit it

from standin_worker import tiny_llama  # noqa: E402
from vllm_gpu_startup import descendants  # noqa: E402


def one(executor: str, model: Path, stamp: Path) -> dict[str, Any]:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    from launch.integrations.vllm import LaunchExecutor

    config = EngineArgs(
        model=str(model),
        skip_tokenizer_init=True,
        tensor_parallel_size=2,
        enforce_eager=True,
        max_model_len=128,
        worker_cls="standin_worker.StandInWorker",
        additional_config={"standin": {"fail_rank": 1, "stamp": str(stamp)}},
    ).create_engine_config()
    cls = LaunchExecutor if executor == "launch" else MultiprocExecutor
    before = descendants()
    began = time.monotonic()
    try:
        cls(config)
    except BaseException as exc:
        error_at = time.monotonic()
        message = str(exc).strip().splitlines()[0]
    else:
        raise RuntimeError("the injected failure did not happen")
    time.sleep(0.1)
    left = [pid for pid in descendants() if pid not in before]
    failed_at = float(stamp.read_text())
    return {
        "total": error_at - began,
        "after_failure": error_at - failed_at,
        "message": message,
        "left": len(left),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_llama(Path(tmp) / "tiny-llama")
        results: dict[str, list[dict[str, Any]]] = {"mp (vLLM)": [], "launch": []}
        for _ in range(args.repeats):
            for name in results:
                kind = "launch" if name == "launch" else "mp"
                results[name].append(one(kind, model, Path(tmp) / "failed_at"))
    print(f"\nTP=2, rank 1 fails in load_model; median of {args.repeats}")
    print(f"{'executor':<10} {'to error':>9} {'after failure':>14} {'left':>5}  error says")
    for name, runs in results.items():
        total = statistics.median(r["total"] for r in runs)
        after = statistics.median(r["after_failure"] for r in runs)
        left = max(r["left"] for r in runs)
        print(f"{name:<10} {total:>8.2f}s {after:>13.2f}s {left:>5}  {runs[0]['message'][:110]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
