"""The failure a child's run declares: a :class:`~launch.ChildFailed` made of its facts,
dated by the child's own clock where it said when it failed."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

from .._errors import ChildFailed

if TYPE_CHECKING:
    from .run import ChildRun

F = TypeVar("F", bound=ChildFailed)


def failed_at(run: ChildRun) -> float:
    """When the child failed: by its own clock where it said so (its exception report's
    ``at``, already on our clock), else when it exited, else now. The root cause is the
    earliest failure, not the first one the parent noticed."""
    if run.failed is not None:
        return run.failed.report.at
    if run.times.exited is not None:
        return run.times.exited
    return time.monotonic()


def failure(cls: type[F], run: ChildRun, detail: str = "") -> F:
    """A ``cls`` failure of ``run``'s child, with what is known of it now (the teardown
    fills in an exit code and output that come later)."""
    report = run.failed.report if run.failed is not None else None
    return cls(
        run.name,
        group=run.group,
        pid=run.pid,
        exitcode=run.exitcode,
        phase=report.phase if report is not None and report.phase else run.phase,
        remote_traceback=report.traceback if report is not None else None,
        remote_type=report.type_name if report is not None else None,
        remote_message=report.message if report is not None else None,
        spawned_at=run.times.spawned,
        failed_at=failed_at(run),
        detail=", ".join(part for part in (detail, run.exit_note) if part),
        output_tail=run.child.output_tail or None,
    )
