"""The command line of a fresh interpreter that runs one function of ``_launch_child``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# The folder that holds both ``launch`` and ``_launch_child`` (site-packages or a checkout).
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def child_interpreter_argv(module: str, call: str) -> list[str]:
    """``python <parent's -X/-W flags> -c "from _launch_child.<module> import ...; <call>"``."""
    function = call.partition("(")[0]
    code = (
        f"import sys; sys.path.insert(0, {PACKAGE_ROOT!r}); "
        f"from _launch_child.{module} import {function}; {call}"
    )
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    return [sys.executable, *flags, "-c", code]
