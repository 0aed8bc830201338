"""The ``launch`` command line, run as a real subprocess: check, up (with Ctrl-C and
SIGTERM, during startup and while up), demo, and the exit codes."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from procs import alive

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "omni_pipeline.toml"


def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent),
        "LAUNCH_LOCK_DIR": str(tmp_path / "locks"),
        "COLUMNS": "200",
    }


def run(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(tmp_path),
        cwd=tmp_path,
    )


def pipeline_file(tmp_path: Path, *stages: str) -> Path:
    path = tmp_path / "pipe.toml"
    path.write_text(
        "[pipeline]\nname = 'cli'\n[pipeline.shutdown]\nstop_timeout = 1\nterm_timeout = 1\n"
        + "".join(stages)
    )
    return path


def stage(name: str, target: str, replicas: int = 1, **kwargs: object) -> str:
    args = ", ".join(f"{k} = {v!r}" for k, v in kwargs.items())
    return (
        f"[[stage]]\nname = '{name}'\ntarget = 'targets:{target}'\nreplicas = {replicas}\n"
        f"kwargs = {{ {args} }}\n"
    )


class Cli:
    """``launch up`` in its own session, as a terminal would run it in the foreground."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launch", "up", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env(tmp_path),
            cwd=tmp_path,
            start_new_session=True,
        )
        self.output = ""

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        """Read output (raw, unbuffered: select must see all of it) until ``text``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while text not in self.output:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.proc.kill()
                    pytest.fail(f"{text!r} not printed within {timeout}s:\n{self.output}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = self.proc.wait()
                    pytest.fail(f"exited ({code}) before printing {text!r}:\n{self.output}")
                self.output += chunk.decode(errors="replace")

    def children(self, count: int, timeout: float = 30.0) -> list[int]:
        """The pids of the children it launched (the forkserver excluded), once all exist."""
        deadline = time.monotonic() + timeout
        while True:
            found = [
                p.pid
                for p in psutil.Process(self.proc.pid).children(recursive=True)
                if "_forkserver" not in " ".join(p.cmdline())
            ]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)  # what a terminal sends its foreground group

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while chunk := os.read(fd, 65536):
            self.output += chunk.decode(errors="replace")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"still running after {timeout}s:\n{self.output}")
        return self.proc.wait(timeout), self.output


def gone(pids: list[int]) -> bool:
    return not any(alive(pid) for pid in pids)


def test_check_accepts_the_example(tmp_path: Path) -> None:
    result = run(tmp_path, "check", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "OK, pipeline 'omni'" in result.stdout
    assert "stage 'vocoder': 1 x omni_stages:engine (forkserver), devices 2, after talker" in (
        result.stdout
    )


def test_check_reports_file_stage_and_key(tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, stage("a", "serve", replicas=0))
    result = run(tmp_path, "check", str(path))
    assert result.returncode == 2
    assert f"{path}: stage 'a': key 'replicas': must be an integer >= 1" in result.stderr
    path.write_text("[[stage]]\nname = 'a'\ntarget = 'nowhere_xyz:run'\n")
    result = run(tmp_path, "check", str(path))
    assert result.returncode == 2
    assert "stage 'a': key 'target': module 'nowhere_xyz'" in result.stderr


def test_usage(tmp_path: Path) -> None:
    assert run(tmp_path).returncode == 2
    version = run(tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.startswith("launch ")
    assert run(tmp_path, "up", str(tmp_path / "missing.toml")).returncode == 2


def test_up_then_ctrl_c_stops_everything(tmp_path: Path) -> None:
    path = pipeline_file(
        tmp_path, stage("thinker", "serve", replicas=2, init=0.2), stage("talker", "serve")
    )
    cli = Cli(tmp_path, str(path))  # the rich view (not a terminal: no redraws)
    cli.wait_for("up: Ctrl-C or SIGTERM stops it")
    pids = cli.children(3)
    assert len(pids) == 3
    cli.ctrl_c()
    code, out = cli.finish()
    assert code == 0, out
    assert "all 3 children READY" in out
    assert "stopped on SIGINT while up; 3 of 3 children reaped" in out
    assert gone(pids)


def test_sigterm_while_up_is_a_clean_stop(tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, stage("a", "serve"))
    cli = Cli(tmp_path, "--plain", str(path))
    cli.wait_for("up: Ctrl-C")
    pids = cli.children(1)
    cli.proc.send_signal(signal.SIGTERM)
    code, out = cli.finish()
    assert code == 0, out
    assert "stopped on SIGTERM while up" in out
    assert gone(pids)


def test_ctrl_c_during_startup(tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, stage("slow", "serve", replicas=2, init=60.0))
    cli = Cli(tmp_path, "--plain", "--backend", "asyncio", str(path))
    cli.wait_for("phase init")
    pids = cli.children(2)
    assert len(pids) == 2
    started = time.monotonic()
    cli.ctrl_c()
    code, out = cli.finish()
    assert code == 0, out
    assert "stopped on SIGINT during startup; 2 of 2 children reaped" in out
    assert time.monotonic() - started < 10
    assert gone(pids)


def test_startup_failure_exits_3_with_the_childs_traceback(tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, stage("a", "serve", init=30.0), stage("b", "crash", delay=0.3))
    cli = Cli(tmp_path, "--plain", str(path))
    code, out = cli.finish()
    assert code == 3, out
    assert "child 'b-0' of group 'b'" in out
    assert "RuntimeError: weights file is corrupt" in out  # the child's own traceback
    assert "startup failed (exit 3)" in out


def test_child_dying_while_up_exits_4(tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, stage("a", "serve"), stage("b", "die_after_ready", after=1.0))
    cli = Cli(tmp_path, "--plain", str(path))
    code, out = cli.finish()
    assert code == 4, out
    assert "died after READY" in out
    assert "died while the pipeline was up (exit 4)" in out


def test_demo_without_torch(tmp_path: Path) -> None:
    result = run(tmp_path, "demo", "--no-torch")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pure-Python TCP groups" in result.stdout
    assert "all 4 children READY in" in result.stdout
    for name in ("thinker-0", "thinker-1", "talker-0", "vocoder-0"):
        assert name in result.stdout
    assert "4 of 4 children reaped" in result.stdout


def test_demo_with_torch(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    result = run(tmp_path, "demo", "--plain", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch.distributed gloo groups" in result.stdout
    assert "init_process_group" in result.stdout and "all_reduce" in result.stdout
    assert "all 4 children READY in" in result.stdout


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "launch"
    if not script.exists():
        pytest.skip("the launch console script is not installed in this environment")
    result = subprocess.run(
        [str(script), "check", str(EXAMPLE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_check_and_trace_have_a_description(tmp_path: Path) -> None:
    overview = run(tmp_path, "--help").stdout
    for command in ("up", "check", "trace", "demo", "bench"):
        assert f"    {command} " in overview
    assert "validate a pipeline file" in run(tmp_path, "check", "--help").stdout
    assert "render a trace saved by --trace" in run(tmp_path, "trace", "--help").stdout
    assert "130 bench" in overview.replace("\n", " ")  # the exit-code table


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--timeline", "out.txt", "--timeline out.txt: unsupported chart format ('.txt')"),
        ("--timeline", "chart", "--timeline chart: unsupported chart format (no suffix)"),
        ("--trace", "/nonexistent-dir/x.json", "directory /nonexistent-dir does not exist"),
        ("--timeline", "missing/x.png", "--timeline missing/x.png: directory missing does not"),
        ("--trace", ".", "--trace .: is a directory"),
    ],
)
def test_outputs_are_checked_before_anything_starts(
    tmp_path: Path, option: str, value: str, message: str
) -> None:
    started = time.monotonic()
    result = run(tmp_path, "demo", "--no-torch", "--plain", option, value)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "demo:" not in result.stdout and "READY" not in result.stdout  # nothing started
    assert time.monotonic() - started < 20
    assert not Path("/nonexistent-dir").exists() and not (tmp_path / "missing").exists()
    path = pipeline_file(tmp_path, stage("a", "serve"))
    result = run(tmp_path, "up", "--plain", option, value, str(path))
    assert result.returncode == 2 and message in result.stderr, result.stdout + result.stderr
    assert "READY" not in result.stdout


def test_trace_checks_its_chart_before_reading(tmp_path: Path) -> None:
    result = run(tmp_path, "trace", "missing.json", "--timeline", "out.txt")
    assert result.returncode == 2
    assert "unsupported chart format" in result.stderr and "missing.json" not in result.stderr
    result = run(tmp_path, "trace", "missing.json", "--timeline", "out.svg")
    assert result.returncode == 2 and "missing.json: no such file" in result.stderr


def test_up_reports_an_uncreatable_lock_dir_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "locks.toml"
    path.write_text(
        "[pipeline]\nlock_dir = '/proc/no-such-dir/locks'\n"
        "[[stage]]\nname = 'a'\ntarget = 'targets:serve'\ndevices = [0]\n"
    )
    result = run(tmp_path, "up", "--plain", str(path))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "/proc/no-such-dir" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_demo_hint_names_the_distribution(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None  # as if torch were not installed\n"
        "from launch._cli.main import main; sys.exit(main(['demo', '--plain']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pip install 'launch-tree[torch]' torch==2.13.0" in result.stderr
    assert "pure-Python TCP groups" in result.stdout


@pytest.mark.parametrize("after", ["[1/", "[2/"])  # during a baseline, during launch-trio
def test_ctrl_c_during_bench_is_quiet_and_keeps_what_was_measured(
    tmp_path: Path, after: str
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "launch", "bench", "--plain", "--out", str(tmp_path / "out"),
            "--n", "2,3", "--repeats", "1", "--payload", "1KiB",
            "--strategies", "sequential,threadpool,launch-trio",
            "--import-s", "0.2", "--init-s", "1.5", "--teardown-n", "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(tmp_path),
        cwd=tmp_path,
        start_new_session=True,  # a terminal's foreground process group
    )  # fmt: skip
    cli = Cli.__new__(Cli)
    cli.proc, cli.output = proc, ""
    cli.wait_for(after)  # the next trial has begun
    spawned = cli.children(1)  # and started its children: they are in their init
    assert spawned, cli.output
    cli.ctrl_c()
    time.sleep(0.2)
    cli.ctrl_c()  # a second Ctrl-C does not cut the cleanup short
    code, out = cli.finish(timeout=60)
    assert code == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    took = re.search(r"bench interrupted after ([\d.]+)s", out)
    assert took is not None and float(took.group(1)) > 1.0, out  # not "took 00:00"
    assert "not run" in out and "failed" not in out
    assert "sequential N=2, payload 1 KiB: all READY" in out
    assert (tmp_path / "out" / "bench-synthetic.json").exists()
    assert gone(spawned)


def test_bench_refuses_an_out_dir_it_cannot_create(tmp_path: Path) -> None:
    result = run(tmp_path, "bench", "--quick", "--out", str(tmp_path / "a" / "b"))
    assert result.returncode == 2
    assert f"directory {tmp_path / 'a'} does not exist" in result.stderr
    (tmp_path / "file").write_text("")
    result = run(tmp_path, "bench", "--quick", "--out", "file")
    assert result.returncode == 2 and "--out file: not a directory" in result.stderr
