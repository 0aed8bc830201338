"""Ready-made misbehaving children for failure tests, as ``ProcessSpec`` factories.

The targets live in ``launch.testing.targets``, which imports only the standard library
and launch's child API.
"""

from __future__ import annotations

from typing import Any

from .. import ProcessSpec, StartMethod

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

    Args:
        kind: One of :data:`MISBEHAVIOURS`: ``"crash"``, ``"hang"``, ``"slow_start"``,
            ``"die_after_ready"``, ``"ignore_sigterm"`` or ``"serve"``.
        name: The child's name; default: ``kind`` with ``-`` for ``_`` (e.g.
            ``"die-after-ready"``).
        start_method: How the child starts (:data:`launch.StartMethod`).
        ready_timeout: The spec's ``ready_timeout`` in seconds (``None``: no deadline).
        **kwargs: Passed to the target in ``launch.testing.targets``, as the kind
            takes them: ``crash(delay, message)``, ``hang(phase_name)``,
            ``slow_start(seconds)``, ``die_after_ready(after, code)``, ``serve(init)``.

    Returns:
        A :class:`ProcessSpec` running ``launch.testing.targets:<kind>``.

    Raises:
        ValueError: ``kind`` is not one of :data:`MISBEHAVIOURS` (or the spec is
            otherwise invalid, as :class:`ProcessSpec` checks).
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
