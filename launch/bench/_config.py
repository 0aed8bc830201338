"""What one ``launch bench`` run measures."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

MODELS = ("synthetic", "torch", "gpu")
DEFAULT_NS = {"synthetic": (1, 2, 4, 8, 16, 32), "torch": (1, 2, 4, 8), "gpu": (1, 2, 4, 8)}
PIPE_BUFFER = 64 * 1024
SMALL_PAYLOAD = 1024
LARGE_PAYLOAD = 1024 * 1024


@dataclass(frozen=True)
class BenchConfig:
    """One bench run. Times are seconds, payloads bytes.

    ``model``: ``"synthetic"`` (a config module that takes ``import_s`` to import, a
    ``payload`` per child, then ``init_s`` of init), ``"torch"`` (import torch, gloo
    group, barrier, all-reduce) or ``"gpu"`` (the same with CUDA and NCCL, one rank per
    visible GPU). ``teardown_n`` children (0: none) are used for the teardown figures.
    ``accelerators`` adds the forkserver / parent-preload / prefetch comparisons at
    ``focus_n`` (prefetch reads ``shard_mib`` MiB per child).
    """

    model: str = "synthetic"
    ns: tuple[int, ...] = DEFAULT_NS["synthetic"]
    strategies: tuple[str, ...] = ()  # empty: all
    repeats: int = 3
    import_s: float = 0.5
    init_s: float = 0.5
    payloads: tuple[int, ...] = (SMALL_PAYLOAD, LARGE_PAYLOAD)
    work: str = "sleep"
    teardown_n: int = 8
    teardown_repeats: int = 3
    ready_timeout: float = 300.0
    focus_n: int = 8
    accelerators: bool = False
    shard_mib: int = 128
    out: Path | None = None
    extras: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ._strategies import STRATEGIES

        if self.model not in MODELS:
            raise ValueError(f"bench: unknown model {self.model!r}; expected one of {MODELS}")
        if not self.ns or any(n < 1 for n in self.ns):
            raise ValueError(f"bench: N values must be >= 1, got {self.ns}")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(
                f"bench: unknown strategy {unknown[0]!r}; expected some of {', '.join(STRATEGIES)}"
            )
        if self.repeats < 1 or self.teardown_repeats < 1:
            raise ValueError("bench: repeats must be >= 1")
        if self.work not in ("sleep", "spin"):
            raise ValueError(f"bench: work must be 'sleep' or 'spin', got {self.work!r}")
        if min(self.import_s, self.init_s) < 0 or any(p < 0 for p in self.payloads):
            raise ValueError("bench: times and payloads must be >= 0")

    @property
    def chosen(self) -> tuple[str, ...]:
        """The strategies this run measures, in the canonical order."""
        from ._strategies import STRATEGIES

        return tuple(s for s in STRATEGIES if not self.strategies or s in self.strategies)

    @property
    def series(self) -> tuple[int | None, ...]:
        """The payload sizes measured (synthetic), or ``(None,)`` for the torch models."""
        return tuple(self.payloads) if self.model == "synthetic" else (None,)


def visible_gpus() -> int:
    """How many GPUs a child would see: ``CUDA_VISIBLE_DEVICES`` if set, else the
    ``/dev/nvidiaN`` device files (no CUDA initialised in this process)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return sum(1 for p in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name))


def parse_size(text: str) -> int:
    """``"1KiB"``, ``"64k"``, ``"1MiB"``, ``"512"`` → bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?[bB])?\s*", text)
    if not match:
        raise ValueError(f"not a size: {text!r} (e.g. 1KiB, 1MiB)")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def format_size(size: int | None) -> str:
    """Bytes as ``1 KiB`` / ``1 MiB``."""
    if size is None:
        return "-"
    for unit, scale in (("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"
