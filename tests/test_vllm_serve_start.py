"""How `launch vllm serve` starts its engines (no vLLM needed: the choice is launch's)."""

from __future__ import annotations

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
