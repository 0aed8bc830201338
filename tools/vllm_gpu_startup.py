"""vLLM engine startup on GPUs: the stock ``mp`` executor against launch's, side by side.

For each tensor-parallel size and executor, in a fresh process per trial (interleaved,
so drift hits both alike), a random-weight Llama is started with ``LLM(...)`` and asked
for one token:

- startup: ``LLM(...)`` construction until it returns (engine core, workers, weights,
  KV cache); first token: construction until the first token is back;
- with ``--fail``: rank 1 raises at the end of ``load_model`` (weights already on its
  GPU); we time construction to the error and the worker's failure to the error, keep
  the error's first line, and count, 0.1 s and 3 s after the error, the trial's
  processes still alive and the GPU memory still in use.

    python tools/vllm_gpu_startup.py --tp 2,4 --repeats 3 --fail --out results.json

Needs vllm (issue 7: 0.26.0 on the device machine, carried by tools/vllm_device_*.sh),
transformers to make the model, psutil and nvidia-smi. Not part of the package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BACKENDS = {"mp": "mp", "launch": "launch.integrations.vllm.LaunchExecutor"}


def make_model(path: Path) -> Path:
    """A random-weight Llama (~0.2 B parameters, bf16), no tokenizer, saved at ``path``."""
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    return path


def gpu_memory_used_mib() -> list[int]:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return [int(x) for x in out.stdout.split()] if out.returncode == 0 else []


def descendants() -> list[int]:
    import psutil

    alive = []
    for proc in psutil.Process().children(recursive=True):
        try:
            command = " ".join(proc.cmdline())
            if proc.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in command:
                alive.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def trial(backend: str, tp: int, model: str, fail: bool) -> dict[str, Any]:
    """One engine start in this process; returns the figures."""
    from vllm import LLM, SamplingParams

    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    stamp = Path(tempfile.mkdtemp()) / "failed_at"
    if fail:
        os.environ["LAUNCH_FAIL_RANK"] = "1"
        os.environ["LAUNCH_FAIL_STAMP"] = str(stamp)
    sys.path.insert(0, str(HERE))  # the workers import vllm_failing_worker from here
    options: dict[str, Any] = {
        "model": model,
        "skip_tokenizer_init": True,
        "tensor_parallel_size": tp,
        "distributed_executor_backend": BACKENDS[backend],
        "enforce_eager": True,
        "max_model_len": 2048,
        "gpu_memory_utilization": 0.5,
        # FlashInfer is a separate ~1 GB package the carried set leaves out
        "attention_backend": os.environ.get("LAUNCH_BENCH_ATTENTION", "FLASH_ATTN"),
    }
    if fail:
        options["worker_cls"] = "vllm_failing_worker.FailingWorker"
    result: dict[str, Any] = {"backend": backend, "tp": tp, "fail": fail}
    began = time.monotonic()
    try:
        llm = LLM(**options)
    except BaseException as exc:  # the error is the measurement
        error_at, error_wall = time.monotonic(), time.time()
        result["error_s"] = error_at - began
        result["error_type"] = type(exc).__name__
        result["error_first_line"] = (str(exc).strip().splitlines() or [""])[0][:300]
        result["error_names_cause"] = "weights shard is corrupt" in str(exc)
        if stamp.exists():
            result["after_failure_s"] = error_wall - float(stamp.read_text())
        for label, wait in (("0.1s", 0.1), ("3s", 2.9)):
            time.sleep(wait)
            result[f"procs_left_{label}"] = len(descendants())
            result[f"gpu_mib_{label}"] = gpu_memory_used_mib()
        return result
    result["startup_s"] = time.monotonic() - began
    out = llm.generate(
        [{"prompt_token_ids": [1, 450, 4996, 17354]}],
        SamplingParams(max_tokens=1, detokenize=False),
    )
    result["first_token_s"] = time.monotonic() - began
    result["token"] = list(out[0].outputs[0].token_ids)
    shutdown_began = time.monotonic()
    llm.llm_engine.engine_core.shutdown()
    result["shutdown_s"] = time.monotonic() - shutdown_began
    time.sleep(0.1)
    result["procs_left_after_shutdown"] = len(descendants())
    return result


def run_trial(backend: str, tp: int, model: Path, fail: bool, timeout: float) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--trial", backend,
               "--tp", str(tp), "--model", str(model)] + (["--fail"] if fail else [])  # fmt: skip
    began = time.monotonic()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"backend": backend, "tp": tp, "fail": fail, "timeout": timeout}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            result["process_s"] = time.monotonic() - began
            return result
    tail = (proc.stdout + proc.stderr)[-3000:]
    return {"backend": backend, "tp": tp, "fail": fail, "crashed": proc.returncode, "tail": tail}


def summarize(results: list[dict[str, Any]]) -> str:
    def med(rows: list[dict[str, Any]], key: str) -> str:
        values = [r[key] for r in rows if key in r]
        if not values:
            return "-"
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    lines = ["| TP | executor | startup s | first token s | shutdown s | runs |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    keys = sorted({(r["tp"], r["backend"]) for r in results if not r["fail"]})
    for tp, backend in keys:
        rows = [r for r in results if r["tp"] == tp and r["backend"] == backend and not r["fail"]]
        startup, first, down = (med(rows, k) for k in ("startup_s", "first_token_s", "shutdown_s"))
        lines.append(f"| {tp} | {backend} | {startup} | {first} | {down} | {len(rows)} |")
    failing = sorted({(r["tp"], r["backend"]) for r in results if r["fail"]})
    if failing:
        lines += [
            "",
            "| TP | executor | to error s | failure to error s | procs left 0.1 s / 3 s "
            "| GPU MiB in use 0.1 s / 3 s | error says |",
            "|---|---|---|---|---|---|---|",
        ]
        for tp, backend in failing:
            rows = [r for r in results if r["tp"] == tp and r["backend"] == backend and r["fail"]]
            moments = ("0.1s", "3s")
            left = "/".join(str(max(r.get(f"procs_left_{k}", -1) for r in rows)) for k in moments)
            gpu = " / ".join(str(rows[-1].get(f"gpu_mib_{k}")) for k in moments)
            last = rows[-1]
            says = last.get("error_first_line", last.get("tail", ""))[:120].replace("|", "/")
            to_error, after = med(rows, "error_s"), med(rows, "after_failure_s")
            lines.append(f"| {tp} | {backend} | {to_error} | {after} | {left} | {gpu} | {says} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", default="2,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fail", action="store_true", help="also inject a worker failure")
    parser.add_argument("--fail-repeats", type=int, default=2)
    parser.add_argument("--model", type=Path, default=Path(tempfile.gettempdir()) / "llama-rand")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--trial", choices=sorted(BACKENDS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        result = trial(args.trial, int(args.tp), str(args.model), args.fail)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    make_model(args.model)
    results: list[dict[str, Any]] = []
    sizes = [int(tp) for tp in args.tp.split(",")]
    plan = [(tp, False) for tp in sizes for _ in range(args.repeats)]
    if args.fail:
        plan += [(tp, True) for tp in sizes for _ in range(args.fail_repeats)]
    for index, (tp, fail) in enumerate(plan):
        for backend in BACKENDS:
            result = run_trial(backend, tp, args.model, fail, args.timeout)
            results.append(result)
            shown = {k: v for k, v in result.items() if k != "tail"}
            print(f"[{index + 1}/{len(plan)}] {json.dumps(shown)}", flush=True)
            if "tail" in result:
                print(result["tail"], flush=True)
            if args.out:
                args.out.write_text(json.dumps(results, indent=1))
    print(summarize(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
