"""Ready-made misbehaving children for failure tests, as ``ProcessSpec`` factories.

The targets live in ``launch.testing.targets``, which imports only the standard library
and launch's child API.
"""

from __future__ import annotations

from typing import Any

from .._spec import ProcessSpec, StartMethod

MISBEHAVIOURS = {
    "crash": "raises RuntimeError before READY, after `delay` seconds (phase 'load_model')",
    "hang": "never says READY (phase 'nccl_init'): for ready_timeout tests",
    "slow_start": "says READY after `seconds`, then serves",
    "die_after_ready": "says READY, exits with `code` `after` seconds later",
    "ignore_sigterm": "says READY, then ignores SIGTERM and the cooperative stop",
    "serve": "a well-behaved child: READY after `init` seconds, serves until stopped",
}


def misbehaving(
    kind: str,
    name: str | None = None,
    *,
    start_method: StartMethod = "spawn",
    ready_timeout: float | None = 60.0,
    **kwargs: Any,
) -> ProcessSpec:
    """A ``ProcessSpec`` of a child that behaves as ``kind`` (see ``MISBEHAVIOURS``).

    ``misbehaving("crash", delay=0.5)``, ``misbehaving("hang", ready_timeout=1)``,
    ``misbehaving("die_after_ready", after=0.2, code=3)``.
    """
    if kind not in MISBEHAVIOURS:
        raise ValueError(
            f"unknown misbehaviour {kind!r}; expected one of {', '.join(MISBEHAVIOURS)}"
        )
    return ProcessSpec(
        f"launch.testing.targets:{kind}",
        name=name or kind.replace("_", "-"),
        kwargs=kwargs,
        start_method=start_method,
        ready_timeout=ready_timeout,
    )
