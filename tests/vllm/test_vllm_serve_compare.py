"""tools/vllm_serve_compare.py in its CPU dry-run mode: stock ``vllm serve`` and ``launch
vllm serve`` each started, asked for a completion and stopped by the driver that
measures them on GPUs, each start's timeline read from its output. Run with ``nox -s vllm``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "vllm_serve_compare.py"
# each test starts both commands in turn (a minute each on 2 busy cores); the driver's
# own subprocess timeout bounds it
pytestmark = pytest.mark.timeout(450)


def test_the_serve_comparison_driver_runs_both_commands(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, str(TOOL), "--dry-run", "--model", str(model_dir), "--layouts", "tp2",
         "--sides", "stock,launch", "--repeats", "0", "--timeout", "150", "--out", str(out)],
        check=True, timeout=400,
    )  # fmt: skip
    results = json.loads(out.read_text())
    assert [r["command"] for r in results] == ["stock", "launch"]
    for r in results:
        assert r["warmup"] and r["first_s"] >= r["health_s"] > 0
        assert r["stop_exit_code"] == 0 and r["procs_3s"] == 0
        # the timeline: stamped lines, and milestones in the order a start reaches them
        marks = r["milestones"]
        assert r["lines"] and all(t >= 0 for t, _ in r["lines"])
        assert marks["engine core start"] <= marks["first completion"] == round(r["first_s"], 2)
    launch = results[1]
    assert {piece["track"] for piece in launch["launch_trace"]} == {"EngineCore_DP0"}
    assert "launch_trace" not in results[0]


def test_a_failed_trial_is_recorded_and_the_run_goes_on(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(TOOL), "--dry-run", "--model", str(model_dir), "--layouts", "tp2",
         "--sides", "launch", "--repeats", "1", "--timeout", "2", "--out", str(out)],
        check=True, timeout=200, capture_output=True, text=True,
    )  # fmt: skip
    results = json.loads(out.read_text())  # written after every trial
    assert [r["command"] for r in results] == ["launch", "launch"]
    for r in results:
        assert r["error"] == "timed out after 2 s" and "output_tail" in r
    assert "FAILED tp2 launch: timed out after 2 s" in done.stdout
