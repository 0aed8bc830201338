"""``vllm serve`` against ``launch vllm serve``: time to /health and to the first completion.

For each layout (``tp4``: TP=4; ``dp2tp2``: DP=2 x TP=2) and side (``--sides``, default
``stock,launch``), in a fresh process per trial, interleaved (stock, launch, launch,
stock, ...) so that drift hits both alike, after one warm-up round that is discarded:

- health: the command's start until ``GET /health`` answers 200;
- first: the command's start until one ``/v1/completions`` (1 token) has returned;
- stop: SIGTERM until the command has exited, and what is left 0.1 s and 3 s after;
- with ``--kill``: once /health answers, SIGKILL of the command: how long until every
  process it had started is gone (each one's time, the slowest named; launch's forkserver
  counted apart), and GPU memory 0.1 s, 2 s and 3 s after;
- with ``--fail``: rank 1 of the workers raises at the end of ``load_model`` (weights on
  its GPU): the worker's failure until the command exits, its exit code, the last line it
  printed, and the processes and GPU memory left 0.1 s and 3 s after its exit;
- the timeline of each start: every line the command prints (stdout and stderr, its
  children's too), stamped with its time since the command's start as it is read, and
  the milestones found in them (``MILESTONES``: imports done, engine core start, weight
  load, KV cache, graphs, engine ready, application startup), with /health and the
  first completion; for launch also its own engine timeline (``--launch-trace``).

A trial that fails (the command exits early, times out, the completion errs) is kept with
its error and the tail of its output, and the run goes on. The results file is rewritten
after every trial, so a run cut short still leaves what it measured.

``--cold`` drops the model files from the page cache (``posix_fadvise(DONTNEED)``)
before every trial; ``--make-8b`` writes a random-weight Llama of 8B shape (~16 GB bf16).
Random models get a word-level ``tokenizer.json``. ``--chart PNG`` draws both starts side
by side, one bar per layout and side split at the milestones (the trial of median first
completion), from this run or from saved results (``--from a.json,b.json``, which only
summarises and draws).

On the GPU host (vLLM 0.26.0 there; recipe in docs/development/benchmarks.md)::

    python tools/vllm_serve_compare.py --model /tmp/llama-rand --layouts tp4,dp2tp2 \\
        --repeats 3 --fail --out serve-small.json
    python tools/vllm_serve_compare.py --make-8b /tmp/llama-8b --model /tmp/llama-8b \\
        --repeats 3 --cold --out serve-8b-cold.json
    python tools/vllm_serve_compare.py --from serve-small.json --chart serve-small.png

``--dry-run`` runs the same driver on a CPU-only machine (vLLM's CPU build, the stand-in
worker of ``tests/vllm``, a tiny Llama; layouts ``tp2`` and ``dp2``): the driver's own
check, not a measurement. Needs vllm, psutil, transformers (to make a model), matplotlib
(for ``--chart``) and, on GPUs, nvidia-smi. Not part of the package.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
# vLLM on the GPU host without FlashInfer (not in the carried wheel set)
GPU_ENV = {"VLLM_USE_FLASHINFER_SAMPLER": "0", "VLLM_ATTENTION_BACKEND": "FLASH_ATTN"}
# (name, pattern, which occurrence): a start's milestones in the command's output, in
# the order a start goes through them; "last" where every worker or engine logs it and
# the start waits for the slowest
MILESTONES: list[tuple[str, str, str]] = [
    ("engines spawned (no fork)", r"engines start as fresh interpreters", "first"),
    ("server imports done", r"vLLM API server version|non-default args", "first"),
    ("engine core start", r"Initializing a V1 LLM engine", "first"),
    ("workers' NCCL up", r"vLLM is using nccl|NCCL version", "last"),
    ("weights load start", r"Starting to load model", "first"),
    ("weights loaded", r"Loading weights took", "last"),
    ("model loaded", r"Model loading took", "last"),
    ("KV cache sized", r"Available KV cache memory|GPU KV cache size", "last"),
    ("graphs captured", r"Graph capturing finished", "last"),
    ("engine ready", r"init engine \(profile, create kv cache, warmup model\) took", "last"),
    ("app startup complete", r"Application startup complete", "first"),
]
TAIL_LINES = 40


def make_model(path: Path, *, big: bool) -> Path:
    """A random-weight Llama at ``path``: ~0.2 B parameters, or 8B shape (``big``), with
    a word-level tokenizer (vLLM 0.26 needs one; no sentencepiece on the GPU host)."""
    if not (path / "config.json").exists():
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
            with torch.no_grad():
                for param in model.parameters():
                    param.normal_(std=0.02)
        model.to(torch.bfloat16).save_pretrained(path, max_shard_size="5GB")
    if not (path / "tokenizer.json").exists():
        write_tokenizer(path, json.loads((path / "config.json").read_text())["vocab_size"])
    return path


def write_tokenizer(path: Path, vocab_size: int) -> None:
    """A word-level tokenizer of ``vocab_size`` tokens ("Hello" is one), saved beside the
    model as ``tokenizer.json`` and its config."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "Hello": 3}
    vocab.update({f"t{i}": i for i in range(4, vocab_size)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(path)


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


def stop_with_driver() -> None:
    """In the command's process before exec: SIGTERM when the driver dies (a driver
    killed by a timeout must not leave a server running; SIGTERM lets either side stop
    its engines)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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


def describe(pids: set[int]) -> dict[int, str]:
    """Each live process's name for a report: its title, or its command line's start."""
    import psutil

    names = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            cmdline = " ".join(proc.cmdline())
            names[pid] = proc.name() if "python" not in proc.name() else cmdline[:100]
        except psutil.NoSuchProcess:
            pass
    return names


def is_forkserver(label: str) -> bool:
    return "_forkserver" in label


def after_sigkill(
    proc: subprocess.Popen[bytes], pids: set[int], limit: float = 10.0
) -> dict[str, Any]:
    """SIGKILL the command, then follow every process it had started until all are gone
    (or ``limit``): when each went, and GPU memory 0.1 s, 2 s and 3 s after the kill."""
    names = describe(pids)
    killed = time.monotonic()
    proc.kill()
    proc.wait()
    gone: dict[int, float] = {}
    gpu: dict[str, list[int]] = {}
    checkpoints = [0.1, 2.0, 3.0]
    while time.monotonic() - killed < limit:
        now = time.monotonic() - killed
        live = set(alive(set(names)))
        for pid in set(names) - live - set(gone):
            gone[pid] = round(now, 3)
        if checkpoints and now >= checkpoints[0]:
            gpu[f"gpu_mib_{checkpoints.pop(0):g}s"] = gpu_memory_used_mib()
        if not live and not checkpoints:
            break
        time.sleep(0.02)
    left = sorted(set(names) - set(gone))
    slowest = sorted(gone, key=gone.__getitem__, reverse=True)[:4]
    others = [pid for pid in names if not is_forkserver(names[pid])]

    def all_gone(group: list[int]) -> float | None:
        return max((gone[pid] for pid in group), default=0.0) if set(group) <= set(gone) else None

    return {
        "kill_processes": len(names),
        "kill_all_gone_s": all_gone(list(names)),
        "kill_all_but_forkserver_gone_s": all_gone(others),
        "kill_left": [names[pid] for pid in left],
        "kill_slowest": [(names[pid], gone[pid]) for pid in slowest],
        **gpu,
    }  # fmt: skip


def leftovers(pids: set[int], exited: float) -> dict[str, Any]:
    """Processes and GPU memory left 0.1 s and 3 s after ``exited``."""
    result: dict[str, Any] = {}
    for label, at in (("0.1s", 0.1), ("3s", 3.0)):
        time.sleep(max(0.0, exited + at - time.monotonic()))
        result[f"procs_{label}"] = len(alive(pids))
        result[f"gpu_mib_{label}"] = gpu_memory_used_mib()
    return result


class Output:
    """The command's output file, read as it grows: each complete line stamped with the
    seconds since the command's start at the moment it was read (to within a poll)."""

    def __init__(self, path: Path, began: float) -> None:
        self.writer = path.open("wb")  # the command's; reading through another description
        self.file = path.open(errors="replace")
        self.began = began
        self.partial = ""
        self.lines: list[tuple[float, str]] = []

    def read(self) -> None:
        self.partial += self.file.read()
        *complete, self.partial = self.partial.split("\n")
        now = round(time.monotonic() - self.began, 2)
        self.lines.extend((now, line[:400]) for line in complete if line.strip())

    def close(self) -> None:
        self.read()
        if self.partial.strip():
            self.lines.append((round(time.monotonic() - self.began, 2), self.partial[:400]))
        self.file.close()
        self.writer.close()

    def tail(self) -> list[str]:
        return [line for _, line in self.lines[-TAIL_LINES:]]


def milestones(lines: list[tuple[float, str]]) -> dict[str, float]:
    """The ``MILESTONES`` found in stamped lines: name -> seconds since the start."""
    found: dict[str, float] = {}
    for name, pattern, which in MILESTONES:
        times = [t for t, line in lines if re.search(pattern, line)]
        if times:
            found[name] = times[0] if which == "first" else times[-1]
    return found


def read_launch_trace(path: Path, began: float) -> list[dict[str, Any]]:
    """launch's engine timeline (``--launch-trace``) as slices in seconds since the
    command's start (one clock: CLOCK_MONOTONIC), or [] if it was not written."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    origin = data.get("otherData", {}).get("launch", {}).get("origin")
    if origin is None:
        return []
    names = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in data.get("traceEvents", [])
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    return [
        {"track": names.get((e["pid"], e["tid"]), "?").split(" (pid")[0], "name": e["name"],
         "kind": e.get("cat"), "start": round(origin - began + e["ts"] / 1e6, 3),
         "end": round(origin - began + (e["ts"] + e["dur"]) / 1e6, 3)}
        for e in data.get("traceEvents", [])
        if e.get("ph") == "X" and e.get("cat") != "startup"
    ]  # fmt: skip


def trial(
    command: str,
    layout: str,
    model: Path,
    extra: list[str],
    *,
    fail: bool,
    timeout: float,
    env_extra: dict[str, str] | None = None,
    kill: bool = False,
    launch_args: list[str] | None = None,
) -> dict[str, Any]:
    """One start of ``command`` with ``layout``; the figures of the module docstring.
    Never raises for the command's own failure: ``error`` and ``output_tail`` say it."""
    port = free_port()
    work = Path(tempfile.mkdtemp())
    stamp = work / "failed-at"
    env = dict(os.environ, LAUNCH_FAIL_STAMP=str(stamp), **(env_extra or {}))
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    if fail:
        env["LAUNCH_FAIL_RANK"] = "1"
    trace = work / "launch-trace.json"
    own = ["--launch-trace", str(trace), *(launch_args or [])] if command == "launch" else []
    argv = [*COMMANDS[command], str(model), "--port", str(port), "--host", "127.0.0.1",
            "--served-model-name", "m", *LAYOUTS[layout], *extra, *own]  # fmt: skip
    result: dict[str, Any] = {"command": command, "layout": layout, "fail": fail, "kill": kill}
    if command == "launch" and launch_args:
        result["launch_args"] = launch_args
    seen: set[int] = set()
    began = time.monotonic()
    output = Output(work / "output", began)  # a file: a full pipe would stall the server
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=output.writer, stderr=subprocess.STDOUT,
        preexec_fn=stop_with_driver,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        while proc.poll() is None and time.monotonic() - began < timeout:
            tree_of(proc.pid, seen)
            output.read()
            if not fail:
                try:
                    if http(f"{base}/health", timeout=1) == 200:
                        break
                except OSError:
                    pass
            time.sleep(0.1)
        if proc.poll() is None and time.monotonic() - began >= timeout:
            result["error"] = f"timed out after {timeout:.0f} s"
            return result
        if fail:
            exited = time.monotonic()
            proc.wait()
            output.read()
            lines = [line for _, line in output.lines if line.strip(" |+-")]
            result["exit_code"] = proc.returncode
            result["last_line"] = lines[-1][:200] if lines else ""
            if stamp.exists():  # the worker writes time.time()
                result["failure_to_exit_s"] = (
                    time.time() - float(stamp.read_text()) - (time.monotonic() - exited)
                )
            result.update(leftovers(seen, exited))
            return result
        if proc.poll() is not None:
            result["error"] = f"exited with {proc.returncode} before /health answered"
            return result
        result["health_s"] = time.monotonic() - began
        if kill:
            time.sleep(0.5)  # a settled tree: every process it will have while serving
            tree_of(proc.pid, seen)
            result.update(after_sigkill(proc, seen))
            return result
        body: dict[str, Any] = {"model": "m", "prompt": "Hello", "max_tokens": 1}
        if "--skip-tokenizer-init" in extra:
            body["prompt"] = [5, 6]
        try:
            http(f"{base}/v1/completions", body, timeout=120)
        except OSError as exc:
            result["error"] = f"completion failed: {exc}"
            return result
        result["first_s"] = time.monotonic() - began
        tree_of(proc.pid, seen)
        output.read()
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            result["error"] = "did not exit within 60 s of SIGTERM"
            return result
        exited = time.monotonic()
        result["stop_s"] = exited - stopping
        result["stop_exit_code"] = proc.returncode
        result.update(leftovers(seen, exited))
        return result
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in alive(seen):  # never leave a trial's process behind for the next one
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        output.close()
        marks = milestones(output.lines)
        for key, name in (("health_s", "/health 200"), ("first_s", "first completion")):
            if key in result:
                marks[name] = round(result[key], 2)
        result["milestones"] = marks
        if command == "launch":
            result["launch_trace"] = read_launch_trace(trace, began)
        if "error" in result or fail:
            result["output_tail"] = output.tail()
        result["lines"] = output.lines


def ok_runs(
    results: list[dict[str, Any]], *, warmups: bool = False
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The measured (not warm-up unless ``warmups``, not --fail or --kill, not failed)
    trials by (layout, side): the command, and launch's own options after it."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        measured = not r["fail"] and not r.get("kill")
        if measured and (warmups or not r.get("warmup")) and "error" not in r:
            side = " ".join([r["command"], *r.get("launch_args", [])])
            groups.setdefault((r["layout"], side), []).append(r)
    return groups


def summarize(results: list[dict[str, Any]]) -> str:
    lines = ["| layout | command | runs | health (median) | first completion (median, range) "
             "| stop | left 0.1 s / 3 s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    groups = ok_runs(results)
    for (layout, command), runs in sorted(groups.items()):
        med = {k: statistics.median(r[k] for r in runs) for k in ("health_s", "first_s", "stop_s")}
        low, high = min(r["first_s"] for r in runs), max(r["first_s"] for r in runs)
        left = f"{max(r['procs_0.1s'] for r in runs)} / {max(r['procs_3s'] for r in runs)}"
        lines.append(
            f"| {layout} | {command} | {len(runs)} | {med['health_s']:.1f} s | "
            f"{med['first_s']:.1f} s ({low:.1f}-{high:.1f}) | {med['stop_s']:.2f} s | {left} |"
        )
    for layout in sorted({layout for layout, _ in groups}):
        stock, ours = groups.get((layout, "stock")), groups.get((layout, "launch"))
        if stock and ours:
            ratio = statistics.median(r["first_s"] for r in ours) / statistics.median(
                r["first_s"] for r in stock
            )
            lines.append(f"\n{layout}: launch / stock, first completion: {ratio:.2f}x")
    for r in results:
        if "error" in r:
            tail = "\n    ".join(r.get("output_tail", [])[-8:])
            lines.append(f"\nFAILED {r['layout']} {r['command']}: {r['error']}\n    {tail}")
        elif r.get("kill"):
            lines.append(
                f"\nkill {r['layout']} {r['command']}: {r['kill_processes']} processes; all gone "
                f"{r['kill_all_gone_s']} s, all but launch's forkserver "
                f"{r['kill_all_but_forkserver_gone_s']} s; left {r['kill_left']}; "
                f"slowest {r['kill_slowest']}; GPU MiB "
                f"{r.get('gpu_mib_0.1s')} / {r.get('gpu_mib_2s')} / {r.get('gpu_mib_3s')}"
            )
        elif r["fail"]:
            lines.append(
                f"\nfail {r['layout']} {r['command']}: exit {r.get('exit_code')}, "
                f"failure->exit {r.get('failure_to_exit_s', float('nan')):.2f} s, left "
                f"{r.get('procs_0.1s')}/{r.get('procs_3s')} procs, GPU MiB "
                f"{r.get('gpu_mib_0.1s')} / {r.get('gpu_mib_3s')}; last line: {r.get('last_line')}"
            )
    return "\n".join(lines)


def median_trial(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The trial whose first completion is the median (the lower one of an even count)."""
    ordered = sorted(runs, key=lambda r: r["first_s"])
    return ordered[(len(ordered) - 1) // 2]


def chart(results: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Both starts side by side: per layout and side, one bar from the command's start to
    the first completion, split where each milestone was reached (the median trial), and
    under launch's bar its engines' own timeline (boot, phases) from ``--launch-trace``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ok_runs(results) or ok_runs(results, warmups=True)  # a dry run: warm-ups only
    rows: list[tuple[str, list[tuple[str, float, float]], bool]] = []
    for (layout, command), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "stock")
    ):
        r = median_trial(runs)
        marks = sorted(r["milestones"].items(), key=lambda kv: kv[1])
        segments, previous = [], 0.0
        for name, at in marks:
            if at > previous:
                segments.append((name, previous, at))
                previous = at
        rows.append((f"{layout} {command} ({r['first_s']:.1f} s)", segments, True))
        engines: dict[str, list[tuple[str, float, float]]] = {}
        for piece in r.get("launch_trace", []):
            if piece["kind"] != "serve":
                engines.setdefault(piece["track"], []).append(
                    (f"launch: {piece['kind']}", piece["start"], piece["end"])
                )
        for track, pieces in sorted(engines.items()):
            rows.append((f"   {track}", pieces, False))
    names = [name for name, _, _ in MILESTONES] + ["/health 200", "first completion"]
    cmap = plt.get_cmap("tab20")
    colors = {name: cmap(i % 20) for i, name in enumerate(names)}
    for i, kind in enumerate(("boot", "phase", "spawn", "lock", "stop")):
        colors[f"launch: {kind}"] = ("0.55", "0.75", "0.35", "0.9", "0.2")[i]
    fig, ax = plt.subplots(figsize=(12, 0.55 * len(rows) + 2.2))
    used: dict[str, Any] = {}
    for y, (_label, segments, main) in enumerate(reversed(rows)):
        for name, start, end in segments:
            bar = ax.barh(y, end - start, left=start, height=0.7 if main else 0.4,
                          color=colors.get(name, "0.5"), edgecolor="white", lw=0.5)  # fmt: skip
            used.setdefault(name, bar)
            if main and end - start >= 2.5:
                ax.text((start + end) / 2, y, f"{end - start:.0f}", ha="center", va="center",
                        fontsize=7)  # fmt: skip
    ax.set_yticks(range(len(rows)), [label for label, _, _ in reversed(rows)], fontsize=8)
    ax.set_xlabel("seconds since the command started (segment: time until the milestone)")
    ax.set_title(title or "vllm serve vs launch vllm serve: where the start's seconds go")
    ax.legend(used.values(), used.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parse_rounds(text: str | None, repeats: int) -> range:
    """``--rounds A-B`` (inclusive; round 0 is the warm-up), default 0..repeats."""
    if not text:
        return range(repeats + 1)
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path(tempfile.gettempdir()) / "llama-rand")
    parser.add_argument("--make-8b", type=Path, help="write an 8B-shape random Llama here")
    parser.add_argument("--layouts", default="tp4,dp2tp2")
    parser.add_argument("--sides", default="stock,launch", help="stock, launch or both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", help="A-B: run rounds A..B only (0: the warm-up)")
    parser.add_argument("--fail", action="store_true", help="also inject a worker failure")
    parser.add_argument("--kill", action="store_true", help="also SIGKILL each command once up")
    parser.add_argument(
        "--launch-args", default="", help="launch's own options, e.g. --no-prefetch"
    )
    parser.add_argument("--no-runs", action="store_true", help="only the --fail/--kill trials")
    parser.add_argument("--cold", action="store_true", help="drop the model's page cache first")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, help="results JSON, rewritten after every trial")
    parser.add_argument("--from", dest="saved", help="saved results JSON files, comma-separated")
    parser.add_argument("--chart", type=Path, help="draw both starts' timelines (PNG)")
    parser.add_argument("--title", default="")
    parser.add_argument("--dry-run", action="store_true", help="CPU build, stand-in worker")
    args = parser.parse_args()
    sides = args.sides.split(",")
    if not set(sides) <= set(COMMANDS):
        parser.error(f"--sides: stock and/or launch, not {args.sides}")

    if args.saved:
        results = [r for f in args.saved.split(",") for r in json.loads(Path(f).read_text())]
        print(summarize(results))
        if args.chart:
            print(f"chart: {chart(results, args.chart, args.title)}")
        return 0

    extra = ["--enforce-eager"]
    env_extra: dict[str, str] = {}
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
        env_extra = dict(GPU_ENV)
        if args.make_8b:
            make_model(args.make_8b, big=True)
        make_model(args.model, big=args.make_8b == args.model)
        failing = ["--worker-cls", "vllm_failing_worker.FailingWorker"]  # rank 1 of each engine
        fail_extra = {layout: failing for layout in LAYOUTS}
    layouts = args.layouts.split(",")
    launch_args = args.launch_args.split()
    results: list[dict[str, Any]] = []

    def record(r: dict[str, Any]) -> None:
        brief = {k: v for k, v in r.items() if k not in ("lines", "launch_trace", "output_tail")}
        print(json.dumps(brief), flush=True)
        if "error" in r:
            print("  output tail:\n    " + "\n    ".join(r.get("output_tail", [])), flush=True)
        results.append(r)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))

    for round_ in [] if args.no_runs else parse_rounds(args.rounds, args.repeats):
        for layout in layouts:
            for command in sides if round_ % 2 == 0 else sides[::-1]:
                if args.cold:
                    drop_page_cache(args.model)
                r = trial(command, layout, args.model, extra, fail=False, timeout=args.timeout,
                          env_extra=env_extra, launch_args=launch_args)  # fmt: skip
                r["warmup"] = round_ == 0
                r["cold"] = args.cold
                record(r)
    if args.fail:
        for layout in layouts:
            for command in sides:
                r = trial(command, layout, args.model, extra + fail_extra[layout], fail=True,
                          timeout=args.timeout, env_extra=env_extra)  # fmt: skip
                r["warmup"] = False
                record(r)
    if args.kill:
        for layout in layouts:
            for command in sides:
                r = trial(command, layout, args.model, extra, fail=False, timeout=args.timeout,
                          env_extra=env_extra, kill=True, launch_args=launch_args)  # fmt: skip
                r["warmup"] = False
                record(r)
    print(summarize(results))
    if args.chart:
        print(f"chart: {chart(results, args.chart, args.title)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
