"""ProcessSpec / ShutdownPolicy validation, the child API outside a child, error text."""

from __future__ import annotations

import pickle
import subprocess
import sys

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
