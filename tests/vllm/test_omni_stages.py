"""launch.integrations.omni against the real vllm package (CPU build): an Omni-shaped
two-stage config whose stages are vLLM engines (stand-in worker), started as a launch
pipeline, the thinker's tokens fed to the talker. Run with ``nox -s vllm``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import launch
from launch.integrations.omni import ask_stage, omni_pipeline

pytestmark = pytest.mark.anyio

ENGINE = {
    "skip_tokenizer_init": True,
    "enforce_eager": True,
    "max_model_len": 128,
    "enable_prefix_caching": False,
    "worker_cls": "standin_worker.StandInWorker",
}


def two_stages(**talker: Any) -> dict[str, Any]:
    return {
        "stage_args": [
            {
                "stage_id": 0,
                "runtime": {"process": True, "devices": "0"},
                "engine_args": {"model_stage": "thinker", **ENGINE},
            },
            {
                "stage_id": 1,
                "runtime": {"process": True, "devices": "1"},
                "engine_args": {"model_stage": "talker", **ENGINE, **talker},
                "engine_input_source": [0],
            },
        ]
    }


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_omni_stages_run_as_vllm_engines_in_one_pipeline(
    model_dir: Path, tmp_path: Path, anyio_backend: str
) -> None:
    spec = omni_pipeline(two_stages(), model=str(model_dir), lock_dir=tmp_path)
    async with launch.open_pipeline(spec) as running:
        thinker = running["thinker"]["thinker"].payload
        talker = running["talker"]["talker"].payload
        assert thinker["ignored_engine_args"] == ["model_stage"]
        thought = ask_stage(thinker["address"], [5, 6], max_tokens=3)
        assert thought == [7, 8, 9]
        assert ask_stage(talker["address"], thought, max_tokens=2) == [10, 11]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_stage_whose_engine_fails_names_the_stage_and_leaves_nothing(
    model_dir: Path, tmp_path: Path, anyio_backend: str
) -> None:
    config = two_stages(additional_config={"standin": {"fail_rank": 0}})
    spec = omni_pipeline(config, model=str(model_dir), lock_dir=tmp_path)
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_pipeline(spec):
            pytest.fail("the pipeline started")
    first = info.value.first
    assert isinstance(first, launch.ChildCrashed) and first.name == "talker"
    # vLLM's own engine-core error, raised in the talker's stage process
    assert "Engine core initialization failed" in str(first)
