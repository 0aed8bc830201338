"""Pipeline files: TOML in, a validated ``PipelineSpec`` out. The schema is in
docs/pipeline-file.md; every error names the file, the stage and the key."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from ._pipeline_spec import PipelineSpec, StageSpec
from ._spec import OUTPUTS, START_METHODS, ProcessSpec, ShutdownPolicy

T = TypeVar("T")

PIPELINE_KEYS = (
    "name",
    "device_env",
    "lock_dir",
    "device_lock_timeout",
    "start_method",
    "ready_timeout",
    "shutdown",
    "preload",
    "prefetch",
)
STAGE_KEYS = (
    "name",
    "target",
    "replicas",
    "rank_kwarg",
    "kwargs",
    "devices",
    "after",
    "env",
    "start_method",
    "ready_timeout",
    "output",
    "shutdown",
)
SHUTDOWN_KEYS = ("stop_timeout", "term_timeout", "kill_timeout")
TOP_KEYS = ("pipeline", "stage")


class ConfigError(ValueError):
    """A pipeline file is invalid. ``path``, ``stage`` and ``key`` say where."""

    def __init__(self, path: Path, message: str, *, stage: str | None = None, key: str = ""):
        where = str(path)
        if stage is not None:
            where += f": stage {stage!r}"
        if key:
            where += f": key {key!r}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.stage = stage
        self.key = key


class _Table:
    """One TOML table being read: typed getters that raise ConfigError naming the key."""

    def __init__(
        self,
        path: Path,
        data: Mapping[str, Any],
        known: tuple[str, ...],
        *,
        stage: str | None = None,
        prefix: str = "",
    ) -> None:
        self.path, self.data, self.stage, self.prefix = path, data, stage, prefix
        for key in data:
            if key not in known:
                import difflib

                close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
                self.fail(key, f"unknown key{hint}")

    def fail(self, key: str, message: str) -> NoReturn:
        raise ConfigError(self.path, message, stage=self.stage, key=self.prefix + key)

    def get(self, key: str, kind: Callable[[Any], bool], what: str, default: T) -> Any | T:
        if key not in self.data:
            return default
        value = self.data[key]
        if not kind(value):
            self.fail(key, f"must be {what}, got {type(value).__name__} {value!r}")
        return value

    def string(self, key: str, default: str | None = None) -> str | None:
        return self.get(
            key, lambda v: isinstance(v, str) and bool(v), "a non-empty string", default
        )

    def seconds(self, key: str, default: float | None) -> float | None:
        """A number of seconds >= 0, or the string "none" for no limit."""
        value: Any = self.get(
            key,
            lambda v: v == "none" or (_is_number(v) and v >= 0),
            'a number of seconds >= 0 (or "none")',
            default,
        )
        return None if value == "none" else value

    def table(self, key: str) -> Mapping[str, Any]:
        result: Mapping[str, Any] = self.get(key, lambda v: isinstance(v, dict), "a table", {})
        return result

    def string_list(self, key: str) -> list[str]:
        value: Any = self.get(key, lambda v: isinstance(v, str | list), "a list of strings", [])
        items = [value] if isinstance(value, str) else value
        if not all(isinstance(item, str) and item for item in items):
            self.fail(key, f"must be a list of strings, got {value!r}")
        return list(items)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shutdown(parent: _Table) -> ShutdownPolicy | None:
    if "shutdown" not in parent.data:
        return None
    table = _Table(
        parent.path,
        parent.table("shutdown"),
        SHUTDOWN_KEYS,
        stage=parent.stage,
        prefix=parent.prefix + "shutdown.",
    )
    values: dict[str, float] = {}
    for key in SHUTDOWN_KEYS:
        value = table.seconds(key, getattr(ShutdownPolicy, key))
        if value is None:
            table.fail(key, "must be a number of seconds; teardown is always bounded")
        values[key] = value
    return ShutdownPolicy(**values)


def _stage(path: Path, data: Any, index: int, defaults: _Table) -> StageSpec:
    if not isinstance(data, dict):
        raise ConfigError(path, f"[[stage]] number {index + 1} must be a table")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(path, f"[[stage]] number {index + 1} needs a non-empty 'name'")
    table = _Table(path, data, STAGE_KEYS, stage=name)
    target = table.string("target")
    if target is None:
        table.fail("target", "is required: a 'module:qualname' string, e.g. 'mypkg.engine:run'")
    replicas = table.get("replicas", lambda v: type(v) is int and v >= 1, "an integer >= 1", 1)
    rank_kwarg = table.string("rank_kwarg")
    kwargs = dict(table.table("kwargs"))
    if rank_kwarg is not None and rank_kwarg in kwargs:
        table.fail("rank_kwarg", f"{rank_kwarg!r} is also set in kwargs; set it in one place")
    start_method = table.get(
        "start_method",
        lambda v: v in START_METHODS,
        f"one of {', '.join(START_METHODS)}",
        defaults.data.get("start_method", "spawn"),
    )
    ready_timeout = table.seconds("ready_timeout", defaults.seconds("ready_timeout", 600.0))
    output: Any = table.get(
        "output", lambda v: v in OUTPUTS, f"one of {', '.join(OUTPUTS)}", "inherit"
    )
    devices: list[int | str] = table.get(
        "devices",
        lambda v: isinstance(v, list) and all(isinstance(d, int | str) for d in v),
        "a list of device indexes or ids",
        [],
    )
    specs = []
    try:
        for rank in range(replicas):
            child_kwargs = {**kwargs, rank_kwarg: rank} if rank_kwarg else kwargs
            specs.append(
                ProcessSpec(
                    target,
                    name=f"{name}-{rank}",
                    kwargs=child_kwargs,
                    start_method=start_method,
                    ready_timeout=ready_timeout,
                    output=output,
                )
            )
        return StageSpec(
            name,
            specs,
            devices=devices,
            after=table.string_list("after"),
            env=table.table("env"),
            shutdown=_shutdown(table),
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(path, str(exc), stage=name) from None


def parse_pipeline(text: str, path: Path) -> PipelineSpec:
    """Build a PipelineSpec from TOML ``text``; ``path`` is used in messages and for
    resolving a relative ``lock_dir``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"invalid TOML: {exc}") from None
    top = _Table(path, data, TOP_KEYS).table("pipeline")
    pipeline = _Table(path, top, PIPELINE_KEYS, prefix="pipeline.")
    pipeline.get(
        "start_method", lambda v: v in START_METHODS, f"one of {', '.join(START_METHODS)}", None
    )
    stages_data = data.get("stage")
    if not isinstance(stages_data, list) or not stages_data:
        raise ConfigError(path, "no stages: add at least one [[stage]] table")
    stages = [_stage(path, item, index, pipeline) for index, item in enumerate(stages_data)]
    device_env = pipeline.get(
        "device_env",
        lambda v: (
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(i, str) for i in v))
        ),
        "a variable name or a list of them",
        "CUDA_VISIBLE_DEVICES",
    )
    lock_dir = pipeline.string("lock_dir")
    prefetch = [path.parent / item for item in pipeline.string_list("prefetch")]
    try:
        return PipelineSpec(
            stages,
            name=pipeline.string("name", path.stem) or path.stem,
            device_env=device_env,
            lock_dir=(path.parent / lock_dir) if lock_dir is not None else None,
            device_lock_timeout=pipeline.seconds("device_lock_timeout", 600.0),
            shutdown=_shutdown(pipeline),
            preload=pipeline.string_list("preload"),
            prefetch=prefetch,
        )
    except ValueError as exc:
        raise ConfigError(path, str(exc)) from None


def load_pipeline(path: str | Path) -> PipelineSpec:
    """Read a pipeline file (TOML; schema in docs/pipeline-file.md) into a PipelineSpec.

    Raises :class:`ConfigError` (a ``ValueError``) naming the file, stage and key of
    the first problem; nothing is started.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot be read: {exc}") from None
    return parse_pipeline(text, path)


def missing_targets(spec: PipelineSpec) -> list[str]:
    """Targets whose module cannot be found, as messages naming stage and key.

    Uses ``importlib.util.find_spec``: a module is located, not run (its parent
    packages are imported, as any import would).
    """
    import importlib.util

    problems = []
    for stage in spec.stages:
        for target in sorted({s.target for s in stage.specs if isinstance(s.target, str)}):
            module = target.partition(":")[0]
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError) as exc:
                found, why = False, f" ({type(exc).__name__}: {exc})"
            else:
                why = ""
            if not found:
                problems.append(
                    f"stage {stage.name!r}: key 'target': module {module!r} of {target!r} "
                    f"cannot be found{why}"
                )
    return problems
