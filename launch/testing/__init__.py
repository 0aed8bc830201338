"""Testing multi-process code with launch: ready-made misbehaving children, a
no-leaked-process check, and a ``launcher`` that opens groups and pipelines under the
test's event loop and always tears them down.

The pytest plugin (``launch.testing.plugin``, registered as the ``launch`` pytest11 entry
point) is inert unless used: it adds the ``launcher`` and ``no_leaked_processes``
fixtures, the ``launch_leak_check`` marker and the ``--launch-leak-check`` option. The
leak check needs psutil (``pip install 'launch-tree[testing]'``). See docs/embedding.md.
"""

from __future__ import annotations

from ._children import MISBEHAVIOURS, misbehaving
from ._launcher import Launcher
from ._leaks import TOKEN_ENV, LeakedProcesses, ProcessWatch

__all__ = [
    "MISBEHAVIOURS",
    "TOKEN_ENV",
    "Launcher",
    "LeakedProcesses",
    "ProcessWatch",
    "misbehaving",
]
