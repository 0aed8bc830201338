"""A placement for a group whose children run partly here and partly elsewhere.

``open_engine_cores`` with a placement places vLLM's engine cores (one per bundle), while
the DP coordinator, which serves the client on this machine, stays here. Both kinds are
children of one launch group, so the first failure of either tears down the other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from .._placement import Placement
from .._spec import ProcessSpec
from .._start.spawn import Spawned, Starter, start_child


class SplitPlacement:
    """``placement`` for every child of a group except those named in ``local``, which
    start on this machine as without a placement.

    Args:
        placement: Where the other children go (e.g. a ``RayPlacement``); it sees only
            them, in spec order (with a ``RayPlacement``: the ``i``-th of them in bundle
            ``i``).
        local: The names of the children started here.
    """

    def __init__(self, placement: Placement, local: Sequence[str]) -> None:
        self.placement = placement
        self.local = frozenset(local)

    def open(
        self, specs: Sequence[ProcessSpec], group: str
    ) -> AbstractAsyncContextManager[Starter]:
        """The placement protocol (``launch._placement.Placement``).

        Args:
            specs: The group's children, in spec order.
            group: The group's name, for errors.

        Returns:
            An async context manager that opens ``placement`` for the placed children
            and yields a starter sending each child to its side.

        Raises:
            ValueError: ``placement`` refuses the placed children (e.g. more of them
                than it has bundles), or no child is placed.
        """
        placed = [spec for spec in specs if spec.name not in self.local]
        if not placed:
            raise ValueError(f"group {group!r}: no child left to place")
        return self._opened(self.placement.open(placed, group))

    @asynccontextmanager
    async def _opened(self, opened: AbstractAsyncContextManager[Starter]) -> AsyncIterator[Starter]:
        async with opened as placed_start:

            async def start(
                spec: ProcessSpec, group: str, overlay: Mapping[str, str] | None = None
            ) -> Spawned:
                if spec.name in self.local:
                    return await start_child(spec, group, overlay)
                return await placed_start(spec, group, overlay)

            yield start
