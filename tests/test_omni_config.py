"""launch.integrations._omni_config: vLLM-Omni's deploy profiles and legacy stage configs,
read as vLLM-Omni reads them (fixtures: tests/data/omni, from the vllm-omni wheels), and
every way a file can be refused."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from launch import ConfigError
from launch.integrations._omni_config import MAX_BASE_DEPTH, deploy_pipeline, read_omni_config

yaml = pytest.importorskip("yaml")

DATA = Path(__file__).parent / "data" / "omni"
DEPLOY = DATA / "deploy"
LEGACY = DATA / "stage_configs"
NOT_PROFILES = {"qwen3_tts_forced_aligner.yaml"}  # an engine fragment the aligner injects
# vllm-omni 0.22.0's own file: its npu/xpu override puts a 2-replica stage on one device,
# which vLLM-Omni's split_devices_for_replicas refuses too
REFUSED = {
    ("qwen3_omni_moe_multi_replicas.yaml", "npu"),
    ("qwen3_omni_moe_multi_replicas.yaml", "xpu"),
}


def _installed_deploy_dir() -> Path | None:
    spec = importlib.util.find_spec("vllm_omni")  # locates, does not import vllm_omni
    if spec is None or spec.origin is None:
        return None
    found = Path(spec.origin).parent / "deploy"
    return found if found.is_dir() else None


def _profiles() -> list[Path]:
    installed = _installed_deploy_dir()  # all of them where vllm-omni is installed
    files = sorted((installed or DEPLOY).glob("*.yaml"))
    return [f for f in files if f.name not in NOT_PROFILES]


def _devices(value: Any) -> tuple[str, ...]:
    return () if value is None else tuple(p.strip() for p in str(value).split(","))


@pytest.mark.parametrize("path", _profiles(), ids=lambda p: p.name)
@pytest.mark.parametrize("platform", ["cuda", "npu", "xpu", "rocm"])
def test_every_deploy_profile_reads_as_the_file_says(path: Path, platform: str) -> None:
    raw = yaml.safe_load(path.read_text())
    if (path.name, platform) in REFUSED:
        with pytest.raises(ConfigError, match=r"key 'devices': .* per-replica template"):
            read_omni_config(path, platform=platform)
        return
    config = read_omni_config(path, platform=platform)
    if "stage_args" in raw:  # vllm-omni 0.22's deploy/ still holds two legacy files
        assert config.schema == "stage_args"
        assert [s.stage_id for s in config.stages] == [s["stage_id"] for s in raw["stage_args"]]
        return
    assert config.schema == "deploy" and config.platform == platform
    assert config.pipeline == raw.get("pipeline")
    ids = [s.stage_id for s in config.stages]
    assert len(set(map(str, ids))) == len(ids)
    if "base_config" not in raw:
        assert ids == [s["stage_id"] for s in raw["stages"]]
        overridden = {
            s["stage_id"]
            for s in ((raw.get("platforms") or {}).get(platform) or {}).get("stages", [])
        }
        for entry in raw["stages"]:
            stage = config.stage(entry["stage_id"])
            flat = [k for k, v in entry.items() if v is not None and not _reserved(k)]
            if flat:
                assert stage.engine_args, f"stage {stage.stage_id}: engine keys came out empty"
            for key in flat:
                if entry["stage_id"] not in overridden:
                    assert stage.engine_args[key] == entry[key]
            if entry["stage_id"] not in overridden and stage.replicas == 1:
                expect = _devices(entry.get("devices"))
                assert stage.devices == ((expect,) if expect else ())
            for key in entry.get("input_connectors") or {}:
                source = key.removeprefix("from_stage_")
                assert source in [str(s) for s in stage.input_sources]
    for stage in config.stages:
        assert stage.name == f"stage-{stage.stage_id}"  # the names are in the registry
        assert stage.stage_type in (None, "llm", "diffusion")
        assert len(stage.devices) in (0, stage.replicas)


def _reserved(key: str) -> bool:
    from launch.integrations._omni_config import _RESERVED

    return key in _RESERVED


def _legacy() -> list[Path]:  # stage_configs/ of vllm-omni 0.24 also holds a deploy file
    return [
        p for p in sorted(LEGACY.glob("*.yaml")) if "stage_args" in yaml.safe_load(p.read_text())
    ]


@pytest.mark.parametrize("path", _legacy(), ids=lambda p: p.name)
def test_every_legacy_stage_config_reads_as_the_file_says(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    config = read_omni_config(path)
    assert config.schema == "stage_args"
    assert [s.stage_id for s in config.stages] == [s["stage_id"] for s in raw["stage_args"]]
    for entry, stage in zip(raw["stage_args"], config.stages, strict=True):
        engine = entry.get("engine_args") or {}
        assert stage.engine_args == engine and stage.engine_args
        assert stage.stage_type == entry.get("stage_type", "llm")
        assert stage.model_stage == engine.get("model_stage")
        assert stage.model_arch == engine.get("model_arch")
        assert stage.engine_output_type == engine.get("engine_output_type")
        assert stage.hf_config_name == engine.get("hf_config_name")
        assert stage.devices == (_devices(entry["runtime"].get("devices")),)
        assert list(stage.input_sources) == list(entry.get("engine_input_source") or [])


def test_a_legacy_config_keeps_names_types_and_data_flow() -> None:
    config = read_omni_config(LEGACY / "step_audio_2.yaml")
    assert [
        (s.stage_id, s.name, s.stage_type, s.devices, s.input_sources, s.engine_output_type)
        for s in config.stages
    ] == [
        (0, "step_audio2_thinker", "llm", (("0", "1", "2", "3"),), (), "text"),
        (1, "token2wav", "llm", (("3",),), (0,), "audio"),
    ]
    assert config.stages[0].model_arch == "StepAudio2ThinkerForConditionalGeneration"


def test_platform_overrides_replace_keys_and_devices_per_platform() -> None:
    path = DEPLOY / "qwen3_omni_moe.yaml"
    cuda, npu = read_omni_config(path), read_omni_config(path, platform="npu")
    assert cuda.stage(0).devices == (("0",),)
    assert cuda.stage(0).engine_args["compilation_config"] == {"custom_ops": ["+rotary_embedding"]}
    assert npu.stage(0).devices == (("0", "1"),)
    assert npu.stage(0).engine_args["tensor_parallel_size"] == 2
    assert npu.stage(0).engine_args["compilation_config"] == {"cudagraph_mode": "PIECEWISE"}
    assert npu.stage(0).engine_args["moe_backend"] == "triton"  # kept from the stage
    # the data flow and its connector, resolved against the named connectors
    assert [s.input_sources for s in cuda.stages] == [(), (0,), (1,)]
    assert cuda.stage(1).input_connectors[0]["name"] == "SharedMemoryConnector"
    assert cuda.stage(1).input_connectors[0]["extra"]["codec_chunk_frames"] == 25
    assert cuda.stage(0).engine_args["max_num_seqs"] == 64
    assert cuda.stage(1).default_sampling_params == {
        "seed": 42, "temperature": 0.9, "top_k": 50, "max_tokens": 4096,
        "repetition_penalty": 1.05,
    }  # fmt: skip
    assert cuda.stage(0).async_chunk is True


def test_a_base_config_overlay_merges_stages_by_id() -> None:
    base = read_omni_config(DEPLOY / "minicpmo_4_5.yaml")
    config = read_omni_config(DEPLOY / "minicpmo_4_5_3gpu_stage1_replicas.yaml")
    stage0, stage1 = config.stage(0), config.stage(1)
    assert stage0.engine_args["async_scheduling"] is False  # the overlay's key
    assert stage0.engine_args["max_num_seqs"] == base.stage(0).engine_args["max_num_seqs"]
    assert stage0.default_sampling_params == base.stage(0).default_sampling_params
    assert (stage1.replicas, stage1.devices) == (2, (("1",), ("2",)))
    # cuda's override sets kv_cache_memory_bytes to null: vLLM-Omni's automatic sizing
    assert "kv_cache_memory_bytes" in base.stage(1).engine_args
    assert "kv_cache_memory_bytes" not in stage1.engine_args
    assert config.settings["session_mode"] == "duplex"  # inherited top-level key
    assert config.connectors == base.connectors


def test_a_two_level_base_config_chain() -> None:
    top = yaml.safe_load((DEPLOY / "qwen3_tts_high_concurrency_mrv2_b4.yaml").read_text())
    config = read_omni_config(DEPLOY / "qwen3_tts_high_concurrency_mrv2_b4.yaml")
    root = read_omni_config(DEPLOY / "qwen3_tts_high_concurrency.yaml")
    assert [s.stage_id for s in config.stages] == [s.stage_id for s in root.stages]
    for key, value in top.items():
        if key not in ("base_config", "stages", "platforms", "connectors"):
            assert config.settings[key] == value
    assert config.model_runner == top.get("model_runner", config.model_runner)


def test_edges_and_a_parallel_config_split_replicas_over_devices() -> None:
    config = read_omni_config(DEPLOY / "hunyuan-image-3-mooncakeconnector.yaml")
    ar, dit = config.stages
    assert (ar.replicas, ar.devices) == (2, (("0", "1"), ("2", "3")))  # tp 2
    assert (dit.replicas, dit.devices) == (2, (("4", "5"), ("6", "7")))  # parallel_config tp 2
    assert dit.input_sources == (0,)  # from `edges`
    assert ar.env is not None and ar.env["VLLM_USE_FLASHINFER_SAMPLER"] == "0"


def test_engine_extras_and_pipeline_wide_keys_are_engine_options() -> None:
    config = read_omni_config(DEPLOY / "breeze_tts.yaml")
    raw = yaml.safe_load((DEPLOY / "breeze_tts.yaml").read_text())
    stage = config.stage(0)
    assert stage.engine_args["additional_config"] == {"cfg_prefill_delay_tokens": 8}
    assert stage.output_connectors[1]["name"]
    for key in ("trust_remote_code", "dtype"):
        if key in raw:
            assert all(s.engine_args[key] == raw[key] for s in config.stages)


QWEN25_TOPOLOGY: dict[int | str, dict[str, Any]] = {
    0: {"model_stage": "thinker", "execution_type": "llm_ar", "input_sources": []},
    1: {"model_stage": "talker", "execution_type": "llm_ar", "input_sources": [0]},
    2: {"model_stage": "code2wav", "execution_type": "llm_generation", "input_sources": [1]},
}


def test_a_topology_names_the_stages_and_gives_their_types() -> None:
    config = read_omni_config(DEPLOY / "qwen2_5_omni.yaml", topology=QWEN25_TOPOLOGY)
    assert [(s.name, s.stage_type, s.input_sources) for s in config.stages] == [
        ("thinker", "llm", ()),
        ("talker", "llm", (0,)),
        ("code2wav", "llm", (1,)),
    ]
    assert config.stage(2).devices == (("0",),) and config.stage(2).engine_args
    with pytest.raises(ConfigError, match=r"stage '2': key 'stage_id': is not a stage of"):
        read_omni_config(DEPLOY / "qwen2_5_omni.yaml", topology={0: {}, 1: {}})


def test_a_stage_type_launch_cannot_run_is_refused_not_run_as_an_llm() -> None:
    topology: dict[int | str, dict[str, Any]] = {
        0: {"model_stage": "dit", "execution_type": "diffusion"}
    }
    with pytest.raises(
        ConfigError,
        match=r"stage '0': key 'execution_type': stage_type 'diffusion' is not supported here "
        r"\(supported: llm\)",
    ):
        read_omni_config(DEPLOY / "wan2_2_ti2v.yaml", topology=topology, stage_types=["llm"])
    legacy = LEGACY / "wan2_2_ti2v_dit_fp8.yaml"
    with pytest.raises(ConfigError, match=r"stage_type 'diffusion' is not supported here"):
        read_omni_config(legacy, stage_types=["llm"])
    # a deploy profile does not say its stages' types: refused, with the way out
    with pytest.raises(
        ConfigError, match=r"stage types are in vLLM-Omni's pipeline registry; pass topology="
    ):
        read_omni_config(DEPLOY / "qwen2_5_omni.yaml", stage_types=["llm"])


def test_string_stage_ids_are_kept_as_given() -> None:
    config = read_omni_config(
        {
            "connectors": {"shm": {"name": "SharedMemoryConnector"}},
            "stages": [
                {"stage_id": "thinker", "devices": 0, "max_num_seqs": 2},
                {"stage_id": "talker", "input_connectors": {"from_stage_thinker": "shm"}},
            ],
        }
    )
    assert [(s.stage_id, s.devices, s.input_sources) for s in config.stages] == [
        ("thinker", (("0",),), ()),
        ("talker", (), ("thinker",)),
    ]


def test_toml_and_mappings_need_no_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML "not installed"
    path = tmp_path / "stages.toml"
    path.write_text('[[stages]]\nstage_id = 0\ndevices = "0,1"\nmax_num_seqs = 4\n')
    assert read_omni_config(path).stage(0).engine_args == {"max_num_seqs": 4}
    assert read_omni_config({"stage_args": [{"stage_id": 0}]}).stage(0).stage_type == "llm"
    with pytest.raises(ConfigError, match=r"reading YAML needs PyYAML .*TOML file or a mapping"):
        read_omni_config(DEPLOY / "qwen2_5_omni.yaml")


def _write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


ONE = {"stages": [{"stage_id": 0, "devices": "0"}]}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"stage_args": [{"stage_id": 0, "stage_type": "vision"}]},
         r"stage '0': key 'stage_type': unknown stage type 'vision'"),
        ({"stages": [{"stage_id": 0}]} | {"stages": [{"stage_id": 0, "execution_type": "tts"}]},
         r"stage '0': key 'execution_type': unknown stage type 'tts'"),
        ({"stages": [{"stage_id": 0, "devices": 1.5}]},
         r"stage '0': key 'devices': must be device indexes or ids"),
        ({"stages": [{"stage_id": 0, "devices": [0, {"id": 1}]}]},
         r"stage '0': key 'devices': device \{'id': 1\} is a dict, not an int or a string"),
        ({"stages": [{"stage_id": 0, "devices": True}]}, r"key 'devices': must be device"),
        ({"stages": [{"stage_id": 0, "devices": "0,,1"}]}, r"'0,,1' has an empty entry"),
        ({"stages": [{"stage_id": 0, "devices": "0,1,2", "num_replicas": 2}]},
         r"stage '0': key 'devices': '0,1,2' has 3 device\(s\); 2 replicas of 1 device"),
        ({"stages": [{"stage_id": 0}, {"stage_id": 0}]},
         r"stage '0': key 'stages\[1\].stage_id': is used twice"),
        ({"stages": [{"stage_id": 0}, {"stage_id": "0"}]}, r"is used twice"),
        ({"stages": [{"stage_id": True}]}, r"key 'stages\[0\].stage_id': must be an integer"),
        ({"stages": [{"devices": "0"}]}, r"key 'stages\[0\]': needs a 'stage_id'"),
        ({"stages": [{"stage_id": 0, "input_connectors": {"from_stage_7": {"name": "X"}}}]},
         r"stage '0': key 'input_connectors.from_stage_7': names unknown stage '7'"),
        ({"stages": [{"stage_id": 0, "output_connectors": {"to_stage_1": "nope"}}]},
         r"key 'output_connectors.to_stage_1': names an unknown connector 'nope'"),
        ({"stages": [{"stage_id": 0, "input_connectors": {"stage_1": {"name": "X"}}}]},
         r"keys are from_stage_<stage id>"),
        ({"stage_args": [{"stage_id": 0, "engine_input_source": [3]}]},
         r"stage '0': key 'engine_input_source': names unknown stage 3"),
        ({"stage_args": [{"stage_id": 0, "engine_input_source": [0]}]},
         r"a stage cannot read from itself"),
        ({"stages": [{"stage_id": 0}], "edges": [{"from": 5, "to": 0}]},
         r"key 'edges\[0\].from': names unknown stage 5"),
        ({"stages": [{"stage_id": 0, "runtime": {"replicas": 2}}]},
         r"key 'runtime.replicas': is not a vLLM-Omni key; the replica count is num_replicas"),
        ({"stages": [{"stage_id": 0, "num_replicas": -1}]}, r"key 'num_replicas': must be"),
        ({"stages": [{"stage_id": 0}], "model_runner": "v3"}, r"key 'model_runner'"),
        ({"stages": []}, r"key 'stages': has no stages"),
        ({"stage": []}, r"no 'stages' list \(a deploy profile\) and no 'stage_args'"),
        ({"stages": [{"stage_id": 0}], "platforms": {"cuda": {"stages": [{"stage_id": 0,
          "runtime": {"devices": "1"}}]}}},
         r"key 'platforms.cuda.stages\[0\].runtime': without engine_args"),
    ],
)  # fmt: skip
def test_errors_name_the_file_the_stage_and_the_key(
    tmp_path: Path, data: dict[str, Any], match: str
) -> None:
    path = _write(tmp_path / "profile.yaml", data)
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/profile.yaml: .*{match}"):
        read_omni_config(path)


def test_base_config_missing_cyclic_or_too_deep(tmp_path: Path) -> None:
    top = _write(tmp_path / "top.yaml", {"base_config": "gone.yaml", **ONE})
    with pytest.raises(ConfigError, match=r"top.yaml: key 'base_config': 'gone.yaml': no such"):
        read_omni_config(top)
    _write(tmp_path / "a.yaml", {"base_config": "b.yaml", **ONE})
    _write(tmp_path / "b.yaml", {"base_config": "a.yaml", **ONE})
    with pytest.raises(ConfigError, match=r"b.yaml: key 'base_config': 'a.yaml': base_config "
                       r"comes back to a file: .*a.yaml -> .*b.yaml -> .*a.yaml"):  # fmt: skip
        read_omni_config(tmp_path / "a.yaml")
    for i in range(100):  # a 100-deep chain
        _write(tmp_path / f"c{i}.yaml", {"base_config": f"c{i + 1}.yaml", **ONE})
    _write(tmp_path / "c100.yaml", ONE)
    with pytest.raises(ConfigError, match=rf"base_config chains more than {MAX_BASE_DEPTH}"):
        read_omni_config(tmp_path / "c0.yaml")
    assert read_omni_config(tmp_path / f"c{100 - MAX_BASE_DEPTH + 1}.yaml").stages
    _write(tmp_path / "legacy.yaml", {"base_config": "c100.yaml", "stage_args": []})
    with pytest.raises(ConfigError, match=r"stage_args loader does not read it"):
        read_omni_config(tmp_path / "legacy.yaml")


def test_a_symlink_loop_of_base_configs_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "real.yaml", {"base_config": "link.yaml", **ONE})
    (tmp_path / "link.yaml").symlink_to(tmp_path / "real.yaml")
    with pytest.raises(ConfigError, match=r"base_config comes back to a file"):
        read_omni_config(tmp_path / "real.yaml")
    (tmp_path / "self.yaml").symlink_to(tmp_path / "self.yaml")
    with pytest.raises(ConfigError, match=r"self.yaml: cannot be read"):
        read_omni_config(tmp_path / "self.yaml")


def test_hostile_files_are_refused_in_bounded_time(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    huge.write_text("stages: []\n" + "#" * (1024 * 1024))
    with pytest.raises(ConfigError, match=r"huge.yaml: is larger than 1024 KiB"):
        read_omni_config(huge)
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"dir.yaml: is a directory, not a regular file"):
        read_omni_config(tmp_path / "dir.yaml")
    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(ConfigError, match=r"fifo.yaml: is a FIFO, not a regular file"):
        read_omni_config(tmp_path / "fifo.yaml")
    for text, match in [
        ("- 1\n- 2\n", r"must be a mapping with a 'stages' list, got list"),
        ("just text", r"must be a mapping with a 'stages' list, got str"),
        ("stages: [\n", r"invalid YAML"),
        ("stages: " + "[" * 5000 + "]" * 5000, r"values nested deeper than 32 levels"),
        ("a: " + "[" * 40 + "]" * 40 + "\nstages: []", r"values nested deeper than 32 levels"),
    ]:
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match=rf"bad.yaml: {match}"):
            read_omni_config(tmp_path / "bad.yaml")
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]"
        for p, c in zip("abcdefg", "bcdefgh", strict=True)
    ]
    (tmp_path / "bomb.yaml").write_text("\n".join(bomb) + "\nstages: [{stage_id: 0}]\n")
    with pytest.raises(ConfigError, match=r"bomb.yaml: has more than 200000 values"):
        read_omni_config(tmp_path / "bomb.yaml")
    with pytest.raises(ConfigError, match=r"missing.yaml: no such file"):
        read_omni_config(tmp_path / "missing.yaml")


def test_a_self_referencing_mapping_is_refused() -> None:
    loop: dict[str, Any] = {"stage_id": 0}
    loop["self"] = loop
    with pytest.raises(ConfigError, match=r"<mapping>: values nested deeper than 32 levels"):
        read_omni_config({"stages": [loop]})


def test_deploy_pipeline_is_the_profiles_registry_key_after_its_base(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("pipeline: minicpmo_4_5\nstages: [{stage_id: 0}]\n")
    (tmp_path / "overlay.yaml").write_text("base_config: base.yaml\nstages: [{stage_id: 0}]\n")
    assert deploy_pipeline(tmp_path / "overlay.yaml") == "minicpmo_4_5"
    assert deploy_pipeline(DEPLOY / "qwen2_5_omni.yaml") is None  # found from the model
    assert deploy_pipeline({"pipeline": "x", "stage_args": [{"stage_id": 0}]}) is None
