"""vLLM-Omni's stage process, imported: the names and signatures launch relies on to start
Omni's own stage replicas, and launch's reader against every deploy profile and the
topology of the installed vLLM-Omni. Run by ``nox -s omni`` (vllm 0.22.1 + vllm-omni
0.22.0 on the CPU torch), skipped where vllm-omni is not installed."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest

if importlib.util.find_spec("vllm_omni") is None:
    pytest.skip("vllm-omni is not installed (nox -s omni installs it)", allow_module_level=True)

import vllm_omni
from vllm.v1.engine.core import EngineCoreProc
from vllm_omni.engine import stage_engine_core_proc

from launch.integrations._omni_config import omni_topology, read_omni_config


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_the_stage_process_is_an_engine_core_proc_with_its_own_entry_point() -> None:
    proc = stage_engine_core_proc.StageEngineCoreProc
    assert issubclass(proc, EngineCoreProc)
    entry = inspect.getattr_static(proc, "run_stage_core")
    assert isinstance(entry, staticmethod)
    params = inspect.signature(proc.run_stage_core).parameters
    for name in ("dp_rank", "local_dp_rank"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@pytest.mark.skipif(
    not hasattr(stage_engine_core_proc, "complete_stage_handshake"),
    reason="vLLM-Omni >= 0.24 starts stages through stage_engine_startup.launch_stage_replica",
)
def test_spawn_and_handshake_are_separate_steps() -> None:
    # spawn under the launch lock (device variables set), handshake after releasing it
    spawn = stage_engine_core_proc.spawn_stage_core
    assert _parameters(spawn) == ["vllm_config", "executor_class", "log_stats"]
    assert _parameters(stage_engine_core_proc.complete_stage_handshake) == [
        "proc",
        "handshake_address",
        "addresses",
        "vllm_config",
        "handshake_timeout",
    ]
    # the handshake's wait races the process's death (its sentinel is polled)
    source = inspect.getsource(stage_engine_core_proc._recv)
    assert "proc.exitcode" in source and "TimeoutError" in source


def test_the_later_startup_module_when_there_is_one() -> None:
    startup = importlib.util.find_spec("vllm_omni.engine.stage_engine_startup")
    if startup is None or not hasattr(
        importlib.import_module("vllm_omni.engine.stage_engine_startup"), "launch_stage_replica"
    ):
        pytest.skip(f"vllm-omni {vllm_omni.__version__} has no launch_stage_replica")
    module = importlib.import_module("vllm_omni.engine.stage_engine_startup")
    params = _parameters(module.launch_stage_replica)
    assert params[:4] == ["vllm_config", "executor_class", "log_stats", "stage_id"]
    assert "stage_visible_devices" in params and "spawn_device_lock" in params


def _deploy_dir() -> Path:
    return Path(vllm_omni.__file__).parent / "deploy"


def test_every_installed_deploy_profile_reads_with_its_topology() -> None:
    profiles = sorted(_deploy_dir().glob("*.yaml"))
    assert profiles
    read = 0
    for path in profiles:
        config = read_omni_config(path)
        if config.pipeline is None:
            continue
        try:
            topology = omni_topology(config.pipeline)
        except (KeyError, ImportError) as exc:  # a pipeline whose model module needs more
            print(f"{path.name}: topology of {config.pipeline!r} not read: {exc!r}")
            continue
        named = read_omni_config(path, topology=topology)
        assert [s.name for s in named.stages] == [t["model_stage"] for t in topology.values()]
        assert all(s.stage_type in ("llm", "diffusion") for s in named.stages)
        read += 1
    print(f"{read} profiles read with their topology")


def test_the_qwen2_5_omni_topology() -> None:
    topology = omni_topology("qwen2_5_omni")
    config = read_omni_config(_deploy_dir() / "qwen2_5_omni.yaml", topology=topology)
    assert [(s.name, s.stage_type, s.input_sources) for s in config.stages] == [
        ("thinker", "llm", ()),
        ("talker", "llm", (0,)),
        ("code2wav", "llm", (1,)),
    ]
