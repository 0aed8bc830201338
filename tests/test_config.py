"""Pipeline files: the schema, and errors that name the file, the stage and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

import launch
from launch._config import missing_targets
from launch._spec import START_METHODS

EXAMPLE = Path(__file__).parent.parent / "examples" / "omni_pipeline.toml"

GOOD = """
[pipeline]
name = "omni"
device_env = ["CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"]
lock_dir = "locks"
device_lock_timeout = "none"
start_method = "forkserver"
ready_timeout = 30
preload = ["json", "targets"]
prefetch = "models/tiny"

[pipeline.shutdown]
stop_timeout = 0.5

[[stage]]
name = "thinker"
target = "targets:serve"
replicas = 3
rank_kwarg = "rank"
devices = [0, "1"]
kwargs = { init = 0.1, payload = { nested = [1, 2] } }

[[stage]]
name = "talker"
target = "targets:serve"
after = "thinker"
start_method = "spawn"
ready_timeout = "none"
env = { MODE = "fast" }
output = "prefix"

[stage.shutdown]
term_timeout = 4
"""


def load(tmp_path: Path, text: str) -> launch.PipelineSpec:
    path = tmp_path / "pipe.toml"
    path.write_text(text)
    return launch.load_pipeline(path)


def test_a_full_file(tmp_path: Path) -> None:
    spec = load(tmp_path, GOOD)
    assert spec.name == "omni"
    assert spec.device_env == ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
    assert spec.lock_dir == tmp_path / "locks"  # relative to the file
    assert spec.device_lock_timeout is None
    assert spec.shutdown == launch.ShutdownPolicy(stop_timeout=0.5)
    assert spec.preload == ("json", "targets") and spec.uses_forkserver
    assert spec.prefetch == (tmp_path / "models" / "tiny",)  # relative to the file
    thinker, talker = spec.stages
    assert [s.name for s in thinker.specs] == ["thinker-0", "thinker-1", "thinker-2"]
    assert [s.kwargs["rank"] for s in thinker.specs] == [0, 1, 2]
    assert thinker.specs[2].kwargs["payload"] == {"nested": [1, 2]}
    assert thinker.devices == ("0", "1")
    assert {s.start_method for s in thinker.specs} == {"forkserver"}  # pipeline default
    assert thinker.specs[0].ready_timeout == 30
    assert talker.after == ("thinker",)
    assert talker.specs[0].start_method == "spawn"
    assert talker.specs[0].ready_timeout is None
    assert dict(talker.env) == {"MODE": "fast"}
    assert talker.specs[0].output == "prefix" and thinker.specs[0].output == "inherit"
    assert talker.shutdown == launch.ShutdownPolicy(term_timeout=4)
    assert [s.name for s in talker.specs] == ["talker-0"]
    assert missing_targets(spec) == []


def test_the_example_file_is_valid() -> None:
    spec = launch.load_pipeline(EXAMPLE)
    assert [s.name for s in spec.order()] == ["thinker", "talker", "vocoder"]


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("[pipeline\n", "", "invalid TOML"),
        ("[pipeline]\nname = 'x'\n", "", "no stages"),
        ("[pipelin]\n", "", "key 'pipelin': unknown key; did you mean 'pipeline'?"),
        (
            "[pipeline]\nstart_method = 'thread'\n[[stage]]\nname='a'\ntarget='m:f'\n",
            "",
            "key 'pipeline.start_method': must be one of",
        ),
        (
            "[pipeline]\nready_timeout = -1\n[[stage]]\nname='a'\ntarget='m:f'\n",
            "",
            "key 'pipeline.ready_timeout': must be a number of seconds >= 0",
        ),
        ("[[stage]]\ntarget = 'm:f'\n", "", "[[stage]] number 1 needs a non-empty 'name'"),
        ("[[stage]]\nname = 'a'\n", "stage 'a'", "key 'target': is required"),
        (
            "[[stage]]\nname = 'a'\ntarget = 'nocolon'\n",
            "stage 'a'",
            "not of the form 'module:qualname'",
        ),
        (
            "[[stage]]\nname = 'a'\ntarget = 'm:f'\nreplica = 2\n",
            "stage 'a'",
            "key 'replica': unknown key; did you mean 'replicas'?",
        ),
        (
            "[[stage]]\nname = 'a'\ntarget = 'm:f'\nreplicas = 0\n",
            "stage 'a'",
            "key 'replicas': must be an integer >= 1",
        ),
        ("[[stage]]\nname = 'a'\ntarget = 'm:f'\nreplicas = true\n", "stage 'a'", "key 'replicas'"),
        (
            "[[stage]]\nname = 'a'\ntarget = 'm:f'\nstart_method = 'thread'\n",
            "stage 'a'",
            f"key 'start_method': must be one of {', '.join(START_METHODS)}",
        ),
        ("[[stage]]\nname = 'a'\ntarget = 'm:f'\ndevices = 0\n", "stage 'a'", "key 'devices'"),
        (
            "[[stage]]\nname = 'a'\ntarget = 'm:f'\ndevices = [0, 0]\n",
            "stage 'a'",
            "lists a device twice",
        ),
        (
            "[[stage]]\nname = 'a'\ntarget = 'm:f'\nenv = { N = 1 }\n",
            "stage 'a'",
            "env['N'] must be a string",
        ),
        (
            "[[stage]]\nname = 'a'\ntarget = 'm:f'\nkwargs = 3\n",
            "stage 'a'",
            "key 'kwargs': must be a table",
        ),
        (
            "[[stage]]\nname = 'a'\ntarget = 'm:f'\nrank_kwarg = 'r'\nkwargs = { r = 1 }\n",
            "stage 'a'",
            "key 'rank_kwarg'",
        ),
        (
            "[[stage]]\nname = 'a'\ntarget = 'm:f'\n[stage.shutdown]\nstop = 1\n",
            "stage 'a'",
            "key 'shutdown.stop': unknown key; did you mean 'stop_timeout'?",
        ),
        (
            "[[stage]]\nname = 'a'\ntarget = 'm:f'\n[stage.shutdown]\nkill_timeout = 'none'\n",
            "stage 'a'",
            "teardown is always bounded",
        ),
        (
            "[[stage]]\nname = 'a'\ntarget = 'm:f'\nafter = ['b']\n",
            "",
            "stage 'a' starts after unknown stage 'b'",
        ),
        (
            "[[stage]]\nname = 'a'\ntarget = 'm:f'\nafter = ['a']\n",
            "stage 'a'",
            "cannot start after itself",
        ),
        (
            "[[stage]]\nname = 'a'\ntarget = 'm:f'\nafter = ['b']\n"
            "[[stage]]\nname = 'b'\ntarget = 'm:f'\nafter = ['a']\n",
            "",
            "wait for each other: a -> b -> a",
        ),
        (
            "[[stage]]\nname = 'a'\ntarget = 'm:f'\n[[stage]]\nname = 'a'\ntarget = 'm:f'\n",
            "",
            "duplicate stage name 'a'",
        ),
        (
            "[pipeline]\npreload = [1]\n[[stage]]\nname = 'a'\ntarget = 'm:f'\n",
            "key 'pipeline.preload'",
            "must be a list of strings",
        ),
        (
            "[pipeline]\nprefetch = {}\n[[stage]]\nname = 'a'\ntarget = 'm:f'\n",
            "key 'pipeline.prefetch'",
            "must be a list of strings",
        ),
    ],
)
def test_errors_name_file_stage_and_key(tmp_path: Path, text: str, where: str, what: str) -> None:
    with pytest.raises(launch.ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "pipe.toml") + ":")
    assert where in message
    assert what in message
    assert isinstance(info.value, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(launch.ConfigError, match=r"nope\.toml: no such file"):
        launch.load_pipeline(tmp_path / "nope.toml")


def test_missing_target_module_is_reported(tmp_path: Path) -> None:
    spec = load(tmp_path, "[[stage]]\nname = 'a'\ntarget = 'no_such_module_xyz:run'\n")
    assert missing_targets(spec) == [
        "stage 'a': key 'target': module 'no_such_module_xyz' of 'no_such_module_xyz:run' "
        "cannot be found"
    ]


def test_invalid_stage_and_pipeline_specs_raise_before_anything_starts() -> None:
    serve = launch.ProcessSpec("targets:serve", name="s")
    with pytest.raises(ValueError, match="unknown stage 'x'"):
        launch.PipelineSpec([launch.StageSpec("a", [serve], after=("x",))])
    with pytest.raises(ValueError, match="a -> b -> c -> a"):
        launch.PipelineSpec(
            [
                launch.StageSpec("a", [serve], after=("b",)),
                launch.StageSpec("b", [serve], after=("c",)),
                launch.StageSpec("c", [serve], after=("a",)),
            ]
        )
    with pytest.raises(ValueError, match="devices must be a list"):
        launch.StageSpec("a", [serve], devices=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device index must be >= 0"):
        launch.StageSpec("a", [serve], devices=(-1,))
    with pytest.raises(ValueError, match="has no ProcessSpec"):
        launch.StageSpec("a", [])
    with pytest.raises(ValueError, match="device_env must name environment variables"):
        launch.PipelineSpec([launch.StageSpec("a", [serve])], device_env="CUDA VISIBLE")
    with pytest.raises(ValueError, match="no stages"):
        launch.PipelineSpec([])


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (control characters escaped)."""
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 32 or c in '"\\' else c for c in text) + '"'


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    # what TOML can hold of the cases of tests/test_spec.py (no lone surrogates)
    [
        ("MY_VAR", "1", True),
        ("MY-VAR", "1", True),
        ("É", "1", True),
        ("X", "line\nbreak", True),
        ("A=B", "1", False),
        ("", "1", False),
        ("A\0", "1", False),
        ("A B", "1", False),
        ("X", "a\0b", False),
    ],
)
def test_the_file_follows_the_env_rule_of_the_specs(
    tmp_path: Path, name: str, value: str, accepted: bool
) -> None:
    env = f"{{ {toml_string(name)} = {toml_string(value)} }}"
    stage = f"{STAGE_A}env = {env}\n"
    child = launch.ProcessSpec("m:f", name="a-0")
    if accepted:
        assert dict(load(tmp_path, stage)["a"].env) == {name: value}
        launch.StageSpec("a", [child], env={name: value})  # the same verdict
        return
    with pytest.raises(ValueError) as spec_error:
        launch.StageSpec("a", [child], env={name: value})
    with pytest.raises(launch.ConfigError) as info:
        load(tmp_path, stage)
    assert (info.value.stage, info.value.key) == ("a", "env")
    # the same message as the StageSpec's, after the file, stage and key
    assert str(info.value).endswith(": key 'env': " + str(spec_error.value).split(": ", 1)[1])


def test_file_device_env_and_duplicate_stages_name_their_key(tmp_path: Path) -> None:
    bad_env = load_error(tmp_path, "[pipeline]\ndevice_env = ['CUDA VISIBLE']\n" + STAGE_A)
    assert bad_env.key == "pipeline.device_env"
    assert "must name environment variables; 'CUDA VISIBLE' is not a valid" in str(bad_env)
    twice = load_error(tmp_path, STAGE_A + STAGE_A)
    assert (twice.stage, twice.key) == ("a", "name")
    assert str(twice).endswith(": stage 'a': key 'name': duplicate stage name 'a'")


STAGE_A = "[[stage]]\nname = 'a'\ntarget = 'm:f'\n"


def load_error(tmp_path: Path, text: str) -> launch.ConfigError:
    with pytest.raises(launch.ConfigError) as info:
        load(tmp_path, text)
    return info.value
