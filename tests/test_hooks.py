"""launch.hooks: the one surface integrations use for launch's internals."""

from __future__ import annotations

import ast
import re
import threading
from pathlib import Path

import launch
import launch.hooks
from launch.hooks import environ_lock
from launch.testing import misbehaving

ROOT = Path(__file__).parent.parent


def test_every_hook_is_documented() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^\.\. auto\w+:: ([\w.]+)", text, re.MULTILINE))
    missing = [n for n in launch.hooks.__all__ if f"launch.hooks.{n}" not in documented]
    assert not missing


# A placement backend implements launch's start step itself (it hands back a Spawned
# child and its process handle), so it works with those internals by design.
START_STEP_BACKENDS = {"ray.py"}


def test_public_integrations_import_no_private_module() -> None:
    paths = [
        *(ROOT / "launch" / "testing").glob("*.py"),
        *(ROOT / "launch" / "integrations").glob("[!_]*.py"),
    ]
    for path in paths:
        if path.name in START_STEP_BACKENDS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
                assert not node.module.startswith("_"), f"{path.name}: from ..{node.module}"


def test_a_spawn_waits_while_another_thread_holds_the_environ_lock(no_leaked_processes) -> None:
    held, release, started = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        with environ_lock():
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)

    def start() -> None:
        with launch.start_group([misbehaving("serve")]):
            started.set()

    starter = threading.Thread(target=start)
    starter.start()
    try:
        assert not started.wait(1.0)  # the spawn waits for the lock
    finally:
        release.set()
        holder.join(30)
    assert started.wait(60)
    starter.join(60)
