"""The examples in the docs are real files; run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_tp_workers_example(backend: str) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "tp_workers.py"), backend],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=EXAMPLES,
    )
    assert out.returncode == 0, out.stderr
    assert "all READY in" in out.stdout
    for rank in range(4):
        assert f"'rank': {rank}, 'device': '{rank}'" in out.stdout
    assert "all stopped: [0, 0, 0, 0]" in out.stdout


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_omni_pipeline_example(backend: str) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "omni_pipeline.py"), backend],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=EXAMPLES,
    )
    assert out.returncode == 0, out.stderr
    assert "talker/talker-0: {'role': 'talker', 'rank': 0, 'devices': '2'" in out.stdout
    assert "vocoder/vocoder-0: {'role': 'vocoder', 'rank': 0, 'devices': '2'" in out.stdout
    assert "thinker/thinker-1: {'rank': 1" in out.stdout
    spawned_after = float(out.stdout.split("vocoder spawned ")[1].split("s after")[0])
    assert spawned_after >= 0
    assert "all stopped: [0, 0, 0, 0]" in out.stdout
