"""launch.integrations.omni.LaunchAsyncOmniEngine: vLLM-Omni 0.22.0's own orchestrator
(``AsyncOmniEngine``) with its stages started by launch, on vllm 0.22.1, CPU, with the
stand-in worker (no model): Omni's config reading, plans, stage clients, orchestrator and
request API, end to end through two LLM stages. Run by ``nox -s omni``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("vllm_omni") is None:
    pytest.skip("vllm-omni is not installed (nox -s omni installs it)", allow_module_level=True)

import launch


@pytest.fixture(autouse=True)
def cpu_platform() -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("vLLM has no platform here: run through nox -s omni (its CPU plugin)")


ENGINE_ARGS = """\
      distributed_executor_backend: mp
      skip_tokenizer_init: true
      enforce_eager: true
      max_model_len: 128
      enable_prefix_caching: false
      worker_cls: standin_worker.StandInWorker"""


def two_stages(
    path: Path, stage0: str = "{load_s: 0.2}", stage1: str = "{load_s: 0.2}", runtime1: str = ""
) -> Path:
    """A legacy ``stage_args`` file: stage 0 makes 3 tokens, stage 1 takes them as its
    prompt (Omni's default stage input) and makes 2."""
    path.write_text(
        f"""\
stage_args:
  - stage_id: 0
    engine_args:
{ENGINE_ARGS}
      additional_config: {{standin: {stage0}}}
    final_output: false
  - stage_id: 1
    runtime: {{{runtime1}}}
    engine_args:
{ENGINE_ARGS}
      additional_config: {{standin: {stage1}}}
    engine_input_source: [0]
    final_output: true
    final_output_type: text
"""
    )
    return path


def engine(model: Path, config: Path, **kwargs: Any) -> Any:
    from launch.integrations.omni import LaunchAsyncOmniEngine

    return LaunchAsyncOmniEngine(
        str(model), stage_configs_path=str(config), stage_init_timeout=300, **kwargs
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_omnis_orchestrator_answers_through_two_launched_stages(
    model_dir: Path, tmp_path: Path
) -> None:
    from vllm import SamplingParams
    from vllm_omni.engine.messages import OutputMessage

    from launch.integrations.omni import LaunchAsyncOmniEngine

    config = two_stages(tmp_path / "stages.yaml")  # stage 1 reads stage 0's output
    running = LaunchAsyncOmniEngine(
        str(model_dir), stage_configs_path=str(config), stage_init_timeout=300
    )
    try:
        stages = running.launch_stages
        assert [s.name for s in stages] == ["stage-0", "stage-1"]
        pids = [s.pid for s in stages]
        assert all(alive(pid) for pid in pids)
        children = [stages.pipeline[s.name][s.name] for s in stages]
        assert all(str(c.state) == "ready" for c in children)
        params = [SamplingParams(max_tokens=n, detokenize=False) for n in (3, 2)]
        running.add_request(
            "r1", {"prompt_token_ids": [5, 6, 7]}, sampling_params_list=params, final_stage_id=1
        )
        final = None
        deadline = time.monotonic() + 60
        while final is None and time.monotonic() < deadline:
            message = running.try_get_output(timeout=0.5)
            if isinstance(message, OutputMessage) and message.finished:
                final = message
        assert final is not None, "no final output within 60 s"
        # stage 0's tokens (the stand-in counts up) became stage 1's prompt
        assert final.stage_id == 1
        assert final.engine_outputs.prompt_token_ids == [8, 9, 10]
        assert final.engine_outputs.outputs[0].token_ids == [11, 12]
    finally:
        running.shutdown()
    assert not any(alive(pid) for pid in pids)
    assert running.launch_stages is not None  # kept for the caller to read
    running.shutdown()  # twice: nothing left to do


def test_a_stage_failing_in_init_raises_its_traceback_and_stops_the_other(
    model_dir: Path, tmp_path: Path
) -> None:
    config = two_stages(tmp_path / "stages.yaml", "{load_s: 30}", "{fail_rank: 0}")
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="Orchestrator initialization failed") as info:
        engine(model_dir, config)
    failed = info.value.__cause__
    assert isinstance(failed, launch.LaunchFailed)
    first = failed.first
    assert isinstance(first, launch.ChildCrashed) and first.name == "stage-1"
    assert "run_stage_core" in (first.remote_traceback or "")  # the stage's own frames
    assert "WorkerProc initialization failed" in str(first)  # where its worker's went
    assert len(failed.exceptions) == 1  # stage 0 was stopped, not failed
    assert time.monotonic() - began < 120  # coarse: not stage 0's 30 s load
    # stage 0 is gone: the no-leaked-process check of every test (conftest) enforces it


def test_runtime_env_and_devices_reach_the_stage_not_the_parent(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vllm_omni.platforms import current_omni_platform

    device_env = current_omni_platform.device_control_env_var
    monkeypatch.setenv(device_env, "4,6")  # the parent's visible devices
    keys = ["LAUNCH_OMNI_MARK", device_env]
    dumps = [tmp_path / "stage-0.json", tmp_path / "stage-1.json"]
    standin = [f"{{env_dump: '{dump}', env_keys: {json.dumps(keys)}}}" for dump in dumps]
    runtime = 'devices: "1", env: {LAUNCH_OMNI_MARK: stage-one}'
    config = two_stages(tmp_path / "stages.yaml", *standin, runtime1=runtime)
    config.write_text(
        config.read_text().replace(
            "standin_worker.StandInWorker", "omni_env_worker.EnvDumpingWorker"
        )
    )
    running = engine(model_dir, config)
    try:
        # (vLLM's CPU platform sets variables of its own in the parent: not these)
        assert "LAUNCH_OMNI_MARK" not in os.environ
        assert os.environ[device_env] == "4,6"
    finally:
        running.shutdown()
    seen = [json.loads(dump.read_text()) for dump in dumps]  # by each stage's worker
    assert seen[1] == {"LAUNCH_OMNI_MARK": "stage-one", device_env: "6"}  # logical 1 of "4,6"
    assert seen[0] == {"LAUNCH_OMNI_MARK": None, device_env: "4,6"}  # no devices: the parent's


def test_a_diffusion_stage_is_refused_before_anything_starts(
    model_dir: Path, tmp_path: Path
) -> None:
    from launch.integrations.omni import StageRefused

    config = tmp_path / "stages.yaml"
    text = two_stages(config).read_text()
    config.write_text(
        text.replace("  - stage_id: 1\n", "  - stage_id: 1\n    stage_type: diffusion\n")
    )
    with pytest.raises(StageRefused, match=r"stage 1 of .*stages\.yaml: a diffusion stage"):
        engine(model_dir, config)


def test_single_stage_mode_is_refused(model_dir: Path, tmp_path: Path) -> None:
    from launch.integrations.omni import StageRefused

    with pytest.raises(StageRefused, match="stage 1: single-stage mode"):
        engine(model_dir, two_stages(tmp_path / "stages.yaml"), stage_id=1)


EXIT_WITHOUT_SHUTDOWN = """\
import sys
sys.path.insert(0, {tests!r})
from launch.integrations.omni import LaunchAsyncOmniEngine

if __name__ == "__main__":
    engine = LaunchAsyncOmniEngine({model!r}, stage_configs_path={config!r})
    print("PIDS", *[s.pid for s in engine.launch_stages], flush=True)
    # no shutdown(): the interpreter exits with the engine alive
"""


def test_interpreter_exit_without_shutdown_stops_the_stages(
    model_dir: Path, tmp_path: Path
) -> None:
    script = tmp_path / "leave.py"
    config = two_stages(tmp_path / "stages.yaml")
    script.write_text(
        textwrap.dedent(
            EXIT_WITHOUT_SHUTDOWN.format(
                tests=str(Path(__file__).parent), model=str(model_dir), config=str(config)
            )
        )
    )
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("PIDS ")]
    pids = [int(pid) for pid in line.split()[1:]]
    assert len(pids) == 2
    assert time.monotonic() - began < 200  # coarse: exits, no hang on the portal thread
    assert not any(alive(pid) for pid in pids)  # stopped before the interpreter ended
    assert "launch: a stage of the Omni engine failed" not in done.stderr


def test_omnis_init_timeout_stops_the_stages_still_starting(
    model_dir: Path, tmp_path: Path
) -> None:
    config = two_stages(tmp_path / "stages.yaml", "{load_s: 600}", "{load_s: 600}")
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="Orchestrator did not become ready within 20s"):
        engine(model_dir, config, init_timeout=20)
    # Omni's shutdown waits up to 10 s for its orchestrator thread, then the opening of
    # the stages is cancelled: both are stopped (the no-leaked-process check)
    assert time.monotonic() - began < 90  # coarse: not the 600 s loads


