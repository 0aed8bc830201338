"""``vllm serve`` against ``launch vllm serve``: time to /health and to the first completion.

For each layout (``tp4``: TP=4; ``dp2tp2``: DP=2 x TP=2) and command, in a fresh
process per trial, interleaved (stock, launch, stock, launch, ...) so that drift hits
both alike, after one warm-up round that is discarded:

- health: the command's start until ``GET /health`` answers 200;
- first: the command's start until one ``/v1/completions`` (1 token) has returned;
- stop: SIGTERM until the command has exited, and what is left 0.1 s and 3 s after;
- with ``--fail``: rank 1 of the workers raises at the end of ``load_model`` (weights on
  its GPU): the worker's failure until the command exits, its exit code, the last line it
  printed, and the processes and GPU memory left 0.1 s and 3 s after its exit.

``--cold`` drops the model files from the page cache (``posix_fadvise(DONTNEED)``)
before every trial; ``--make-8b`` writes a random-weight Llama of 8B shape (~16 GB bf16).

On the GPU host (vLLM 0.26.0 there; recipe in docs/development/benchmarks.md)::

    python tools/vllm_serve_compare.py --model /tmp/llama-rand --layouts tp4,dp2tp2 \\
        --repeats 3 --fail --out serve-small.json
    python tools/vllm_serve_compare.py --make-8b /tmp/llama-8b --model /tmp/llama-8b \\
        --repeats 3 --cold --out serve-8b-cold.json

``--dry-run`` runs the same driver on a CPU-only machine (vLLM's CPU build, the stand-in
worker of ``tests/vllm``, a tiny Llama; layouts ``tp2`` and ``dp2``): the driver's own
check, not a measurement. Needs vllm, psutil, transformers (to make a model) and, on
GPUs, nvidia-smi. Not part of the package.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LAYOUTS = {
    "tp4": ["--tensor-parallel-size", "4"],
    "dp2tp2": ["--data-parallel-size", "2", "--tensor-parallel-size", "2"],
    "tp2": ["--tensor-parallel-size", "2"],  # --dry-run
    "dp2": ["--data-parallel-size", "2"],  # --dry-run
}
COMMANDS = {
    "stock": [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"],
    "launch": [sys.executable, "-m", "launch", "vllm", "serve"],
}


def make_model(path: Path, *, big: bool) -> Path:
    """A random-weight Llama at ``path``: ~0.2 B parameters, or 8B shape (``big``)."""
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape: dict[str, int] = (
        {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256}
        if big
        else {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
              "num_attention_heads": 16, "num_key_value_heads": 8, "vocab_size": 32000}
    )  # fmt: skip
    config = LlamaConfig(max_position_embeddings=2048, torch_dtype="bfloat16", **shape)
    torch.manual_seed(0)
    with torch.device("meta" if big else "cpu"):
        model = LlamaForCausalLM(config)
    if big:  # random bf16 weights, never a float32 copy of 8B parameters
        model = model.to(torch.bfloat16).to_empty(device="cpu")
        for param in model.parameters():
            torch.nn.init.normal_(param, std=0.02)
    model.to(torch.bfloat16).save_pretrained(path, max_shard_size="5GB")
    return path


def drop_page_cache(model: Path) -> None:
    """Evict the model's files from the page cache (clean pages; no root needed)."""
    for path in model.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def gpu_memory_used_mib() -> list[int]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=False, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [int(x) for x in out.stdout.split()] if out.returncode == 0 else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()
        status: int = response.status
        return status


