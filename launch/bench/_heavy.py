"""The synthetic child's slow-to-import config module, written to a scratch directory.

Kwargs carry a ``Config`` instance; unpickling it in the child imports its module, which
takes ``import_s``. Its ``payload`` bytes come after the class reference in the pickle,
so with a spawn ``Process.start()`` that writes more than the pipe buffer (64 KiB), the
parent's write waits until the child has imported the module.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_TEMPLATE = '''"""Written by launch bench: importing this module takes {import_s} s ({work})."""

import time

_end = time.monotonic() + {import_s!r}
if {work!r} == "spin":
    while time.monotonic() < _end:
        pass
else:
    time.sleep({import_s!r})


class Config:
    """What the child gets in its kwargs."""

    def __init__(self, payload: bytes, init_s: float, work: str) -> None:
        self.payload = payload
        self.init_s = init_s
        self.work = work
'''


def module_name(import_s: float, work: str) -> str:
    """The generated module's name for these parameters."""
    return f"launch_bench_config_{round(import_s * 1000)}ms_{work}"


@contextmanager
def heavy_modules() -> Iterator[Path]:
    """A scratch directory on ``sys.path`` (children inherit it) for the generated modules;
    both undone on exit."""
    with tempfile.TemporaryDirectory(prefix="launch-bench-") as tmp:
        sys.path.insert(0, tmp)
        try:
            yield Path(tmp)
        finally:
            sys.path.remove(tmp)
            prefixes = ("launch_bench_config_", "launch_bench_parent_")
            for name in [n for n in sys.modules if n.startswith(prefixes)]:
                del sys.modules[name]


def fresh_module(directory: Path, *, import_s: float, work: str) -> str:
    """A new slow module (a name never imported before in this process); its name."""
    index = sum(1 for _ in directory.glob("launch_bench_parent_*.py"))
    name = f"launch_bench_parent_{index}"
    (directory / f"{name}.py").write_text(_TEMPLATE.format(import_s=import_s, work=work))
    importlib.invalidate_caches()
    return name


def make_config(directory: Path, *, import_s: float, init_s: float, work: str, payload: int) -> Any:
    """A ``Config`` of the generated module (written on first use; the parent pays its
    import once, here, before anything is timed)."""
    name = module_name(import_s, work)
    path = directory / f"{name}.py"
    if not path.exists():
        path.write_text(_TEMPLATE.format(import_s=import_s, work=work))
        importlib.invalidate_caches()
    module = importlib.import_module(name)
    return module.Config(b"\0" * payload, init_s, work)
