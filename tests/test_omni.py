"""vLLM-Omni stage configs as launch pipelines (launch.integrations.omni): parsing with
errors that name the file, stage and key, and real pipelines of stand-in stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import launch
from launch.integrations.omni import omni_pipeline, omni_stages

pytestmark = pytest.mark.anyio

# the shape of vLLM-Omni's qwen2_5_omni.yaml: thinker and vocoder share device 0
QWEN_OMNI: dict[str, Any] = {
    "stage_args": [
        {
            "stage_id": 0,
            "runtime": {"process": True, "devices": "0"},
            "engine_args": {"model_stage": "thinker", "init_s": 0.5},
        },
        {
            "stage_id": 1,
            "runtime": {"process": True, "devices": "1"},
            "engine_args": {"model_stage": "talker", "init_s": 0.5},
            "engine_input_source": [0],
        },
        {
            "stage_id": 2,
            "runtime": {"process": True, "devices": "0"},
            "engine_args": {"model_stage": "code2wav", "init_s": 0.5},
            "engine_input_source": [1],
        },
    ]
}


def test_stages_come_from_stage_args_in_order() -> None:
    stages = omni_stages(QWEN_OMNI)
    assert [(s.stage_id, s.name, s.devices, s.input_sources) for s in stages] == [
        (0, "thinker", ("0",), ()),
        (1, "talker", ("1",), (0,)),
        (2, "code2wav", ("0",), (1,)),
    ]


def test_replicas_split_the_stage_devices_evenly() -> None:
    config = {
        "stage_args": [
            {"stage_id": 0, "runtime": {"devices": "0,1,2,3", "replicas": 2}},
            {"stage_id": 1, "runtime": {"devices": [4]}, "engine_input_source": [0]},
        ]
    }
    stages = omni_stages(config)
    assert [(s.name, s.replica, s.devices) for s in stages] == [
        ("stage-0-r0", 0, ("0", "1")),
        ("stage-0-r1", 1, ("2", "3")),
        ("stage-1", 0, ("4",)),
    ]


def test_a_deploy_profile_gives_devices_and_replicas_on_the_stage() -> None:
    # the shape of vLLM-Omni 0.30's deploy/minicpmo_4_5_3gpu_stage1_replicas.yaml
    profile = {"stages": [{"stage_id": 0}, {"stage_id": 1, "devices": "1,2", "num_replicas": 2}]}
    stages = omni_stages(profile)
    assert [(s.name, s.devices) for s in stages] == [
        ("stage-0", ()),
        ("stage-1-r0", ("1",)),
        ("stage-1-r1", ("2",)),
    ]
    with pytest.raises(ValueError, match=r"base_config \('base.yaml'\) overlays another file"):
        omni_stages({"base_config": "base.yaml", **profile})


@pytest.mark.parametrize(
    ("stage_args", "message"),
    [
        ([{"runtime": {}}], r"stage_args\[0\]: each stage needs a 'stage_id'"),
        ([{"stage_id": 0}, {"stage_id": 0}], r"stage_args\[1\]: stage_id 0 is used twice"),
        (
            [{"stage_id": 0, "engine_input_source": [7]}],
            r"stage 0 \(stage-0\): engine_input_source names unknown stage id\(s\) \[7\]",
        ),
        (
            [{"stage_id": 0, "runtime": {"devices": "0,1,2", "replicas": 2}}],
            r"runtime.devices 0,1,2 cannot be split evenly over 2 replicas",
        ),
        ([{"stage_id": 0, "runtime": {"devices": "0,,1"}}], r"has an empty entry"),
        ([], r"'stage_args' must be a non-empty list"),
    ],
)
def test_malformed_configs_are_refused_naming_stage_and_key(
    stage_args: list[Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        omni_stages({"stage_args": stage_args})


def test_a_config_file_is_named_in_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "stages.toml"
    path.write_text("[[stage_args]]\nstage_id = 0\n[[stage_args]]\nstage_id = 0\n")
    with pytest.raises(ValueError, match=rf"{path}: stage_args\[1\]: stage_id 0 is used twice"):
        omni_stages(path)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'missing.yaml'}: cannot read"):
        omni_stages(tmp_path / "missing.yaml")


async def test_stages_start_on_their_devices_sharing_ones_serialized(tmp_path: Path) -> None:
    spec = omni_pipeline(
        QWEN_OMNI, model="/models/omni", target="targets:omni_stage", lock_dir=tmp_path
    )
    async with launch.open_pipeline(spec) as running:
        payloads = {group.name: group[group.name].payload for group in running}
        assert payloads == {
            "thinker": {"devices": "0", "sources": [], "model": "/models/omni"},
            "talker": {"devices": "1", "sources": [0], "model": "/models/omni"},
            "code2wav": {"devices": "0", "sources": [1], "model": "/models/omni"},
        }
        thinker, talker, vocoder = (running[s][s].times for s in ("thinker", "talker", "code2wav"))
        first, second = sorted((thinker, vocoder), key=lambda t: t.spawn_requested or 0)
        assert second.spawn_requested is not None and first.ready is not None
        assert second.spawn_requested >= first.ready  # device 0: one after the other
        assert talker.spawn_requested is not None and talker.spawn_requested < first.ready


async def test_a_failing_stage_tears_the_tree_down_with_its_traceback(tmp_path: Path) -> None:
    config = {
        "stage_args": [
            {"stage_id": 0, "runtime": {"devices": "0"}, "engine_args": {"init_s": 5.0}},
            {
                "stage_id": 1,
                "runtime": {"devices": "1"},
                "engine_args": {"model_stage": "talker", "fail": "codec weights missing"},
            },
        ]
    }
    spec = omni_pipeline(config, model="m", target="targets:omni_stage", lock_dir=tmp_path)
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_pipeline(spec):
            pytest.fail("the pipeline started")
    first = info.value.first
    assert isinstance(first, launch.ChildCrashed) and first.name == "talker"
    assert "codec weights missing" in (first.remote_traceback or "")
