"""How `launch vllm serve` starts its engines (no vLLM needed: the choice is launch's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch._start.forkserver import FORKSERVER, ForkserverError
from launch.integrations import vllm_serve


def test_engines_fall_back_to_spawn_when_the_forkserver_refuses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # vLLM 0.26 initialises CUDA at import on a GPU host, so launch's forkserver, which
    # preloaded it, refuses to fork: the engines must start as fresh interpreters.
    def refuse() -> None:
        raise ForkserverError(
            "importing 'vllm.v1.engine.core' initialised CUDA in launch's forkserver"
        )

    monkeypatch.delenv(vllm_serve.START_ENV, raising=False)
    monkeypatch.setattr(FORKSERVER, "wait_warm", refuse)
    assert vllm_serve._start_method() == "spawn"
    assert "engines start as fresh interpreters (spawn)" in capsys.readouterr().err


def test_engines_are_forks_of_a_warm_forkserver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(vllm_serve.START_ENV, raising=False)
    monkeypatch.setattr(FORKSERVER, "wait_warm", lambda: None)
    assert vllm_serve._start_method() == "forkserver"


def test_spawn_can_be_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(vllm_serve.START_ENV, "spawn")
    assert vllm_serve._start_method() == "spawn"


def test_launch_options_are_taken_out_before_vllm_parses() -> None:
    own, rest = vllm_serve.split_own_options(
        ["m", "--launch-trace", "t.json", "--tensor-parallel-size", "4", "--no-prefetch"]
    )
    assert (own.trace, own.prefetch) == ("t.json", False)
    assert rest == ["m", "--tensor-parallel-size", "4"]
    own, rest = vllm_serve.split_own_options(["m", "--launch-trace=x.json"])
    assert (own.trace, own.prefetch, rest) == ("x.json", True, ["m"])
    with pytest.raises(ValueError, match="needs a file"):
        vllm_serve.split_own_options(["m", "--launch-trace", "--port", "1"])


def test_the_forkserver_guard_asks_the_driver_only_if_it_is_loaded() -> None:
    # no libcuda in this process: an open /dev/nvidia-uvm (NVML's, say) is not cuInit
    from _launch_child._forkserver import _cuda_driver_initialized

    with open("/proc/self/maps") as maps:
        if "libcuda.so" in maps.read():
            pytest.skip("the CUDA driver is loaded in this process")
    assert _cuda_driver_initialized() is False


def test_the_comparison_driver_summarises_and_charts_saved_results(tmp_path: Path) -> None:
    # tools/vllm_serve_compare.py --from ... --chart: the table, the ratio, both starts drawn
    pytest.importorskip("matplotlib")
    tool = Path(__file__).resolve().parents[1] / "tools" / "vllm_serve_compare.py"

    def run(command: str, first: float, engine: float) -> dict[str, object]:
        return {
            "command": command, "layout": "tp4", "fail": False, "warmup": False,
            "health_s": first - 0.1, "first_s": first, "stop_s": 1.0,
            "procs_0.1s": 0, "procs_3s": 0,
            "milestones": {"server imports done": 17.0, "engine core start": engine,
                           "/health 200": first - 0.1, "first completion": first},
            "launch_trace": [{"track": "EngineCore_DP0", "name": "spawn", "kind": "spawn",
                              "start": engine, "end": engine + 0.1}],
        }  # fmt: skip

    failed = {"command": "launch", "layout": "tp4", "fail": False, "warmup": False,
              "error": "timed out after 2 s", "output_tail": ["last words"]}  # fmt: skip
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps([run("stock", 60.0, 33.0), run("launch", 30.0, 17.1), failed]))
    chart = tmp_path / "c.png"
    out = subprocess.run(
        [sys.executable, str(tool), "--from", str(saved), "--chart", str(chart)],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    assert "tp4: launch / stock, first completion: 0.50x" in out
    assert "FAILED tp4 launch: timed out after 2 s" in out and "last words" in out
    assert chart.stat().st_size > 10_000
