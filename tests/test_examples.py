"""Every file in examples/ runs the way its docstring tells a user to run it.

The files are found with a glob: a new example runs without editing this file (a ``.py``
file as ``python examples/<file>``, which must exit 0 and print something; a pipeline
file as ``launch up``, interrupted once it is up). ``RUNS`` lists the files that need
more: arguments, a bounded run of a program that runs until interrupted, an optional
dependency (skipped, with the reason, when it is missing), or the test that runs a
file that is not a program.
"""

from __future__ import annotations

import importlib.util
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
UP = "up: Ctrl-C or SIGTERM stops it"  # what `launch up` prints once every child is READY


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Run:
    """One run of an example.

    Attributes:
        args: its arguments (a callable: made when the test runs, e.g. a free port).
        expect: what it must print (stdout and stderr together).
        command: how it is started, ``{file}`` standing for its path; default
            ``python {file}``.
        until: for a program that runs until interrupted: Ctrl-C (SIGINT to its process
            group, as a terminal sends) once it has printed this; it must then exit 0.
        needs: modules it needs that launch does not (skipped when one is missing).
        id: the test id's suffix.
    """

    args: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()
    expect: tuple[str, ...] = ()
    command: tuple[str, ...] = (sys.executable, "{file}")
    until: str | None = None
    needs: tuple[str, ...] = ()
    id: str = ""


@dataclass(frozen=True)
class RunBy:
    """A file that is not run by itself: ``by`` (a test in this module, or another
    example) runs it."""

    by: str
    reason: str


LAUNCH_UP = (sys.executable, "-m", "launch", "up", "{file}")

RUNS: dict[str, list[Run] | RunBy] = {
    "tp_workers.py": [
        Run(
            args=(backend,) if backend else (),
            expect=(
                "all READY in",
                *(f"'rank': {r}, 'device': '{r}'" for r in range(4)),
                "all stopped: [0, 0, 0, 0]",
            ),
            id=backend or "trio",
        )
        for backend in ("", "asyncio")
    ],
    "omni_pipeline.py": [
        Run(
            args=(backend,) if backend else (),
            expect=(
                "talker/talker-0: {'role': 'talker', 'rank': 0, 'devices': '2'",
                "vocoder/vocoder-0: {'role': 'vocoder', 'rank': 0, 'devices': '2'",
                "thinker/thinker-1: ",
                "s after the talker was READY",
                "all stopped: [0, 0, 0, 0]",
            ),
            id=backend or "trio",
        )
        for backend in ("", "asyncio")
    ],
    "omni_pipeline.toml": [
        Run(command=LAUNCH_UP, until=UP, expect=("all 4 children READY", "4 of 4 children reaped"))
    ],
    "omni_stages.py": RunBy("omni_pipeline.toml", "the stage targets of omni_pipeline.toml"),
    "server_app.py": [
        Run(
            command=(sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES)),
            args=lambda: ("--port", str(free_port()), "server_app:app"),
            until="Application startup complete",
            expect=("Shutting down", "Application shutdown complete"),
            needs=("starlette", "uvicorn"),
            id="uvicorn",
        )
    ],
    "multinode.py": RunBy(
        "test_multinode_example_two_launchers_one_process_group",
        "one launcher per node: two launchers form one process group",
    ),
}


def default_runs(path: Path) -> list[Run]:
    if path.suffix == ".py":
        return [Run()]
    if path.suffix == ".toml":
        return [Run(command=LAUNCH_UP, until=UP, expect=("children READY",))]
    raise AssertionError(f"examples/{path.name}: not a program or a pipeline file; add to RUNS")


def runs() -> list[object]:
    params: list[object] = []
    for path in sorted(EXAMPLES.glob("*")):
        if path.name.startswith((".", "_")) or path.is_dir():
            continue
        entry = RUNS.get(path.name) or default_runs(path)
        for run in [entry] if isinstance(entry, RunBy) else entry:
            suffix = f"-{run.id}" if isinstance(run, Run) and run.id else ""
            params.append(pytest.param(path.name, run, id=path.name + suffix))
    return params


def output_until(proc: subprocess.Popen[bytes], text: str | None, timeout: float) -> str:
    """Read ``proc``'s output until it prints ``text`` (None: until it exits)."""
    assert proc.stdout is not None
    fd, out = proc.stdout.fileno(), ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while text is None or text not in out:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                pytest.fail(f"{text or 'exit'!r} not reached within {timeout}s:\n{out}")
            chunk = os.read(fd, 65536)
            if not chunk:
                if text is None:
                    return out
                pytest.fail(f"exited ({proc.wait()}) before printing {text!r}:\n{out}")
            out += chunk.decode(errors="replace")
    return out


@pytest.mark.parametrize(("name", "run"), runs())
def test_example_runs(name: str, run: Run | RunBy, tmp_path: Path) -> None:
    if isinstance(run, RunBy):
        # run by another example, which names it, or by a test in this module
        if run.by in RUNS or (EXAMPLES / run.by).exists():
            assert Path(name).stem in (EXAMPLES / run.by).read_text(), (name, run)
        else:
            assert callable(globals().get(run.by)), f"{name}: no test {run.by!r} runs it"
        return
    for module in run.needs:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"examples/{name} needs {module}, not installed here")
    args = run.args() if callable(run.args) else run.args
    command = [part.format(file=f"examples/{name}") for part in run.command]
    proc = subprocess.Popen(
        [*command, *args],
        cwd=ROOT,  # as the docstrings run them: from the repository's root
        env={**os.environ, "LAUNCH_LOCK_DIR": str(tmp_path / "locks")},  # never real devices
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a terminal's foreground process group
    )
    try:
        out = output_until(proc, run.until, timeout=90)
        if run.until is not None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
            out += output_until(proc, None, timeout=30)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0, out
    assert out.strip(), f"examples/{name} printed nothing"
    for text in run.expect:
        assert text in out, (text, out)


def test_multinode_example_two_launchers_one_process_group() -> None:
    pytest.importorskip("torch")
    from launch.integrations.torch import free_ports

    master = f"127.0.0.1:{free_ports(1)[0]}"
    nodes = []
    for rank in range(2):
        args = ["--node-rank", str(rank), "--nodes", "2", "--master", master, "--up-s", "0.5"]
        nodes.append(
            subprocess.Popen(
                [sys.executable, str(EXAMPLES / "multinode.py"), *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
        )
    outputs = [node.communicate(timeout=90) for node in nodes]
    for rank, (node, (out, err)) in enumerate(zip(nodes, outputs, strict=True)):
        assert node.returncode == 0, err
        assert f"rank-{rank}: {{'rank': {rank}, 'world_size': 2" in out
        assert "'all_reduce': 3.0" in out
