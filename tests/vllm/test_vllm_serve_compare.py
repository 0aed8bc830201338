"""tools/vllm_serve_compare.py in its CPU dry-run mode: stock ``vllm serve`` and ``launch
vllm serve`` each started, asked for a completion and stopped by the driver that
measures them on GPUs. Run with ``nox -s vllm``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_serve_comparison_driver_runs_both_commands(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "vllm_serve_compare.py"), "--dry-run",
         "--model", str(model_dir), "--layouts", "tp2", "--repeats", "0", "--timeout", "150",
         "--out", str(out)],
        check=True, timeout=400,
    )  # fmt: skip
    results = json.loads(out.read_text())
    assert sorted(r["command"] for r in results) == ["launch", "stock"]
    for r in results:
        assert r["warmup"] and r["first_s"] >= r["health_s"] > 0
        assert r["stop_exit_code"] == 0 and r["procs_3s"] == 0
