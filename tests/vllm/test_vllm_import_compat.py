"""launch's vLLM modules import on every vLLM they are used with: vLLM 0.32 (``nox -s vllm``)
and 0.22 (``nox -s omni``), which brackets the 0.26 of the GPU figures. A name that only a
newer vLLM has must be imported where it is needed, with a clear error there."""

from __future__ import annotations

import importlib

import pytest

pytest.importorskip("vllm")


@pytest.mark.parametrize(
    "module",
    [
        "launch.integrations.vllm",
        "launch.integrations.vllm_dp",
        "launch.integrations.vllm_serve",
        "launch.integrations._omni_stage",
    ],
)
def test_launch_vllm_module_imports_on_the_installed_vllm(module: str) -> None:
    importlib.import_module(module)


def test_placed_engines_name_the_vllm_they_need_when_it_is_too_old() -> None:
    network_utils = importlib.import_module("vllm.utils.network_utils")
    if hasattr(network_utils, "make_zmq_listener"):
        pytest.skip("this vLLM has bound listeners: placed engines are supported")
    vllm_dp = importlib.import_module("launch.integrations.vllm_dp")
    with pytest.raises(ImportError, match="make_zmq_listener"):
        vllm_dp._placed_addresses(None, 1, "127.0.0.1")