def _plan(stage_id: int, replica: int, replicas: int, runtime: dict[str, Any], dp: int = 1) -> Any:
    from types import SimpleNamespace as NS

    config = NS(parallel_config=NS(data_parallel_size=dp))
    metadata = NS(stage_id=stage_id, stage_type="llm", runtime_cfg=runtime)
    return NS(replica_id=replica, num_replicas=replicas, launch_mode="local",
              metadata=metadata, stage_vllm_config=config, executor_class=None)  # fmt: skip


def test_replicas_are_named_and_given_their_share_of_the_parents_devices() -> None:
    from types import SimpleNamespace as NS

    from launch.integrations._omni_engine import stage_launches

    plans = [NS(stage_idx=0, replicas=[_plan(0, r, 2, {"devices": str(r + 1)}) for r in (0, 1)])]
    launches, _ = stage_launches(plans, device_env="VIS", environ={"VIS": "3,5,7"})
    assert [(s.name, s.devices, s.replica) for s in launches] == [
        ("stage-0-r0", ("5",), 0),
        ("stage-0-r1", ("7",), 1),
    ]


def test_data_parallel_inside_a_stage_is_refused() -> None:
    from types import SimpleNamespace as NS

    from launch.integrations._omni_engine import stage_launches
    from launch.integrations.omni import StageRefused

    plans = [NS(stage_idx=0, replicas=[_plan(2, 0, 1, {}, dp=2)])]
    with pytest.raises(StageRefused, match="stage 2 replica 0: data_parallel_size=2"):
        stage_launches(plans, device_env="VIS", environ={})
