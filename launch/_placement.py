"""Where a group's children run, when not on this machine: the :class:`Placement` protocol.

A placement backend (``launch.integrations.ray.RayPlacement``) reserves room for a
group's children elsewhere and starts each one there. The core knows it only through
this protocol and never imports a backend: :func:`~launch.open_group` and a pipeline
stage open the placement around the group, and every child's run starts its child
through the :data:`~launch._start.spawn.Starter` the placement yields. Everything after
the start (boot, READY, supervision, the teardown) is the core's, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ._spec import ProcessSpec

if TYPE_CHECKING:  # not at run time: ``import launch`` stays free of anyio (a child's)
    from ._start.spawn import Starter


@runtime_checkable
class Placement(Protocol):
    """Where a group's children run: reserves room for them and starts each one there."""

    def open(
        self, specs: Sequence[ProcessSpec], group: str
    ) -> AbstractAsyncContextManager[Starter]:
        """Reserve room for ``specs``; yield the starter of the group's runs.

        Called when the group is opened (so a placement that cannot hold ``specs`` is
        refused before anything is reserved); entered and left in the group's task,
        around the group: its children are stopped and reaped before it is left.

        Args:
            specs: The group's children, in spec order.
            group: The group's name, for errors.

        Returns:
            An async context manager that reserves the room on entering (raising the
            backend's error if it cannot), yields ``async (spec, group, overlay) ->
            Spawned`` for each child, and releases everything it reserved or started
            on leaving, whatever the outcome.

        Raises:
            ValueError: ``specs`` do not fit the placement (e.g. more children than
                it has room for).
        """
        ...


def check_placement(placement: object, owner: str) -> Placement | None:
    """``placement`` if it is None or a :class:`Placement`; else a ``TypeError`` naming
    ``owner`` (``"open_group 'dp'"``, ``"stage 'thinker'"``) and what was given."""
    if placement is None:
        return None
    if not callable(getattr(placement, "open", None)):
        raise TypeError(
            f"{owner}: placement must be a launch placement (an object with an "
            f"open(specs, group) method, e.g. launch.integrations.ray.RayPlacement), "
            f"got {type(placement).__name__}"
        )
    assert isinstance(placement, Placement)
    return placement
