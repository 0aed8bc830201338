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
    # torch's gloo ranks, or without torch the stand-in engines
    thinker = out.stdout.split("thinker/thinker-1: ")[1].splitlines()[0]
    assert "'rank': 1" in thinker
    spawned_after = float(out.stdout.split("vocoder spawned ")[1].split("s after")[0])
    assert spawned_after >= 0
    assert "all stopped: [0, 0, 0, 0]" in out.stdout


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
                cwd=EXAMPLES,
            )
        )
    outputs = [node.communicate(timeout=90) for node in nodes]
    for rank, (node, (out, err)) in enumerate(zip(nodes, outputs, strict=True)):
        assert node.returncode == 0, err
        assert f"rank-{rank}: {{'rank': {rank}, 'world_size': 2" in out
        assert "'all_reduce': 3.0" in out
