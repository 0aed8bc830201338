"""Pipeline files: TOML in, a validated ``PipelineSpec`` out. The schema is in
docs/pipeline-file.md; every error names the file, the stage and the key.

A pipeline file is untrusted input: its size, the nesting depth of its values and the
number of children it asks for are bounded, and only a regular file is read, so a
hostile or broken file costs bounded memory and time and gives one ConfigError.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from ._pipeline_spec import PipelineSpec, StageSpec, device_env_names, stage_devices
from ._spec import (
    OUTPUTS,
    START_METHODS,
    ProcessSpec,
    ShutdownPolicy,
    env_problem,
    first_duplicate,
    target_problem,
)

T = TypeVar("T")

MAX_FILE_BYTES = 1024 * 1024  # a pipeline file larger than this is refused
MAX_DEPTH = 32  # arrays and tables nested deeper than this (from the file's root)
MAX_REPLICAS = 1024  # children of one stage
MAX_CHILDREN = 4096  # children of the whole pipeline

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
    "placement",
)
PLACEMENT_KEYS = ("backend", "bundles", "strategy", "address", "placement_timeout")
PLACEMENT_BACKENDS = ("ray",)
SHUTDOWN_KEYS = ("stop_timeout", "term_timeout", "kill_timeout")
TOP_KEYS = ("pipeline", "stage")


class ConfigError(ValueError):
    """A pipeline file is invalid. ``path``, ``stage`` and ``key`` say where.

    A ``ValueError``; ``str(exc)`` reads ``"<path>: stage '<stage>': key '<key>':
    <message>"``, leaving out what is not known.

    Attributes:
        path (pathlib.Path): The pipeline file.
        stage (str | None): The name of the stage at fault, or None if the problem is
            not in one stage.
        key (str): The key at fault, dotted from its table (e.g.
            ``"pipeline.device_lock_timeout"``, ``"shutdown.stop_timeout"``), or ``""``.
    """

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
        """A finite number of seconds >= 0, or the string "none" for no limit."""
        value: Any = self.get(
            key,
            lambda v: v == "none" or (_is_number(v) and v >= 0),
            'a number of seconds >= 0 (or "none")',
            default,
        )
        if value != "none" and value is not None and math.isinf(value):
            self.fail(key, 'must be a finite number of seconds; for no limit, write "none"')
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
        value = table.get(
            key,
            lambda v: _is_number(v) and 0 <= v < math.inf,
            "a finite number of seconds >= 0 (teardown is always bounded)",
            getattr(ShutdownPolicy, key),
        )
        values[key] = value
    return ShutdownPolicy(**values)


def _placement(parent: _Table, replicas: int) -> Any:
    """The stage's ``[stage.placement]`` table as a placement object (the backend is
    imported here, only when a file asks for it); None without one."""
    if "placement" not in parent.data:
        return None
    table = _Table(
        parent.path,
        parent.table("placement"),
        PLACEMENT_KEYS,
        stage=parent.stage,
        prefix="placement.",
    )
    backend = table.string("backend")
    if backend is None:
        table.fail("backend", f"is required: one of {', '.join(map(repr, PLACEMENT_BACKENDS))}")
    if backend not in PLACEMENT_BACKENDS:
        table.fail(
            "backend",
            f"unknown placement backend {backend!r}; known: "
            f"{', '.join(map(repr, PLACEMENT_BACKENDS))}",
        )
    bundles: Any = table.get(
        "bundles",
        lambda v: isinstance(v, list) and bool(v),
        "a non-empty list of bundles, e.g. [{CPU = 1, GPU = 1}]",
        None,
    )
    if bundles is None:
        table.fail("bundles", "is required: one {resource = amount} table per child")
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, dict) or not bundle:
            table.fail("bundles", f"bundle {i} must be a non-empty table, got {bundle!r}")
        for resource, amount in bundle.items():
            if not _is_number(amount) or not 0 <= amount < math.inf:
                table.fail(
                    "bundles",
                    f"bundle {i}: {resource!r} must be a finite number >= 0, got {amount!r}",
                )
    if len(bundles) < replicas:
        table.fail(
            "bundles",
            f"{len(bundles)} bundles for {replicas} replicas: one bundle per child",
        )
    strategy = table.string("strategy", "PACK")
    address = table.string("address", "auto")
    timeout: Any = table.get(
        "placement_timeout",
        lambda v: _is_number(v) and 0 < v < math.inf,
        "a finite number of seconds > 0 (Ray alone would wait forever)",
        300.0,
    )
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        table.fail("backend", "the 'ray' placement needs ray: pip install 'launch-tree[ray]'")
    from .integrations.ray import RayPlacement

    try:
        return RayPlacement(
            bundles, strategy=strategy or "PACK", address=address, placement_timeout=timeout
        )
    except ValueError as exc:
        key = "strategy" if "strategy" in str(exc) else "bundles"
        table.fail(key, str(exc).removeprefix("RayPlacement: "))


def _stage(path: Path, data: Any, index: int, defaults: _Table, children: int) -> StageSpec:
    """Stage number ``index`` of the file; ``children`` is the count of the stages before."""
    if not isinstance(data, dict):
        raise ConfigError(path, f"[[stage]] number {index + 1} must be a table")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(path, f"[[stage]] number {index + 1} needs a non-empty 'name'")
    table = _Table(path, data, STAGE_KEYS, stage=name)
    target = table.string("target")
    if target is None:
        table.fail("target", "is required: a 'module:qualname' string, e.g. 'mypkg.engine:run'")
    problem = target_problem(target)
    if problem is not None:
        table.fail("target", problem)
    replicas = table.get(
        "replicas",
        lambda v: type(v) is int and 1 <= v <= MAX_REPLICAS,
        f"an integer >= 1 (at most {MAX_REPLICAS} per stage)",
        1,
    )
    if children + replicas > MAX_CHILDREN:
        table.fail(
            "replicas",
            f"would bring the pipeline to {children + replicas} children; "
            f"at most {MAX_CHILDREN} in total",
        )
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
    try:
        stage_devices(devices)
    except ValueError as exc:
        table.fail("devices", str(exc))
    after = table.string_list("after")
    if name in after:
        table.fail("after", "a stage cannot start after itself")
    env = table.table("env")
    problem = env_problem(env)
    if problem is not None:
        table.fail("env", problem)
    shutdown = _shutdown(table)
    if devices and "placement" in table.data:
        table.fail(
            "devices",
            "cannot be used with a placement: device locks are this machine's; ask for "
            "devices in the placement's bundles instead (e.g. {GPU = 1})",
        )
    placement = _placement(table, replicas)
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
            after=after,
            env=env,
            shutdown=shutdown,
            placement=placement,
        )
    except ValueError as exc:  # what the keys above did not catch: say it once
        message = re.sub(rf"^(stage {re.escape(repr(name))}|ProcessSpec '[^']*'): ", "", str(exc))
        raise ConfigError(path, message, stage=name) from None


def parse_pipeline(text: str, path: Path) -> PipelineSpec:
    """Build a PipelineSpec from TOML ``text``; ``path`` is used in messages and for
    resolving a relative ``lock_dir``."""
    _check_nesting(text, path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"invalid TOML: {exc}") from None
    except RecursionError:  # the scan above missed a nesting: still one line
        raise ConfigError(path, f"values nested deeper than {MAX_DEPTH} levels") from None
    _check_depth(path, data)
    top = _Table(path, data, TOP_KEYS).table("pipeline")
    pipeline = _Table(path, top, PIPELINE_KEYS, prefix="pipeline.")
    pipeline.get(
        "start_method", lambda v: v in START_METHODS, f"one of {', '.join(START_METHODS)}", None
    )
    stages_data = data.get("stage")
    if not isinstance(stages_data, list) or not stages_data:
        raise ConfigError(path, "no stages: add at least one [[stage]] table")
    stages: list[StageSpec] = []
    children = 0
    for index, item in enumerate(stages_data):
        stages.append(_stage(path, item, index, pipeline, children))
        children += len(stages[-1].specs)
    duplicate = first_duplicate(stage.name for stage in stages)
    if duplicate is not None:
        raise ConfigError(path, f"duplicate stage name {duplicate!r}", stage=duplicate, key="name")
    device_env = pipeline.get(
        "device_env",
        lambda v: (
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(i, str) for i in v))
        ),
        "a variable name or a list of them",
        "CUDA_VISIBLE_DEVICES",
    )
    try:
        device_env_names(device_env)
    except ValueError as exc:
        pipeline.fail("device_env", str(exc))
    lock_dir = pipeline.string("lock_dir")
    prefetch = [path.parent / item for item in pipeline.string_list("prefetch")]
    name = pipeline.string("name", path.stem) or path.stem
    device_lock_timeout = pipeline.seconds("device_lock_timeout", 600.0)
    shutdown = _shutdown(pipeline)
    preload = pipeline.string_list("preload")
    try:
        return PipelineSpec(
            stages,
            name=name,
            device_env=device_env,
            lock_dir=(path.parent / lock_dir) if lock_dir is not None else None,
            device_lock_timeout=device_lock_timeout,
            shutdown=shutdown,
            preload=preload,
            prefetch=prefetch,
        )
    except ValueError as exc:  # only the PipelineSpec's own checks (stages as a whole)
        raise ConfigError(path, str(exc)) from None


def load_pipeline(path: str | Path) -> PipelineSpec:
    """Read a pipeline file (TOML; schema in docs/pipeline-file.md) into a PipelineSpec.

    Raises :class:`ConfigError` (a ``ValueError``) naming the file, stage and key of
    the first problem; nothing is started.

    Args:
        path: The pipeline file. A relative ``lock_dir`` or ``prefetch`` entry in it is
            taken relative to the file's directory.

    Returns:
        The validated :class:`PipelineSpec`, ready for :func:`open_pipeline` or
        :func:`start_pipeline`.

    Raises:
        ConfigError: The file is missing, unreadable, not a regular file, larger than
            1 MiB, not UTF-8 or not valid TOML, nests values too deeply, asks for too
            many children, or breaks the schema (an unknown key, a value of the wrong
            type, or anything :class:`PipelineSpec`, :class:`StageSpec` or
            :class:`ProcessSpec` reject).
    """
    path = Path(path)
    return parse_pipeline(_read(path), path)


def _read(path: Path) -> str:
    """The text of a regular file of at most MAX_FILE_BYTES; anything else is refused
    before it is read (a FIFO or a device would block or never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(path, "no such file") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot be read: {exc.strerror}") from None
    with open(fd, "rb", closefd=True) as file:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kinds = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}
            kind = kinds.get(stat.S_IFMT(mode), "a device")
            raise ConfigError(path, f"is {kind}, not a regular file")
        try:
            data = file.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(path, f"cannot be read: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(path, f"is larger than {MAX_FILE_BYTES // 1024} KiB: not a pipeline file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"cannot be read: not UTF-8 ({exc})") from None


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
                found, why = False, f" ({_one_line(exc)})"
            except (Exception, SystemExit) as exc:  # a parent package raised at import
                problems.append(
                    f"stage {stage.name!r}: key 'target': importing the package of "
                    f"{module!r} (for {target!r}) raised {_one_line(exc)}"
                )
                continue
            else:
                why = ""
            if not found:
                problems.append(
                    f"stage {stage.name!r}: key 'target': module {module!r} of {target!r} "
                    f"cannot be found{why}"
                )
    return problems


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# Strings and comments are skipped, so that only brackets that open values count.
_TOKENS = re.compile(
    r'"""(?:[^\\]|\\.)*?"""|\'\'\'.*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*|[\[\]{}=\n]',
    re.S,
)


def _check_nesting(text: str, path: Path) -> None:
    """Refuse a value nested deeper than MAX_DEPTH before tomllib recurses into it
    (a few thousand levels exhaust its recursion), naming its stage and key."""
    depth, pos, line_start, header, key, key_at = 0, 0, 0, "", "", 0
    while match := _TOKENS.search(text, pos):
        token, pos = match.group(), match.end()
        if token == "\n":
            if depth == 0:
                line_start = pos
        elif token in ("[", "{"):
            if depth == 0 and token == "[" and not text[line_start : match.start()].strip():
                end = text.find("\n", pos)
                end = len(text) if end < 0 else end
                header = text[match.start() : end].split("#")[0].strip().strip("[]").strip()
                pos = end  # a [table] header, not a value
                continue
            depth += 1
            if depth > MAX_DEPTH:
                _too_deep(path, text[:key_at], header, key)
        elif token in ("]", "}"):
            depth = max(depth - 1, 0)
        elif token == "=" and depth == 0:
            key, key_at = text[line_start : match.start()].strip(), line_start


def _too_deep(path: Path, before: str, header: str, key: str) -> NoReturn:
    stage: str | None = None
    if header == "stage" or header.startswith("stage."):
        try:  # everything before the key's line is complete TOML: find the stage's name
            stages = tomllib.loads(before).get("stage")
            name = stages[-1].get("name") if isinstance(stages, list) and stages else None
            stage = name if isinstance(name, str) else None
        except (tomllib.TOMLDecodeError, AttributeError, RecursionError):
            pass
        header = header[len("stage.") :] if header != "stage" else ""
    key = f"{header}.{key}" if header else key
    raise ConfigError(path, f"nested deeper than {MAX_DEPTH} levels", stage=stage, key=key)


def _deeper_than(value: object, limit: int) -> bool:
    """True if ``value`` nests arrays/tables more than ``limit`` levels (no recursion)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _check_depth(path: Path, data: dict[str, Any]) -> None:
    """Refuse values nested deeper than MAX_DEPTH from the file's root, naming the
    stage and key (dotted keys nest without brackets, so the text scan cannot see it)."""
    for key, value in data.items():
        if key == "stage" and isinstance(value, list):
            for item in value:
                if not isinstance(item, dict):
                    continue
                name = item.get("name")
                for sub, child in item.items():
                    if _deeper_than(child, MAX_DEPTH - 2):
                        raise ConfigError(
                            path,
                            f"nested deeper than {MAX_DEPTH} levels",
                            stage=name if isinstance(name, str) else None,
                            key=sub,
                        )
        elif key == "pipeline" and isinstance(value, dict):
            for sub, child in value.items():
                if _deeper_than(child, MAX_DEPTH - 1):
                    raise ConfigError(
                        path, f"nested deeper than {MAX_DEPTH} levels", key=f"pipeline.{sub}"
                    )
        elif _deeper_than(value, MAX_DEPTH):
            raise ConfigError(path, f"nested deeper than {MAX_DEPTH} levels", key=key)
