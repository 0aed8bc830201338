"""vLLM-Omni stage configs as launch pipelines (launch.integrations.omni): both config
generations (a real vllm-omni 0.30 deploy profile from tests/data/omni), errors that name
the file, stage and key, and real pipelines of stand-in stages."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import launch
from launch import ConfigError
from launch.integrations.omni import omni_pipeline, omni_stages

pytestmark = pytest.mark.anyio

DEPLOY = Path(__file__).parent / "data" / "omni" / "deploy"  # from vllm-omni 0.30.0

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
    assert [(s.stage_id, s.name, s.devices, s.input_sources, s.stage_type) for s in stages] == [
        (0, "thinker", ("0",), (), "llm"),  # a legacy stage without stage_type is an LLM
        (1, "talker", ("1",), (0,), "llm"),
        (2, "code2wav", ("0",), (1,), "llm"),
    ]
    assert stages[0].model_stage == "thinker" and stages[0].engine_args["init_s"] == 0.5


def test_replicas_split_the_stage_devices_as_vllm_omni_does() -> None:
    config = {
        "stage_args": [
            {
                "stage_id": 0,
                "runtime": {"devices": "0,1,2,3", "num_replicas": 2},
                "engine_args": {"tensor_parallel_size": 2},
            },
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
    assert [(s.name, s.devices, s.stage_type) for s in stages] == [
        ("stage-0", (), None),  # no topology: the file does not say the type
        ("stage-1-r0", ("1",), None),
        ("stage-1-r1", ("2",), None),
    ]


def test_a_base_config_is_overlaid_as_vllm_omni_overlays_it(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "trust_remote_code: true\n"
        "stages:\n"
        "  - {stage_id: 0, devices: '0', max_model_len: 4096, enforce_eager: true}\n"
        "  - {stage_id: 1, devices: '0', max_model_len: 2048}\n"
    )
    (tmp_path / "overlay.yaml").write_text(
        "base_config: base.yaml\nstages:\n  - {stage_id: 1, devices: '1,2', num_replicas: 2}\n"
    )
    stages = omni_stages(tmp_path / "overlay.yaml")
    assert [(s.name, s.devices) for s in stages] == [
        ("stage-0", ("0",)),
        ("stage-1-r0", ("1",)),
        ("stage-1-r1", ("2",)),
    ]
    assert stages[0].engine_args == {
        "trust_remote_code": True,
        "max_model_len": 4096,
        "enforce_eager": True,
    }
    assert stages[1].engine_args == {"trust_remote_code": True, "max_model_len": 2048}


@pytest.mark.parametrize(
    ("stage_args", "message"),
    [
        ([{"runtime": {}}], r"key 'stage_args\[0\]': needs a 'stage_id'"),
        (
            [{"stage_id": 0}, {"stage_id": 0}],
            r"stage '0': key 'stage_args\[1\].stage_id': is used twice",
        ),
        (
            [{"stage_id": 0, "engine_input_source": [7]}],
            r"stage '0': key 'engine_input_source': names unknown stage 7",
        ),
        (
            [{"stage_id": 0, "runtime": {"devices": "0,1,2", "num_replicas": 2}}],
            r"stage '0': key 'devices': '0,1,2' has 3 device\(s\); 2 replicas of 1 device\(s\) "
            r"need 1 \(a per-replica template\) or 2 \(the pool\)",
        ),
        (
            [{"stage_id": 0, "runtime": {"devices": "0,1", "replicas": 2}}],
            r"stage '0': key 'runtime.replicas': is not a vLLM-Omni key; the replica count is "
            r"runtime.num_replicas",
        ),
        (
            [{"stage_id": 0, "runtime": {"devices": "0,,1"}}],
            r"stage '0': key 'devices': '0,,1' has an empty entry",
        ),
        ([], r"key 'stage_args': has no stages"),
    ],
)
def test_malformed_configs_are_refused_naming_stage_and_key(
    stage_args: list[Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^<mapping>: {message}"):
        omni_stages({"stage_args": stage_args})


def test_a_config_file_is_named_in_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "stages.toml"
    path.write_text("[[stage_args]]\nstage_id = 0\n[[stage_args]]\nstage_id = 0\n")
    with pytest.raises(ConfigError, match=rf"^{path}: stage '0': key 'stage_args\[1\]"):
        omni_stages(path)
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'missing.yaml'}: no such file"):
        omni_stages(tmp_path / "missing.yaml")


MINICPMO_TOPOLOGY: dict[int | str, dict[str, Any]] = {  # vLLM-Omni 0.30's minicpmo_4_5
    0: {"model_stage": "llm", "execution_type": "llm_ar", "input_sources": []},
    1: {"model_stage": "tts", "execution_type": "llm_ar", "input_sources": [0]},
    2: {"model_stage": "code2wav", "execution_type": "llm_generation", "input_sources": [1]},
}


def _kwargs(spec: launch.PipelineSpec) -> dict[str, dict[str, Any]]:
    return {stage.name: dict(stage.specs[0].kwargs["stage"]) for stage in spec.stages}


def test_a_real_deploy_profile_gives_the_stages_its_file_says() -> None:
    yaml = pytest.importorskip("yaml")
    path = DEPLOY / "minicpmo_4_5_3gpu_stage1_replicas.yaml"  # base_config: minicpmo_4_5.yaml
    base = yaml.safe_load((DEPLOY / "minicpmo_4_5.yaml").read_text())
    spec = omni_pipeline(path, model="/models/MiniCPM-o-4_5", topology=MINICPMO_TOPOLOGY)
    assert [(s.name, s.devices) for s in spec.stages] == [
        ("llm", ("0",)),
        ("tts-r0", ("1",)),  # the overlay's devices "1,2" over its 2 replicas
        ("tts-r1", ("2",)),
        ("code2wav", ("0",)),  # the base's
    ]
    stages = _kwargs(spec)
    assert stages["tts-r1"]["stage_id"] == 1 and stages["tts-r1"]["replica"] == 1
    assert stages["tts-r1"]["input_sources"] == (0,)
    assert stages["code2wav"]["stage_type"] == "llm"  # llm_generation
    llm, tts, code2wav = (stages[n]["engine_args"] for n in ("llm", "tts-r0", "code2wav"))
    for engine, entry in [(llm, base["stages"][0]), (code2wav, base["stages"][2])]:
        for key in ("gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens"):
            assert engine[key] == entry[key]
    assert llm["trust_remote_code"] is True  # a pipeline-wide top-level key
    assert llm["async_scheduling"] is False and tts["async_scheduling"] is False  # the overlay
    assert "async_scheduling" not in code2wav
    assert tts["max_model_len"] == base["stages"][1]["max_model_len"]
    # the base's cuda override caps stage 1's KV cache; the overlay's null takes it back
    assert base["platforms"]["cuda"]["stages"][0]["kv_cache_memory_bytes"]
    assert "kv_cache_memory_bytes" not in tts
    npu = _kwargs(omni_pipeline(path, model="m", topology=MINICPMO_TOPOLOGY, platform="npu"))
    assert npu["llm"]["engine_args"]["compilation_config"] == {"cudagraph_mode": "PIECEWISE"}
    assert "compilation_config" not in llm


def test_a_diffusion_stage_is_refused_by_the_llm_engine_target() -> None:
    config = {
        "stage_args": [
            {"stage_id": 0, "engine_args": {"model_stage": "ar"}},
            {"stage_id": 1, "stage_type": "diffusion", "engine_args": {"model_stage": "dit"}},
        ]
    }
    with pytest.raises(
        ConfigError,
        match=r"^<mapping>: stage '1': key 'stage_type': stage_type 'diffusion' is not "
        r"supported here \(supported: llm\)",
    ):
        omni_pipeline(config, model="m")
    # a deploy profile whose types no topology gives is refused too, not run as LLMs
    with pytest.raises(ConfigError, match=r"stage '0': key 'stage_type': the file does not say"):
        omni_pipeline(DEPLOY / "wan2_2_ti2v.yaml", model="m")
    # a target of the caller's own runs any stage type
    spec = omni_pipeline(config, model="m", target="targets:omni_stage")
    assert [_kwargs(spec)[n]["stage_type"] for n in ("ar", "dit")] == ["llm", "diffusion"]


async def test_string_stage_ids_name_their_sources(tmp_path: Path) -> None:
    profile = {
        "connectors": {"shm": {"name": "SharedMemoryConnector"}},
        "stages": [
            {"stage_id": "thinker", "devices": "0", "init_s": 0.1},
            {
                "stage_id": "talker",
                "devices": "1",
                "init_s": 0.1,
                "input_connectors": {"from_stage_thinker": "shm"},
            },
        ],
    }
    topology: dict[int | str, dict[str, Any]] = {
        "thinker": {"model_stage": "thinker", "stage_type": "llm"},
        "talker": {"model_stage": "talker", "stage_type": "llm"},
    }
    stages = omni_stages(profile, topology=topology)
    assert [(s.stage_id, s.name, s.input_sources) for s in stages] == [
        ("thinker", "thinker", ()),
        ("talker", "talker", ("thinker",)),
    ]
    spec = omni_pipeline(
        profile, model="m", topology=topology, target="targets:omni_stage", lock_dir=tmp_path
    )
    async with launch.open_pipeline(spec) as running:
        assert running["talker"]["talker"].payload["sources"] == ["thinker"]


def test_the_topology_comes_from_the_installed_vllm_omni(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a stand-in vllm_omni package with the pipeline registry of vLLM-Omni >= 0.24
    registry = tmp_path / "vllm_omni" / "config"
    registry.mkdir(parents=True)
    (tmp_path / "vllm_omni" / "__init__.py").write_text("")
    (registry / "__init__.py").write_text("")
    (registry / "pipeline_registry.py").write_text(
        "from types import SimpleNamespace as S\n"
        "def resolve_pipeline_config(name, hf_config):\n"
        "    if name != 'minicpmo_4_5':\n"
        "        return None\n"
        "    stage = lambda i, n, t, s: S(stage_id=i, model_stage=n, execution_type=t,\n"
        "        input_sources=s, model_arch=None, engine_output_type=None,\n"
        "        hf_config_name=None, final_output=False, final_output_type=None)\n"
        "    return S(model_arch='MiniCPMO', stages=[stage(0, 'llm', 'llm_ar', ()),\n"
        "        stage(1, 'tts', 'llm_ar', (0,)), stage(2, 'code2wav', 'diffusion', (1,))])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in [m for m in sys.modules if m == "vllm_omni" or m.startswith("vllm_omni.")]:
        monkeypatch.delitem(sys.modules, module)
    try:
        stages = omni_stages(DEPLOY / "minicpmo_4_5.yaml")
        assert [(s.name, s.stage_type, s.model_arch) for s in stages] == [
            ("llm", "llm", "MiniCPMO"),
            ("tts", "llm", "MiniCPMO"),
            ("code2wav", "diffusion", "MiniCPMO"),
        ]
        with pytest.raises(
            ConfigError, match=r"stage '2': key 'stage_type': stage_type 'diffusion'"
        ):
            omni_pipeline(DEPLOY / "minicpmo_4_5.yaml", model="m")
        unknown = tmp_path / "unknown.yaml"
        unknown.write_text("pipeline: no_such_model\nstages: [{stage_id: 0}]\n")
        with pytest.raises(
            ConfigError, match=r"key 'pipeline': the installed vLLM-Omni has no pipeline"
        ):
            omni_stages(unknown)
    finally:
        for module in [m for m in sys.modules if m == "vllm_omni" or m.startswith("vllm_omni.")]:
            del sys.modules[module]


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
