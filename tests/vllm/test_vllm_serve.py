"""``launch vllm serve`` against the real vllm package (CPU build, stand-in worker): vLLM's
OpenAI server whose engine cores, coordinator, API servers and workers are launch's.
Each test runs the command as a subprocess, as a user would. Run with ``nox -s vllm``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

HERE = Path(__file__).parent
STARTUP_S = 120.0  # coarse: two shared cores, every process imports vLLM's stack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(model: Path, port: int, *extra: str, **standin: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    command = [
        sys.executable, "-m", "launch", "vllm", "serve", str(model), "--port", str(port),
        "--host", "127.0.0.1", "--skip-tokenizer-init", "--enforce-eager",
        "--max-model-len", "128", "--no-enable-prefix-caching",
        "--worker-cls", "standin_worker.StandInWorker",
        "--additional-config", json.dumps({"standin": standin}), *extra,
    ]  # fmt: skip
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def wait_healthy(proc: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail("the server did not answer /health in time")


def complete(port: int, prompt: list[int]) -> list[int]:
    body = {"model": "m", "prompt": prompt, "max_tokens": 3, "return_token_ids": True}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    return list(answer["choices"][0]["token_ids"])


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited (a zombie has: its parent reaps it later);
    returns those still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        running = []
        for proc in procs:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    running.append(proc)
            except psutil.NoSuchProcess:
                pass
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.05)


@pytest.fixture
def command() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:  # a failed assertion must not leave a server running
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_answers_completions_and_stops_on_sigterm(
    model_dir: Path, command: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    proc = serve(model_dir, port, "--tensor-parallel-size", "2", "--served-model-name", "m")
    command.append(proc)
    wait_healthy(proc, port)
    tree = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(p.name() + " ".join(p.cmdline()) for p in tree)
    assert "EngineCore" in names and "Worker" in names
    assert complete(port, [5, 6]) == [7, 8, 9]  # the stand-in samples last token + 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    _, left = psutil.wait_procs(tree, timeout=5)
    assert not left


def test_a_failing_worker_exits_the_command_with_the_workers_traceback(
    model_dir: Path, tmp_path: Path, command: list[subprocess.Popen[str]]
) -> None:
    port, stamp = free_port(), tmp_path / "failed-at"
    proc = serve(model_dir, port, "--tensor-parallel-size", "2", fail_rank=1, stamp=str(stamp))
    command.append(proc)
    _, stderr = proc.communicate(timeout=STARTUP_S)
    failure_to_exit = time.monotonic() - float(stamp.read_text())
    assert proc.returncode == 3
    assert failure_to_exit < 5.0, failure_to_exit  # coarse (2 shared cores); 0.24 s seen
    last = stderr[stderr.rindex("launch vllm serve: startup failed") :]
    assert "'EngineCore_DP0'" in last and "'VllmWorker-1'" in last
    assert "RuntimeError: weights shard 1 is corrupt" in last
    lines = [line.strip(" |+-") for line in last.splitlines()]
    assert [line for line in lines if line][-1] == (
        "RuntimeError: weights shard 1 is corrupt (stand-in failure)"
    )  # what it prints last: the worker's own exception
    assert "load_model" in last  # the worker's own frames


def test_sigkill_of_the_command_leaves_nothing(
    model_dir: Path, command: list[subprocess.Popen[str]]
) -> None:
    """DP=2 with vLLM's default of one API server per engine: coordinator, two engines,
    their workers and two API server children, all gone after the command's SIGKILL."""
    port = free_port()
    proc = serve(model_dir, port, "--data-parallel-size", "2", "--served-model-name", "m")
    command.append(proc)
    wait_healthy(proc, port)
    assert complete(port, [15]) == [16, 17, 18]
    tree = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) + p.name() for p in tree)
    assert "EngineCore_DP1" in names and "DPCoordinator" in names
    forkserver = [p for p in tree if "_launch_child._forkserver" in " ".join(p.cmdline())]
    vllm = [p for p in tree if p not in forkserver]
    killed = time.monotonic()
    proc.kill()
    proc.wait()
    left = wait_gone(vllm, timeout=5)  # coarse on two shared cores; 0.5 s seen
    assert not left, [(p.pid, p.name()) for p in left]
    print(f"{len(vllm)} processes gone {time.monotonic() - killed:.2f} s after SIGKILL")
    # launch's forkserver exits through the interpreter's teardown of vLLM (seconds)
    assert not wait_gone(forkserver, timeout=10)
    _, left = psutil.wait_procs(tree, timeout=10)  # and reaped, by the forkserver or init
    assert not left, [(p.pid, p.name()) for p in left]