def tree_of(pid: int, seen: set[int]) -> None:
    import psutil

    try:
        seen.update(p.pid for p in psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        pass


def alive(pids: set[int]) -> list[int]:
    import psutil

    left = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(
                proc.cmdline()
            ):
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


def leftovers(pids: set[int], exited: float) -> dict[str, Any]:
    """Processes and GPU memory left 0.1 s and 3 s after ``exited``."""
    result: dict[str, Any] = {}
    for label, at in (("0.1s", 0.1), ("3s", 3.0)):
        time.sleep(max(0.0, exited + at - time.monotonic()))
        result[f"procs_{label}"] = len(alive(pids))
        result[f"gpu_mib_{label}"] = gpu_memory_used_mib()
    return result


def trial(
    command: str, layout: str, model: Path, extra: list[str], *, fail: bool, timeout: float
) -> dict[str, Any]:
    """One start of ``command`` with ``layout``; the figures of the module docstring."""
    port = free_port()
    stamp = Path(tempfile.mkdtemp()) / "failed-at"
    env = dict(os.environ, LAUNCH_FAIL_STAMP=str(stamp))
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    if fail:
        env["LAUNCH_FAIL_RANK"] = "1"
    argv = [*COMMANDS[command], str(model), "--port", str(port), "--host", "127.0.0.1",
            "--served-model-name", "m", *LAYOUTS[layout], *extra]  # fmt: skip
    result: dict[str, Any] = {"command": command, "layout": layout, "fail": fail}
    seen: set[int] = set()
    began = time.monotonic()
    log = (stamp.parent / "stderr").open("w+")  # a file: a full pipe would stall the server
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        while proc.poll() is None and time.monotonic() - began < timeout:
            tree_of(proc.pid, seen)
            if not fail:
                try:
                    if http(f"{base}/health", timeout=1) == 200:
                        break
                except OSError:
                    pass
            time.sleep(0.1)
        if fail:
            try:
                proc.wait(max(1.0, timeout - (time.monotonic() - began)))
            except subprocess.TimeoutExpired:
                result["timed_out"] = True
                return result
            exited = time.monotonic()
            proc.wait()
            log.seek(0)
            stderr = log.read()
            lines = [line for line in stderr.splitlines() if line.strip(" |+-")]
            result["exit_code"] = proc.returncode
            result["last_line"] = lines[-1][:200] if lines else ""
            if stamp.exists():  # the worker writes time.time()
                result["failure_to_exit_s"] = (
                    time.time() - float(stamp.read_text()) - (time.monotonic() - exited)
                )
            result.update(leftovers(seen, exited))
            return result
        result["health_s"] = time.monotonic() - began
        body = {"model": "m", "prompt": "Hello", "max_tokens": 1}
        if "--skip-tokenizer-init" in extra:
            body["prompt"] = [5, 6]  # type: ignore[assignment]
        http(f"{base}/v1/completions", body, timeout=120)
        result["first_s"] = time.monotonic() - began
        tree_of(proc.pid, seen)
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        exited = time.monotonic()
        result["stop_s"] = exited - stopping
        result["stop_exit_code"] = proc.returncode
        result.update(leftovers(seen, exited))
        return result
    finally:
        log.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in alive(seen):  # never leave a trial's process behind for the next one
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def summarize(results: list[dict[str, Any]]) -> str:
    lines = ["| layout | command | health (median) | first completion | stop | left 0.1 s / 3 s |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        if not r["fail"] and not r.get("warmup"):
            groups.setdefault((r["layout"], r["command"]), []).append(r)
    for (layout, command), runs in sorted(groups.items()):
        med = {k: statistics.median(r[k] for r in runs) for k in ("health_s", "first_s", "stop_s")}
        left = f"{max(r['procs_0.1s'] for r in runs)} / {max(r['procs_3s'] for r in runs)}"
        lines.append(
            f"| {layout} | {command} | {med['health_s']:.2f} s | {med['first_s']:.2f} s | "
            f"{med['stop_s']:.2f} s | {left} |"
        )
    for layout in sorted({layout for layout, _ in groups}):
        stock, ours = groups.get((layout, "stock")), groups.get((layout, "launch"))
        if stock and ours:
            ratio = statistics.median(r["first_s"] for r in ours) / statistics.median(
                r["first_s"] for r in stock
            )
            lines.append(f"\n{layout}: launch / stock, first completion: {ratio:.2f}x")
    for r in results:
        if r["fail"]:
            lines.append(
                f"\nfail {r['layout']} {r['command']}: exit {r.get('exit_code')}, "
                f"failure->exit {r.get('failure_to_exit_s', float('nan')):.2f} s, left "
                f"{r.get('procs_0.1s')}/{r.get('procs_3s')} procs, GPU MiB "
                f"{r.get('gpu_mib_0.1s')} / {r.get('gpu_mib_3s')}; last line: {r.get('last_line')}"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(tempfile.gettempdir()) / "llama-rand")
    parser.add_argument("--make-8b", type=Path, help="write an 8B-shape random Llama here")
    parser.add_argument("--layouts", default="tp4,dp2tp2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fail", action="store_true", help="also inject a worker failure")
    parser.add_argument("--cold", action="store_true", help="drop the model's page cache first")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="CPU build, stand-in worker")
    args = parser.parse_args()

    extra = ["--enforce-eager"]
    if args.dry_run:
        sys.path.insert(0, str(ROOT / "tests" / "vllm"))
        from standin_worker import tiny_llama

        if not (args.model / "config.json").exists():
            tiny_llama(args.model)
        if args.layouts == "tp4,dp2tp2":
            args.layouts = "tp2,dp2"
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "tests" / "vllm"), os.environ.get("PYTHONPATH", "")]
        )
        extra += ["--skip-tokenizer-init", "--max-model-len", "128", "--no-enable-prefix-caching",
                  "--worker-cls", "standin_worker.StandInWorker"]  # fmt: skip
        # TP=2: worker rank 1 fails; DP=2 (one worker per engine): engine 1's worker
        standin = {"tp2": {"fail_rank": 1}, "dp2": {"fail_dp_rank": 1}}
        fail_extra = {
            layout: ["--additional-config", json.dumps({"standin": options})]
            for layout, options in standin.items()
        }
    else:
        if args.make_8b:
            make_model(args.make_8b, big=True)
        else:
            make_model(args.model, big=False)
        failing = ["--worker-cls", "vllm_failing_worker.FailingWorker"]  # rank 1 of each engine
        fail_extra = {layout: failing for layout in LAYOUTS}
    layouts = args.layouts.split(",")
    results: list[dict[str, Any]] = []
    for round_ in range(args.repeats + 1):  # round 0: warm-up, discarded
        for layout in layouts:
            for command in ("stock", "launch") if round_ % 2 == 0 else ("launch", "stock"):
                if args.cold:
                    drop_page_cache(args.model)
                r = trial(command, layout, args.model, extra, fail=False, timeout=args.timeout)
                r["warmup"] = round_ == 0
                print(json.dumps(r), flush=True)
                results.append(r)
    if args.fail:
        for layout in layouts:
            for command in ("stock", "launch"):
                r = trial(
                    command, layout, args.model, extra + fail_extra[layout], fail=True,
                    timeout=args.timeout,
                )  # fmt: skip
                print(json.dumps(r), flush=True)
                results.append(r)
    print(summarize(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
