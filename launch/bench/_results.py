"""Bench results as plain data: per (series, strategy, N) the runs; JSON in and out."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "launch-bench/1"


@dataclass
class StartupCell:
    """Every run of one strategy at one N (and payload, for the synthetic model)."""

    strategy: str
    n: int
    payload: int | None
    ready_s: list[float] = field(default_factory=list)
    started_s: list[float] = field(default_factory=list)
    parent_cpu_s: list[float] = field(default_factory=list)
    peak_rss_mib: list[float] = field(default_factory=list)  # every child of every run
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        """Median all-READY seconds, or None if no run succeeded."""
        return statistics.median(self.ready_s) if self.ready_s else None

    @property
    def spread(self) -> tuple[float, float] | None:
        """(min, max) all-READY seconds."""
        return (min(self.ready_s), max(self.ready_s)) if self.ready_s else None

    @property
    def cpu_median(self) -> float | None:
        return statistics.median(self.parent_cpu_s) if self.parent_cpu_s else None

    @property
    def rss_median(self) -> float | None:
        return statistics.median(self.peak_rss_mib) if self.peak_rss_mib else None


@dataclass
class TeardownCell:
    """Every run of one teardown policy."""

    policy: str
    n: int
    reaped_s: list[float] = field(default_factory=list)
    noticed_s: list[float] = field(default_factory=list)
    left: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.reaped_s) if self.reaped_s else None

    @property
    def spread(self) -> tuple[float, float] | None:
        return (min(self.reaped_s), max(self.reaped_s)) if self.reaped_s else None


@dataclass
class BenchResult:
    """A whole bench run: its configuration, the machine, and every cell."""

    config: dict[str, Any]
    machine: dict[str, Any]
    startup: list[StartupCell] = field(default_factory=list)
    teardown: list[TeardownCell] = field(default_factory=list)
    accelerators: list[StartupCell] = field(default_factory=list)  # strategy "trial: variant"
    forkserver_warm_s: float | None = None
    ray_init_s: float | None = None  # ray.init for the Ray peer, once, outside every clock
    wall_s: float = 0.0
    interrupted: bool = False  # stopped early (Ctrl-C): cells with no run were not reached

    def cell(self, strategy: str, n: int, payload: int | None) -> StartupCell | None:
        """The cell for that strategy, N and payload, if measured."""
        for cell in self.startup:
            if (cell.strategy, cell.n, cell.payload) == (strategy, n, payload):
                return cell
        return None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = FORMAT
        for cell, raw in zip(self.startup, data["startup"], strict=True):
            raw["median_s"] = cell.median
            raw["spread_s"] = cell.spread
        for acell, raw in zip(self.accelerators, data["accelerators"], strict=True):
            raw["median_s"] = acell.median
            raw["spread_s"] = acell.spread
        for tcell, raw in zip(self.teardown, data["teardown"], strict=True):
            raw["median_s"] = tcell.median
            raw["spread_s"] = tcell.spread
        return data

    def write_json(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def read_json(cls, path: Path) -> BenchResult:
        """Load a result written by :meth:`write_json`; ``ValueError`` names the file."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable bench result ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a launch bench result (format {FORMAT!r} expected)")
        drop = ("median_s", "spread_s")
        return cls(
            config=data["config"],
            machine=data["machine"],
            startup=[
                StartupCell(**{k: v for k, v in c.items() if k not in drop})
                for c in data["startup"]
            ],
            teardown=[
                TeardownCell(**{k: v for k, v in c.items() if k not in drop})
                for c in data["teardown"]
            ],
            accelerators=[
                StartupCell(**{k: v for k, v in c.items() if k not in drop})
                for c in data.get("accelerators", [])
            ],
            forkserver_warm_s=data.get("forkserver_warm_s"),
            ray_init_s=data.get("ray_init_s"),
            wall_s=data.get("wall_s", 0.0),
            interrupted=data.get("interrupted", False),
        )
