"""ProcessSpec / ShutdownPolicy validation, the child API outside a child, error text."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

import launch
from launch import ProcessSpec, ShutdownPolicy


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": "m:f", "name": ""}, "non-empty"),
        ({"target": "m:f", "name": "   "}, "non-empty"),
        ({"target": "no_colon", "name": "a"}, "module:qualname"),
        ({"target": "m:", "name": "a"}, "module:qualname"),
        ({"target": "m:f g", "name": "a"}, "module:qualname"),
        ({"target": 42, "name": "a"}, "callable"),
        ({"target": "m:f", "name": "a", "start_method": "thread"}, "unknown start method"),
        ({"target": "m:f", "name": "a", "env": {"X": 1}}, r"env\['X'\] must be a string"),
        ({"target": "m:f", "name": "a", "env": {1: "x"}}, "env key"),
        ({"target": "m:f", "name": "a", "env": {"A=B": "x"}}, "env key"),
        ({"target": "m:f", "name": "a", "ready_timeout": -1}, "ready_timeout must be >= 0"),
        ({"target": "m:f", "name": "a", "ready_timeout": float("nan")}, "ready_timeout"),
        ({"target": "m:f", "name": "a", "kwargs": {1: 2}}, "string keys"),
    ],
)
def test_invalid_spec_raises_value_error(kwargs: dict[str, object], match: str) -> None:
    target = kwargs.pop("target")
    with pytest.raises(ValueError, match=match):
        ProcessSpec(target, **kwargs)  # type: ignore[arg-type]


def test_valid_spec_is_frozen_and_copies_its_mappings() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    spec = ProcessSpec("pkg.mod:Class.run", name="e0", env=env, ready_timeout=None)
    env["CUDA_VISIBLE_DEVICES"] = "1"
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "0"
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
    assert spec.target_name == "pkg.mod:Class.run"


def test_group_validation_happens_before_any_spawn() -> None:
    a = ProcessSpec("m:f", name="same")
    with pytest.raises(ValueError, match="duplicate child name 'same'"):
        launch.open_group([a, ProcessSpec("m:g", name="same")], name="tp")
    with pytest.raises(ValueError, match="has no ProcessSpec"):
        launch.open_group([], name="tp")
    with pytest.raises(ValueError, match="not a single one"):
        launch.open_group(a)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected ProcessSpec"):
        launch.open_group(["m:f"])  # type: ignore[list-item]


def test_shutdown_policy() -> None:
    assert ShutdownPolicy().budget == pytest.approx(5.0)
    with pytest.raises(ValueError, match="term_timeout"):
        ShutdownPolicy(term_timeout=-1)


@pytest.mark.parametrize(
    "call",
    [
        lambda: launch.ready(),
        lambda: launch.phase("x"),
        lambda: launch.stop_requested(),
        lambda: launch.wait_for_stop(0),
    ],
)
def test_child_api_outside_a_child_raises(call: object) -> None:
    with pytest.raises(RuntimeError, match="inside a process started by launch"):
        call()  # type: ignore[operator]


def test_import_launch_does_not_import_anyio_or_trio() -> None:
    code = "import sys, launch; print(sorted(m for m in ('anyio', 'trio') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_child_failed_text_and_pickling() -> None:
    tb = "Traceback (most recent call last):\n" + "".join(f"  line {i}\n" for i in range(30))
    tb += "RuntimeError: boom"
    exc = launch.ChildCrashed(
        "engine-1", group="dp", pid=123, exitcode=-9, phase="load_model",
        remote_traceback=tb, remote_type="RuntimeError", remote_message="boom", failed_at=2.0,
    )  # fmt: skip
    text = str(exc)
    assert "child 'engine-1' of group 'dp' (pid 123) crashed before READY" in text
    assert "killed by SIGKILL" in text and "'load_model'" in text
    assert text.endswith("RuntimeError: boom") and "line 0\n" not in text  # only the tail
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is launch.ChildCrashed and str(copy) == text

    later = launch.ChildDied("engine-0", failed_at=3.0)
    group = launch.LaunchFailed("x", [later, exc])
    assert group.first is exc
    assert isinstance(group.split(launch.ChildDied)[0], launch.LaunchFailed)


# One env rule (launch._spec.env_problem) for ProcessSpec.env, StageSpec.env,
# device_env and a pipeline file's env / device_env (tests/test_config.py).
ENV_CASES = [
    # (name, value, accepted)
    ("MY_VAR", "1", True),
    ("MY-VAR", "1", True),  # no shell can export it, but programs read it
    ("É", "1", True),
    ("X", "line\nbreak", True),
    ("X", "\udcff", True),  # an undecodable byte (surrogateescape) encodes back
    ("A=B", "1", False),  # os.environ: illegal environment variable name
    ("", "1", False),
    ("A\0", "1", False),  # embedded null byte
    ("A B", "1", False),  # works in the OS; a shell cannot write it: refused
    ("X", "a\0b", False),
    ("X", "\ud800", False),  # a lone surrogate: os.environ cannot encode it
]


@pytest.mark.parametrize(("name", "value", "accepted"), ENV_CASES)
def test_one_env_rule_for_child_stage_and_device_env(name: str, value: str, accepted: bool) -> None:
    env = {name: value}
    child = ProcessSpec("m:f", name="a")
    makers: dict[str, Callable[[], ProcessSpec | launch.StageSpec]] = {
        "ProcessSpec 'a'": lambda: ProcessSpec("m:f", name="a", env=env),
        "stage 's'": lambda: launch.StageSpec("s", [child], env=env),
    }
    for owner, make in makers.items():
        if accepted:
            assert dict(make().env) == env
            continue
        with pytest.raises(ValueError) as info:
            make()
        message = str(info.value)
        assert message.startswith(f"{owner}: env")  # names the child or stage, and the key
        assert repr(name) in message
    stage = launch.StageSpec("s", [child])
    if value == "1":  # the name alone decides: device_env follows the same rule
        if accepted:
            assert launch.PipelineSpec([stage], device_env=name).device_env == (name,)
        else:
            with pytest.raises(
                ValueError, match=rf"device_env must name .*{re.escape(repr(name))}"
            ):
                launch.PipelineSpec([stage], device_env=[name])


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, v, ok in ENV_CASES if ok])
def test_every_env_launch_accepts_the_os_accepts(name: str, value: str) -> None:
    """No accepted env fails later, in a spawn (a value with a lone surrogate did)."""
    code = "import os, sys; sys.exit(os.environ[sys.argv[1]] != sys.argv[2])"
    spec = ProcessSpec("m:f", name="a", env={name: value})
    result = subprocess.run([sys.executable, "-c", code, name, value], env={**spec.env})
    assert result.returncode == 0


def test_one_uniqueness_rule_for_children_and_stages() -> None:
    a = ProcessSpec("m:f", name="a")
    with pytest.raises(ValueError, match=r"^group 'g': duplicate child name 'a'$"):
        launch.open_group([a, a], name="g")
    with pytest.raises(ValueError, match=r"^stage 's': duplicate child name 'a'$"):
        launch.StageSpec("s", [a, a])
    stage = launch.StageSpec("s", [a])
    with pytest.raises(ValueError, match=r"^pipeline 'p': duplicate stage name 's'$"):
        launch.PipelineSpec([stage, stage], name="p")
    with pytest.raises(ValueError, match=r"^stage 's': pass a list of ProcessSpec, not a single"):
        launch.StageSpec("s", a)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^pipeline 'p': pass a list of StageSpec, not a single"):
        launch.PipelineSpec(stage, name="p")  # type: ignore[arg-type]
