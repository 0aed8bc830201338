"""vLLM-Omni's stage-config files, read the way vLLM-Omni reads them.

Two generations exist:

- deploy profiles (``vllm_omni/deploy/*.yaml``, vLLM-Omni >= 0.22): a ``stages:`` list
  whose entries carry engine options flat on the stage, ``devices``/``num_replicas``,
  ``input_connectors``/``output_connectors`` naming top-level ``connectors``, per-platform
  ``platforms:`` overrides, and an optional ``base_config`` file they overlay. The
  stages' topology (names, stage types, data flow) is not in the file: vLLM-Omni keeps
  it in its pipeline registry (pass it as ``topology``; :func:`omni_topology` reads it
  from an installed vLLM-Omni);
- legacy stage configs (``stage_args:``, vLLM-Omni <= 0.24): each stage with
  ``stage_type``, ``engine_args`` (``model_stage``, ``model_arch``...), ``runtime``
  (``devices``, ``num_replicas``) and ``engine_input_source``.

:func:`read_omni_config` returns an :class:`OmniConfig` of :class:`OmniStageConfig`; every
problem is a :class:`launch.ConfigError` naming the file, the stage and the key. The files
are untrusted input: each is a regular file of at most 1 MiB (launch's pipeline-file
limits), values nest at most 32 deep, at most 200,000 values after YAML aliases, and a
``base_config`` chain is at most 16 files long and may not come back to a file in it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from .._config import MAX_DEPTH, MAX_REPLICAS, ConfigError, _read

StageId: TypeAlias = int | str

MAX_BASE_DEPTH = 16  # files in one base_config chain (vLLM-Omni itself has no bound)
MAX_VALUES = 200_000  # values in one file once YAML aliases are expanded

STAGE_TYPES = ("llm", "diffusion")
# vLLM-Omni's StageExecutionType -> its StageType (stage_config._EXECUTION_TYPE_TO_STAGE_WORKER)
_EXECUTION_TYPES = {"llm_ar": "llm", "llm_generation": "llm", "diffusion": "diffusion"}

# Keys of a deploy stage that are not engine options (stage_config._STAGE_RESERVED_KEYS).
_RESERVED = frozenset(
    {
        "async_chunk",
        "stage_id",
        "devices",
        "num_replicas",
        "env",
        "output_connectors",
        "input_connectors",
        "default_sampling_params",
        "default_pooling_params",
        "engine_extras",
        "engine_args",
        "runtime",
    }
)
# Reserved keys a platform override sets on the stage (attributes of StageDeployConfig).
_STAGE_ATTRS = _RESERVED - {"engine_args", "runtime", "stage_id", "engine_extras"}
# stage_config._DEEP_MERGE_KEYS: merged, not replaced, by overlays.
_DEEP_MERGE_KEYS = frozenset(
    {
        "default_sampling_params",
        "default_pooling_params",
        "subtalker_sampling_params",
        "engine_extras",
        "engine_args",
    }
)
# stage_config._PIPELINE_WIDE_ENGINE_FIELDS: top-level keys given to every stage's engine.
_PIPELINE_WIDE = (
    "trust_remote_code",
    "distributed_executor_backend",
    "dtype",
    "quantization",
    "enable_prefix_caching",
    "enable_chunked_prefill",
    "data_parallel_size",
    "pipeline_parallel_size",
    "active_stream_window",
    "custom_voice_dir",
)
_TOPOLOGY_KEYS = ("model_arch", "engine_output_type", "hf_config_name")


@dataclass(frozen=True)
class OmniStageConfig:
    """One stage of a vLLM-Omni config, as vLLM-Omni would run it on ``platform``.

    Attributes:
        stage_id: The stage's id as the file gives it (an int, or a string).
        name: ``model_stage`` (from the topology or the file), else ``stage-<id>``;
            unique in the config.
        stage_type: ``"llm"`` or ``"diffusion"``; None where the file does not say (a
            deploy profile read without its topology).
        replicas: How many replicas vLLM-Omni starts (``num_replicas``, at least 1).
        devices: The devices of each replica (one tuple per replica, split the way
            vLLM-Omni splits them), or ``()`` where the stage names no devices.
            They are indexes into the launcher's visible devices, as in vLLM-Omni.
        engine_args: The stage's engine options: flat keys of a deploy stage with its
            ``engine_args`` and ``engine_extras`` and the pipeline-wide top-level
            options, merged as vLLM-Omni merges them; a legacy stage's ``engine_args``.
            Options vLLM-Omni derives from the topology (``async_chunk``,
            ``session_mode``, ``model_runner``...) are not added.
        input_sources: The stages this one reads from: the topology's
            ``input_sources`` or ``engine_input_source``, then the sources of its
            ``input_connectors`` and of the ``edges`` into it.
        input_connectors: Source stage id -> the connector (``{"name", "extra"}``).
        output_connectors: Destination stage id -> the connector.
        model_stage: The stage's ``model_stage``, or None.
        model_arch: The stage's ``model_arch``, or None.
        engine_output_type: The stage's ``engine_output_type``, or None.
        hf_config_name: The stage's ``hf_config_name``, or None.
        env: Variables for the stage's processes (``env`` / ``runtime.env``), or None.
        async_chunk: Whether the stage streams chunks to the next (vLLM-Omni's
            ``resolve_stage_async_chunk``).
        default_sampling_params: The stage's default sampling parameters, or None.
        config: The stage's whole entry in the file (after ``base_config``), verbatim.
    """

    stage_id: StageId
    name: str
    stage_type: str | None
    replicas: int
    devices: tuple[tuple[str, ...], ...]
    engine_args: Mapping[str, Any]
    input_sources: tuple[StageId, ...]
    input_connectors: Mapping[StageId, Mapping[str, Any]]
    output_connectors: Mapping[StageId, Mapping[str, Any]]
    model_stage: str | None
    model_arch: str | None
    engine_output_type: str | None
    hf_config_name: str | None
    env: Mapping[str, Any] | None
    async_chunk: bool
    default_sampling_params: Mapping[str, Any] | None
    config: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class OmniConfig:
    """A whole vLLM-Omni config file, read by :func:`read_omni_config`.

    Attributes:
        source: The file (or ``"<mapping>"``).
        schema: ``"deploy"`` (a ``stages:`` deploy profile) or ``"stage_args"``.
        platform: The platform whose ``platforms:`` overrides were applied.
        stages: The stages, in order.
        pipeline: The deploy profile's ``pipeline:`` (its registry key), or None.
        model_runner: ``"v1"`` or ``"v2"`` after the platform's override.
        connectors: The named connectors (top-level ``connectors``, or a legacy
            file's ``runtime.connectors``).
        settings: The file's other top-level keys (after ``base_config``), verbatim.
    """

    source: str
    schema: str
    platform: str
    stages: tuple[OmniStageConfig, ...]
    pipeline: str | None
    model_runner: str
    connectors: Mapping[str, Any]
    settings: Mapping[str, Any] = field(repr=False)

    def stage(self, stage_id: StageId) -> OmniStageConfig:
        """The stage with this id (compared as given, then as a string).

        Raises:
            KeyError: no such stage.
        """
        for stage in self.stages:
            if stage.stage_id == stage_id:
                return stage
        for stage in self.stages:
            if str(stage.stage_id) == str(stage_id):
                return stage
        raise KeyError(stage_id)


def read_omni_config(
    config: str | os.PathLike[str] | Mapping[str, Any],
    *,
    platform: str = "cuda",
    topology: Mapping[StageId, Mapping[str, Any]] | None = None,
    stage_types: Collection[str] | None = None,
) -> OmniConfig:
    """Read a vLLM-Omni deploy profile or legacy stage config.

    Args:
        config: A path to the YAML (PyYAML needed) or TOML file, or the mapping. A
            mapping's relative ``base_config`` is taken from the current directory.
        platform: Whose ``platforms:`` overrides apply (vLLM-Omni's platform
            ``device_name``: ``cuda``, ``rocm``, ``npu``, ``xpu``, ``musa``, ``cpu``...).
        topology: A deploy profile's topology, stage id -> ``model_stage``,
            ``stage_type`` (or vLLM-Omni's ``execution_type``), ``input_sources``,
            ``model_arch``, ``engine_output_type``, ``hf_config_name``. Its stages are
            the config's stages, as in vLLM-Omni (see :func:`omni_topology`).
        stage_types: The stage types the caller can run; a stage of another type, or
            of a type the file does not give, is refused. None: all of
            :data:`STAGE_TYPES`.

    Returns:
        The config, its stages in order.

    Raises:
        ConfigError: The file cannot be read (missing, not a regular file, over 1 MiB,
            not UTF-8, not YAML/TOML, nested too deeply, too many values), is not a
            mapping, its ``base_config`` chain is missing, cyclic or deeper than 16
            files, or a stage breaks the schema: no or duplicate ``stage_id``, an
            unknown or unsupported stage type, devices that are not ints or strings
            or cannot be split over the replicas, a connector or source naming an
            unknown stage or connector.
    """
    source, data = _resolved(config)
    if "stages" in data and "stage_args" not in data:
        return _Reader(source, data, platform, topology, stage_types).deploy()
    if "stage_args" in data:
        return _Reader(source, data, platform, topology, stage_types).legacy()
    raise ConfigError(
        source,
        "no 'stages' list (a deploy profile) and no 'stage_args' list (a legacy stage config)",
    )


def deploy_pipeline(config: str | os.PathLike[str] | Mapping[str, Any]) -> str | None:
    """A deploy profile's ``pipeline:`` (its key in vLLM-Omni's pipeline registry, after
    its ``base_config`` chain), or None: not set, not a string, or a legacy config.

    Raises:
        ConfigError: The file cannot be read (as for :func:`read_omni_config`).
    """
    _, data = _resolved(config)
    pipeline = data.get("pipeline") if "stage_args" not in data else None
    return pipeline if isinstance(pipeline, str) and pipeline else None


def _resolved(config: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The config's source and its data with the ``base_config`` chain merged in."""
    if isinstance(config, Mapping):
        source = Path("<mapping>")
        _check_values(source, config)
        return source, _resolve(source, dict(config), Path.cwd(), [])
    source = Path(config)
    return source, _resolve_file(source, [])


def omni_topology(pipeline: str, hf_config: Any = None) -> dict[StageId, dict[str, Any]]:
    """The topology vLLM-Omni registers for ``pipeline`` (a deploy profile's
    ``pipeline:``, or a model type), for :func:`read_omni_config`'s ``topology``.
    Imports vLLM-Omni's pipeline registry (and with it vLLM).

    Args:
        pipeline: The registry key, e.g. ``"qwen2_5_omni"``.
        hf_config: The model's Hugging Face config, for pipelines resolved from it.

    Returns:
        Stage id -> ``model_stage``, ``stage_type``, ``execution_type``,
        ``input_sources``, ``model_arch``, ``engine_output_type``, ``hf_config_name``,
        ``final_output``, ``final_output_type``.

    Raises:
        KeyError: vLLM-Omni has no pipeline of that name.
        ImportError: vLLM-Omni is not installed.
    """
    import importlib

    registry = importlib.import_module("vllm_omni.config.pipeline_registry")
    if hasattr(registry, "resolve_pipeline_config"):  # vLLM-Omni >= 0.24
        resolved = registry.resolve_pipeline_config(pipeline, hf_config)
    else:  # 0.22: a lazy registry in stage_config
        stage_config = importlib.import_module("vllm_omni.config.stage_config")
        resolved = stage_config._PIPELINE_REGISTRY.get(pipeline)
    if resolved is None:
        raise KeyError(f"vLLM-Omni has no pipeline {pipeline!r}")
    topology: dict[StageId, dict[str, Any]] = {}
    for stage in resolved.stages:
        execution = getattr(stage.execution_type, "value", stage.execution_type)
        topology[stage.stage_id] = {
            "model_stage": stage.model_stage,
            "execution_type": execution,
            "stage_type": _EXECUTION_TYPES.get(str(execution), "llm"),
            "input_sources": list(stage.input_sources),
            "model_arch": stage.model_arch or resolved.model_arch or None,
            "engine_output_type": stage.engine_output_type,
            "hf_config_name": stage.hf_config_name,
            "final_output": stage.final_output,
            "final_output_type": stage.final_output_type,
        }
    return topology


# --- files and base_config ------------------------------------------------------------


def _parse(path: Path, text: str) -> Any:
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(path, f"invalid TOML: {exc}") from None
        except RecursionError:
            raise ConfigError(path, f"values nested deeper than {MAX_DEPTH} levels") from None
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            path,
            "reading YAML needs PyYAML (pip install pyyaml; vLLM depends on it); "
            "a TOML file or a mapping needs nothing",
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, f"invalid YAML: {_one_line(exc)}") from None
    except RecursionError:
        raise ConfigError(path, f"values nested deeper than {MAX_DEPTH} levels") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _check_values(path: Path, data: object) -> None:
    """Refuse values nested deeper than MAX_DEPTH or more than MAX_VALUES of them (YAML
    aliases share one object many times: counting stops an alias bomb), without
    recursion."""
    stack: list[tuple[object, int]] = [(data, 0)]
    count = 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(path, f"has more than {MAX_VALUES} values (YAML aliases included)")
        if isinstance(item, Mapping):
            children: list[object] = list(item.values())
        elif isinstance(item, list | tuple):
            children = list(item)
        else:
            continue
        if children and depth + 1 > MAX_DEPTH:
            raise ConfigError(path, f"values nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def _load(path: Path) -> dict[str, Any]:
    try:
        text = _read(path)
    except IsADirectoryError:  # _read opens before it can fstat a directory
        raise ConfigError(path, "is a directory, not a regular file") from None
    data = _parse(path, text)
    if not isinstance(data, dict):
        raise ConfigError(
            path, f"must be a mapping with a 'stages' list, got {type(data).__name__}"
        )
    _check_values(path, data)
    return data


def _resolve_file(path: Path, chain: list[Path]) -> dict[str, Any]:
    return _resolve(path, _load(path), path.parent, [*chain, path])


def _resolve(
    path: Path, data: dict[str, Any], directory: Path, chain: list[Path]
) -> dict[str, Any]:
    """``data`` with its ``base_config`` chain merged in. Follows vLLM-Omni's
    ``resolve_deploy_yaml`` (vllm_omni/config/stage_config.py, 0.30.0): the base is
    taken relative to the overlay's directory, the overlay's top-level keys win, and
    ``connectors``, ``stages`` (by ``stage_id``) and ``platforms`` are merged. The
    bound on the chain and the cycle check are launch's (vLLM-Omni recurses until
    Python's recursion limit)."""
    if "base_config" not in data:
        return data
    data = dict(data)
    base = data.pop("base_config")
    if "stage_args" in data:
        raise ConfigError(
            path,
            "base_config overlays deploy profiles; vLLM-Omni's stage_args loader does not read it",
            key="base_config",
        )
    if not isinstance(base, str) or not base:
        raise ConfigError(path, f"must be a file name, got {base!r}", key="base_config")
    base_path = directory / base
    if len(chain) >= MAX_BASE_DEPTH:
        raise ConfigError(
            path,
            f"{base!r}: base_config chains more than {MAX_BASE_DEPTH} files",
            key="base_config",
        )
    real = os.path.realpath(base_path)
    seen = [os.path.realpath(p) for p in chain]
    if real in seen:
        loop = " -> ".join(str(p) for p in [*chain, base_path])
        raise ConfigError(
            path, f"{base!r}: base_config comes back to a file: {loop}", key="base_config"
        )
    if not base_path.exists():
        raise ConfigError(path, f"{base!r}: no such file ({base_path})", key="base_config")
    base_data = _resolve_file(base_path, chain)
    merged = {
        **base_data,
        **{k: v for k, v in data.items() if k not in ("connectors", "stages", "platforms")},
    }
    if base_data.get("connectors") or data.get("connectors"):
        merged["connectors"] = _merged(
            _mapping(path, base_data.get("connectors"), "connectors"),
            _mapping(path, data.get("connectors"), "connectors"),
        )
    merged["stages"] = _merge_stage_lists(
        path, base_data.get("stages"), data.get("stages"), "stages"
    )
    platforms = _merge_platforms(path, base_data.get("platforms"), data.get("platforms"))
    if platforms is not None:
        merged["platforms"] = platforms
    return merged


def _mapping(path: Path, value: Any, key: str, stage: str | None = None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            path, f"must be a mapping, got {type(value).__name__}", stage=stage, key=key
        )
    return dict(value)


def _merged(original: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """vLLM-Omni's ``_get_recursively_merged_dict``: mappings merge, anything else is
    replaced (iteratively here: overlays come from untrusted files)."""
    result = dict(original)
    stack = [(result, update)]
    while stack:
        target, overlay = stack.pop()
        for key, value in overlay.items():
            existing = target.get(key)
            if isinstance(existing, Mapping) and isinstance(value, Mapping):
                target[key] = dict(existing)
                stack.append((target[key], value))
            else:
                target[key] = value
    return result


def _stage_list(path: Path, value: Any, key: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(path, f"must be a list of stages, got {type(value).__name__}", key=key)
    stages = []
    seen: set[str] = set()
    for index, entry in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(path, f"must be a mapping, got {type(entry).__name__}", key=where)
        if "stage_id" not in entry:
            raise ConfigError(path, "needs a 'stage_id'", key=where)
        stage_id = _stage_id(path, entry["stage_id"], f"{where}.stage_id")
        if str(stage_id) in seen:
            raise ConfigError(path, "is used twice", stage=str(stage_id), key=f"{where}.stage_id")
        seen.add(str(stage_id))
        stages.append(dict(entry))
    return stages


def _stage_id(path: Path, value: Any, key: str) -> StageId:
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise ConfigError(path, f"must be an integer or a non-empty string, got {value!r}", key=key)
    return value


def _deep_merge_stage(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """vLLM-Omni's ``_deep_merge_stage``: the overlay's fields win, except that
    ``_DEEP_MERGE_KEYS`` merge recursively."""
    base_merge = {k: v for k, v in base.items() if k in _DEEP_MERGE_KEYS}
    overlay_merge = {k: v for k, v in overlay.items() if k in _DEEP_MERGE_KEYS}
    return {**base, **overlay, **_merged(base_merge, overlay_merge)}


def _merge_stage_lists(path: Path, base: Any, overlay: Any, key: str) -> list[dict[str, Any]]:
    """vLLM-Omni's ``_merge_stage_lists``: by ``stage_id``, base order first."""
    by_id = {str(s["stage_id"]): s for s in _stage_list(path, base, key)}
    for stage in _stage_list(path, overlay, key):
        sid = str(stage["stage_id"])
        by_id[sid] = _deep_merge_stage(by_id[sid], stage) if sid in by_id else stage
    return list(by_id.values())


def _merge_platforms(path: Path, base: Any, overlay: Any) -> dict[str, Any] | None:
    """vLLM-Omni's ``_merge_platforms``: per platform, its keys then its stages."""
    if not base and not overlay:
        return None
    base_map = _mapping(path, base, "platforms")
    overlay_map = _mapping(path, overlay, "platforms")
    merged: dict[str, Any] = {}
    for name in [*base_map, *(p for p in overlay_map if p not in base_map)]:
        key = f"platforms.{name}"
        bp = _mapping(path, base_map.get(name), key)
        op = _mapping(path, overlay_map.get(name), key)
        section = {**bp, **{k: v for k, v in op.items() if k != "stages"}}
        section["stages"] = _merge_stage_lists(
            path, bp.get("stages"), op.get("stages"), f"{key}.stages"
        )
        merged[name] = section
    return merged


# --- stages ---------------------------------------------------------------------------


@dataclass
class _Stage:
    """A stage being read: what vLLM-Omni's StageDeployConfig holds."""

    stage_id: StageId
    entry: dict[str, Any]
    devices: Any
    num_replicas: Any
    env: Any
    engine: dict[str, Any]
    attrs: dict[str, Any]  # the reserved StageDeployConfig fields


class _Reader:
    def __init__(
        self,
        path: Path,
        data: dict[str, Any],
        platform: str,
        topology: Mapping[StageId, Mapping[str, Any]] | None,
        stage_types: Collection[str] | None,
    ) -> None:
        if not isinstance(platform, str) or not platform:
            raise ValueError(f"platform must be a non-empty string, got {platform!r}")
        self.path, self.data, self.platform = path, data, platform
        self.topology = topology
        self.stage_types = tuple(STAGE_TYPES if stage_types is None else stage_types)

    def fail(self, message: str, stage: StageId | None = None, key: str = "") -> ConfigError:
        return ConfigError(self.path, message, stage=None if stage is None else str(stage), key=key)

    # deploy profiles ------------------------------------------------------------------

    def deploy(self) -> OmniConfig:
        data = self.data
        stages = {str(s["stage_id"]): s for s in _stage_list(self.path, data["stages"], "stages")}
        parsed = {sid: self._deploy_stage(entry) for sid, entry in stages.items()}
        model_runner = data.get("model_runner", "v1")
        platforms = _mapping(self.path, data.get("platforms"), "platforms")
        section = _mapping(self.path, platforms.get(self.platform), f"platforms.{self.platform}")
        if "model_runner" in section:
            model_runner = section["model_runner"]
        if model_runner not in ("v1", "v2"):
            raise self.fail(f"must be 'v1' or 'v2', got {model_runner!r}", key="model_runner")
        self._apply_platform(section, parsed)
        order: list[tuple[StageId, dict[str, Any]]]
        topology = self._topology()
        if topology is not None:
            extra = [sid for sid in parsed if sid not in {str(t) for t in topology}]
            if extra:
                raise self.fail(
                    f"is not a stage of the pipeline's topology (its stages: "
                    f"{', '.join(str(t) for t in topology)}); vLLM-Omni would ignore it",
                    stage=parsed[extra[0]].stage_id,
                    key="stage_id",
                )
            order = [(t, dict(info)) for t, info in topology.items()]
        else:
            order = [(p.stage_id, {}) for p in parsed.values()]
        pipeline_wide = {k: data[k] for k in _PIPELINE_WIDE if data.get(k) is not None}
        async_chunk = data.get("async_chunk", True)
        if len(order) <= 1:  # merge_pipeline_deploy: irrelevant to one stage
            async_chunk = False
        connectors = _mapping(self.path, data.get("connectors"), "connectors")
        results = []
        for stage_id, info in order:
            stage = parsed.get(str(stage_id))
            entry = stage.entry if stage is not None else {"stage_id": stage_id}
            engine = dict(pipeline_wide)
            if stage is not None:  # None is "not set" for vLLM-Omni's typed stage fields
                engine.update({k: v for k, v in stage.engine.items() if v is not None})
            attrs = stage.attrs if stage is not None else {}
            stage_async = bool(async_chunk and attrs.get("async_chunk") is not False)
            results.append(
                self._stage(
                    stage_id,
                    entry,
                    info,
                    engine,
                    devices=stage.devices if stage is not None else None,
                    num_replicas=stage.num_replicas if stage is not None else 1,
                    env=stage.env if stage is not None else None,
                    sources=info.get("input_sources", entry.get("engine_input_source")),
                    attrs=attrs,
                    connectors=connectors,
                    async_chunk=stage_async,
                    type_default=None,
                )
            )
        return self._config("deploy", results, model_runner, connectors)

    def _deploy_stage(self, entry: dict[str, Any]) -> _Stage:
        """vLLM-Omni's ``_parse_stage_deploy``: flat keys and ``engine_args`` are the
        engine options, ``runtime`` wins over the flat placement keys."""
        stage_id = entry["stage_id"]
        runtime = _mapping(self.path, entry.get("runtime"), "runtime", str(stage_id))
        if "replicas" in runtime:
            raise self.fail(
                "is not a vLLM-Omni key; the replica count is num_replicas",
                stage_id,
                "runtime.replicas",
            )
        flat = {k: v for k, v in entry.items() if k not in _RESERVED}
        nested = _mapping(self.path, entry.get("engine_args"), "engine_args", str(stage_id))
        for key, value in nested.items():
            existing = flat.get(key)
            if isinstance(value, Mapping) and isinstance(existing, Mapping):
                flat[key] = _merged(existing, value)
            else:
                flat[key] = value
        extras = _mapping(self.path, entry.get("engine_extras"), "engine_extras", str(stage_id))
        attrs = {k: entry[k] for k in _STAGE_ATTRS if k in entry}
        return _Stage(
            stage_id=stage_id,
            entry=entry,
            devices=runtime.get("devices", entry.get("devices")),
            num_replicas=runtime.get("num_replicas", entry.get("num_replicas", 1)),
            env=runtime.get("env", entry.get("env")),
            engine=_merged(extras, flat),
            attrs=attrs,
        )

    def _apply_platform(self, section: Mapping[str, Any], parsed: dict[str, _Stage]) -> None:
        """vLLM-Omni's ``_apply_platform_overrides`` for one platform section: devices
        and env (merged) replace the stage's, each other key replaces the stage's
        value, except that the ``_DEEP_MERGE_KEYS`` merge one level deep. A stage
        the section names that the profile lacks is skipped, as in vLLM-Omni."""
        key = f"platforms.{self.platform}.stages"
        for index, override in enumerate(_stage_list(self.path, section.get("stages"), key)):
            where = f"{key}[{index}]"
            stage = parsed.get(str(override["stage_id"]))
            if stage is None:
                continue
            if "engine_args" in override:
                overrides = dict(
                    _mapping(self.path, override["engine_args"], f"{where}.engine_args")
                )
                runtime = _mapping(self.path, override.get("runtime"), f"{where}.runtime")
                if "num_replicas" in runtime:
                    overrides["num_replicas"] = runtime["num_replicas"]
                devices, env = runtime.get("devices"), runtime.get("env")
            else:
                if "runtime" in override:
                    raise self.fail(
                        "without engine_args, vLLM-Omni passes 'runtime' to the engine as an "
                        "option; set devices, env and num_replicas on the stage",
                        stage.stage_id,
                        f"{where}.runtime",
                    )
                overrides = {
                    k: v for k, v in override.items() if k not in ("stage_id", "devices", "env")
                }
                devices, env = override.get("devices"), override.get("env")
            if devices is not None:
                stage.devices = devices
            if env is not None:
                if isinstance(stage.env, Mapping) and isinstance(env, Mapping):
                    stage.env = {**stage.env, **env}
                else:
                    stage.env = env
            for name, value in overrides.items():
                if name == "num_replicas":
                    stage.num_replicas = value
                elif name in _STAGE_ATTRS:
                    stage.attrs[name] = _overlay(name, stage.attrs.get(name), value)
                elif name == "engine_extras" and isinstance(value, Mapping):
                    stage.engine.update(value)
                else:
                    stage.engine[name] = _overlay(name, stage.engine.get(name), value)

    def _topology(self) -> dict[StageId, Mapping[str, Any]] | None:
        if self.topology is None:
            return None
        if not isinstance(self.topology, Mapping) or not self.topology:
            raise ValueError("topology must be a non-empty mapping of stage id -> stage")
        result: dict[StageId, Mapping[str, Any]] = {}
        for stage_id, info in self.topology.items():
            if isinstance(stage_id, bool) or not isinstance(stage_id, int | str):
                raise ValueError(f"topology: stage id {stage_id!r} is not an int or a string")
            if not isinstance(info, Mapping):
                raise ValueError(f"topology: stage {stage_id!r} must be a mapping")
            result[stage_id] = info
        return result

    # legacy stage_args ----------------------------------------------------------------

    def legacy(self) -> OmniConfig:
        data = self.data
        runtime = _mapping(self.path, data.get("runtime"), "runtime")
        connectors = _mapping(self.path, runtime.get("connectors"), "runtime.connectors")
        async_chunk = bool(data.get("async_chunk", False))
        results = []
        for entry in _stage_list(self.path, data["stage_args"], "stage_args"):
            stage_id = entry["stage_id"]
            stage_runtime = _mapping(self.path, entry.get("runtime"), "runtime", str(stage_id))
            if "replicas" in stage_runtime:
                raise self.fail(
                    "is not a vLLM-Omni key; the replica count is runtime.num_replicas",
                    stage_id,
                    "runtime.replicas",
                )
            engine = _mapping(self.path, entry.get("engine_args"), "engine_args", str(stage_id))
            stage_type = entry.get("stage_type", "llm")
            results.append(
                self._stage(
                    stage_id,
                    entry,
                    {},
                    engine,
                    devices=stage_runtime.get("devices"),
                    num_replicas=stage_runtime.get("num_replicas", 1),
                    env=stage_runtime.get("env"),
                    sources=entry.get("engine_input_source"),
                    attrs={k: entry[k] for k in _STAGE_ATTRS if k in entry},
                    connectors=connectors,
                    # load_stage_configs_from_yaml: the file's async_chunk, not for diffusion
                    async_chunk=async_chunk and stage_type != "diffusion",
                    type_default="llm",
                )
            )
        return self._config("stage_args", results, str(data.get("model_runner", "v1")), connectors)

    # both -----------------------------------------------------------------------------

    def _stage(
        self,
        stage_id: StageId,
        entry: Mapping[str, Any],
        info: Mapping[str, Any],
        engine: dict[str, Any],
        *,
        devices: Any,
        num_replicas: Any,
        env: Any,
        sources: Any,
        attrs: Mapping[str, Any],
        connectors: Mapping[str, Any],
        async_chunk: bool,
        type_default: str | None,
    ) -> tuple[OmniStageConfig, list[Any], str]:
        stage = str(stage_id)
        stage_type = self._stage_type(stage_id, entry, info, type_default)
        replicas = num_replicas
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise self.fail(f"must be an integer >= 0, got {replicas!r}", stage_id, "num_replicas")
        replicas = max(1, replicas)  # compute_replica_layout clamps 0 to 1
        if replicas > MAX_REPLICAS:
            raise self.fail(f"at most {MAX_REPLICAS} replicas per stage", stage_id, "num_replicas")
        per_replica = self._devices_per_replica(stage_id, stage_type, engine)
        split = self._split_devices(stage_id, devices, replicas, per_replica)
        if env is not None and not isinstance(env, Mapping):
            raise self.fail(f"must be a mapping, got {type(env).__name__}", stage_id, "env")
        if sources is None:
            sources = []
        if isinstance(sources, str | bytes) or not isinstance(sources, Sequence):
            raise self.fail(
                f"must be a list of stage ids, got {sources!r}", stage_id, "engine_input_source"
            )
        inputs = self._connectors(
            stage_id, attrs.get("input_connectors"), "input_connectors", "from_stage_", connectors
        )
        outputs = self._connectors(
            stage_id, attrs.get("output_connectors"), "output_connectors", "to_stage_", connectors
        )
        model_stage = info.get("model_stage", engine.get("model_stage", entry.get("model_stage")))
        described = {key: info.get(key, engine.get(key)) for key in _TOPOLOGY_KEYS}
        for key, value in [("model_stage", model_stage), *described.items()]:
            if value is not None and not isinstance(value, str):
                raise self.fail(f"must be a string, got {value!r}", stage_id, key)
        sampling = attrs.get("default_sampling_params")
        if sampling is not None and not isinstance(sampling, Mapping):
            raise self.fail(
                f"must be a mapping, got {type(sampling).__name__}",
                stage_id,
                "default_sampling_params",
            )
        config = OmniStageConfig(
            stage_id=stage_id,
            name=model_stage or f"stage-{stage}",
            stage_type=stage_type,
            replicas=replicas,
            devices=split,
            engine_args=engine,
            input_sources=(),  # set in _config, once every stage id is known
            input_connectors=inputs,
            output_connectors=outputs,
            model_stage=model_stage,
            model_arch=described["model_arch"],
            engine_output_type=described["engine_output_type"],
            hf_config_name=described["hf_config_name"],
            env=dict(env) if env is not None else None,
            async_chunk=async_chunk,
            default_sampling_params=dict(sampling) if sampling is not None else None,
            config=dict(entry),
        )
        key = "input_sources" if info.get("input_sources") is not None else "engine_input_source"
        return config, list(sources), key

    def _stage_type(
        self,
        stage_id: StageId,
        entry: Mapping[str, Any],
        info: Mapping[str, Any],
        default: str | None,
    ) -> str | None:
        key = "stage_type"
        value = info.get("stage_type", entry.get("stage_type"))
        if value is None:
            key = "execution_type"
            value = info.get("execution_type", entry.get("execution_type"))
            if value is not None:
                if value not in _EXECUTION_TYPES:
                    raise self.fail(
                        f"unknown stage type {value!r}; "
                        f"vLLM-Omni's are {', '.join(_EXECUTION_TYPES)}",
                        stage_id,
                        key,
                    )
                value = _EXECUTION_TYPES[value]
        if value is None:
            value = default
        if value is not None and (not isinstance(value, str) or value not in STAGE_TYPES):
            raise self.fail(
                f"unknown stage type {value!r}; vLLM-Omni's are {', '.join(STAGE_TYPES)}",
                stage_id,
                key,
            )
        if value is None:
            if self.stage_types != STAGE_TYPES:
                raise self.fail(
                    "the file does not say the stage's type: a deploy profile's stage types are "
                    "in vLLM-Omni's pipeline registry; pass topology= (omni_topology("
                    f"{self.data.get('pipeline') or '<pipeline>'!r}) with vllm-omni installed)",
                    stage_id,
                    "stage_type",
                )
        elif value not in self.stage_types:
            raise self.fail(
                f"stage_type {value!r} is not supported here (supported: "
                f"{', '.join(self.stage_types) or 'none'}); it is not run as another type",
                stage_id,
                key,
            )
        return value

    def _devices_per_replica(
        self, stage_id: StageId, stage_type: str | None, engine: Mapping[str, Any]
    ) -> int:
        """vLLM-Omni's ``get_stage_devices_per_replica``: tp x local dp x pp for an LLM
        stage; a diffusion stage's ``parallel_config`` world size (as
        ``DiffusionParallelConfig`` computes it, HSDP's standalone case included)."""

        def size(source: Mapping[str, Any], key: str, default: int = 1) -> int:
            value = source.get(key)
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self.fail(f"must be an integer >= 0, got {value!r}", stage_id, key)
            return value

        parallel = engine.get("parallel_config")
        # a deploy profile read without its topology: a parallel_config is diffusion's
        if stage_type == "diffusion" or (stage_type is None and isinstance(parallel, Mapping)):
            if not isinstance(parallel, Mapping):
                return 1
            if parallel.get("world_size") is not None:
                return max(1, size(parallel, "world_size"))
            allgather = size(parallel, "allgather_degree")
            sp = parallel.get("sequence_parallel_size")
            if sp is None:
                sp = (
                    allgather
                    if allgather > 1
                    else size(parallel, "ulysses_degree") * size(parallel, "ring_degree")
                )
            world = (
                size(parallel, "pipeline_parallel_size")
                * (size(parallel, "data_parallel_size") or 1)
                * size(parallel, "tensor_parallel_size")
                * int(sp)
                * size(parallel, "cfg_parallel_size")
            )
            if (
                world == 1
                and parallel.get("use_hsdp")
                and size(parallel, "hsdp_shard_size", -1) > 0
            ):
                world = size(parallel, "hsdp_replicate_size") * size(parallel, "hsdp_shard_size")
            return max(1, world)
        local_dp = engine.get("data_parallel_size_local")
        dp = (
            size(engine, "data_parallel_size_local")
            if local_dp is not None
            else size(engine, "data_parallel_size")
        )
        return (
            size(engine, "tensor_parallel_size")
            * max(1, dp)
            * size(engine, "pipeline_parallel_size")
        )

    def _split_devices(
        self, stage_id: StageId, devices: Any, replicas: int, per_replica: int
    ) -> tuple[tuple[str, ...], ...]:
        """vLLM-Omni's ``split_devices_for_replicas``: one replica takes them all; more
        take consecutive slices of a pool of replicas x devices-per-replica, or offset
        a template of devices-per-replica indexes."""
        key = "devices"
        if devices is None or devices == "":
            return ()
        if isinstance(devices, bool) or not isinstance(devices, int | str | list):
            raise self.fail(
                'must be device indexes or ids like "0,1", '
                f"got {type(devices).__name__} {devices!r}",
                stage_id,
                key,
            )
        items = (
            devices.split(",")
            if isinstance(devices, str)
            else devices
            if isinstance(devices, list)
            else [devices]
        )
        parts = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int | str):
                raise self.fail(
                    f"device {item!r} is a {type(item).__name__}, not an int or a string",
                    stage_id,
                    key,
                )
            part = str(item).strip()
            if not part:
                raise self.fail(f"{devices!r} has an empty entry", stage_id, key)
            parts.append(part)
        if replicas == 1:
            return (tuple(parts),)
        if len(parts) == replicas * per_replica:
            return tuple(
                tuple(parts[r * per_replica : (r + 1) * per_replica]) for r in range(replicas)
            )
        if len(parts) == per_replica:
            if not all(p.isdigit() and int(p) < per_replica for p in parts):
                raise self.fail(
                    f"{devices!r}: as a per-replica template its entries must be indexes in "
                    f"[0, {per_replica})",
                    stage_id,
                    key,
                )
            return tuple(
                tuple(str(r * per_replica + int(p)) for p in parts) for r in range(replicas)
            )
        raise self.fail(
            f"{devices!r} has {len(parts)} device(s); {replicas} replicas of {per_replica} "
            f"device(s) need {per_replica} (a per-replica template) or "
            f"{replicas * per_replica} (the pool)",
            stage_id,
            key,
        )

    def _connectors(
        self,
        stage_id: StageId,
        value: Any,
        key: str,
        prefix: str,
        named: Mapping[str, Any],
    ) -> dict[StageId, Mapping[str, Any]]:
        """``{"from_stage_0": "name" | {"name", "extra"}}`` -> {"0": {"name", "extra"}},
        as vLLM-Omni's ``load_omni_transfer_config`` reads it (the stage ids are matched
        against the stages in ``_config``)."""
        result: dict[StageId, Mapping[str, Any]] = {}
        for name, ref in _mapping(self.path, value, key, str(stage_id)).items():
            where = f"{key}.{name}"
            if not isinstance(name, str) or not name.startswith(prefix) or name == prefix:
                raise self.fail(f"keys are {prefix}<stage id>, got {name!r}", stage_id, where)
            if isinstance(ref, str):
                if ref not in named:
                    known = ", ".join(map(str, named)) or "none"
                    raise self.fail(
                        f"names an unknown connector {ref!r} (connectors: {known})", stage_id, where
                    )
                ref = named[ref]
            if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str):
                raise self.fail("a connector is a mapping with a 'name'", stage_id, where)
            result[name[len(prefix) :]] = {
                "name": ref["name"],
                "extra": dict(ref.get("extra") or {}),
            }
        return result

    def _config(
        self,
        schema: str,
        results: list[tuple[OmniStageConfig, list[Any], str]],
        model_runner: str,
        connectors: Mapping[str, Any],
    ) -> OmniConfig:
        ids: dict[str, StageId] = {}
        for stage, _, _ in results:
            if str(stage.stage_id) in ids:
                raise self.fail("is used twice", stage.stage_id, "stage_id")
            ids[str(stage.stage_id)] = stage.stage_id

        def known(ref: Any, stage: OmniStageConfig, key: str) -> StageId:
            if isinstance(ref, bool) or not isinstance(ref, int | str) or str(ref) not in ids:
                raise self.fail(
                    f"names unknown stage {ref!r} (stages: {', '.join(map(str, ids.values()))})",
                    stage.stage_id,
                    key,
                )
            return ids[str(ref)]

        edges = (
            self.data.get("edges")
            if schema == "deploy"
            else _mapping(self.path, self.data.get("runtime"), "runtime").get("edges")
        )
        if edges is not None and not isinstance(edges, list):
            raise self.fail("must be a list of {from, to}", key="edges")
        into: dict[str, list[StageId]] = {}
        for index, edge in enumerate(edges or []):
            if not isinstance(edge, Mapping) or edge.get("from") is None or edge.get("to") is None:
                continue  # vLLM-Omni skips it
            for end in ("from", "to"):
                if str(edge[end]) not in ids:
                    raise self.fail(
                        f"names unknown stage {edge[end]!r}", key=f"edges[{index}].{end}"
                    )
            into.setdefault(str(edge["to"]), []).append(ids[str(edge["from"])])

        names: set[str] = set()
        stages = []
        for stage, refs, key in results:
            sources: list[StageId] = []
            for ref in refs:
                source = known(ref, stage, key)
                if source not in sources:
                    sources.append(source)
            inputs = {}
            for ref, connector in stage.input_connectors.items():
                source = known(ref, stage, f"input_connectors.from_stage_{ref}")
                inputs[source] = connector
                if source not in sources:
                    sources.append(source)
            for source in into.get(str(stage.stage_id), []):
                if source not in sources:
                    sources.append(source)
            outputs = {
                known(ref, stage, f"output_connectors.to_stage_{ref}"): connector
                for ref, connector in stage.output_connectors.items()
            }
            if stage.stage_id in sources:
                raise self.fail("a stage cannot read from itself", stage.stage_id, "input_sources")
            name = stage.name if stage.name not in names else f"{stage.name}-{stage.stage_id}"
            names.add(name)
            stages.append(
                OmniStageConfig(
                    **{
                        **stage.__dict__,
                        "name": name,
                        "input_sources": tuple(sources),
                        "input_connectors": inputs,
                        "output_connectors": outputs,
                    }
                )
            )
        if not stages:
            raise self.fail("has no stages", key="stages" if schema == "deploy" else "stage_args")
        skip = ("stages", "stage_args", "base_config") + (
            ("connectors",) if schema == "deploy" else ()
        )
        pipeline = self.data.get("pipeline")
        if pipeline is not None and not isinstance(pipeline, str):
            raise self.fail(f"must be a string, got {pipeline!r}", key="pipeline")
        return OmniConfig(
            source=str(self.path),
            schema=schema,
            platform=self.platform,
            stages=tuple(stages),
            pipeline=pipeline,
            model_runner=model_runner,
            connectors=dict(connectors),
            settings={k: v for k, v in self.data.items() if k not in skip},
        )


def _overlay(name: str, base: Any, value: Any) -> Any:
    """A platform override's ``value`` for key ``name``: merged one level into ``base``
    for the keys vLLM-Omni deep-merges, else replacing it."""
    if name in _DEEP_MERGE_KEYS and isinstance(value, Mapping) and isinstance(base, Mapping):
        return {**base, **value}
    return value
