"""Shared by the vLLM adapter tests: skip unless run by ``nox -s vllm`` (the real vllm,
CPU build), a tiny random-weight Llama, and the stand-in worker on ``sys.path``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent

if os.environ.get("VLLM_TARGET_DEVICE") != "cpu":
    collect_ignore_glob = ["test_*.py"]  # run through `nox -s vllm` (VLLM_TARGET_DEVICE=cpu)
else:
    pytest.importorskip("vllm")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama, saved locally (no hub access)."""
    from standin_worker import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(autouse=True)
def standin_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))  # vLLM's processes inherit sys.path
