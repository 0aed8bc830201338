"""vLLM-Omni stage configs started as a launch pipeline.

vLLM-Omni splits a model into stages (``stage_args`` in its stage-config YAML: a thinker,
a talker, a vocoder...), each an engine of its own on its own devices. Here every stage
replica becomes a stage of a launch pipeline tree::

    spec = omni_pipeline("qwen2_5_omni.yaml", model="/models/qwen2.5-omni")
    async with launch.open_pipeline(spec) as running:
        running["thinker"]["thinker"].payload["address"]

- each replica's devices (``runtime.devices``, split evenly over ``runtime.replicas``;
  or a deploy profile's ``devices`` and ``num_replicas``) are its device locks and its
  ``CUDA_VISIBLE_DEVICES``, set inside the child;
- stages start concurrently: two stages that share a device serialize on its lock (so
  vLLM's memory profiling sees the device alone), the others overlap; only launch's
  narrow lock covers each spawn;
- the first stage that fails tears the whole tree down, with its own traceback.

``engine_input_source`` is the data flow between stages, not a startup order: it is kept
on :class:`OmniStage` for the stage runtime. The default stage target,
:func:`engine_stage`, runs the stage's ``engine_args`` as a vLLM ``LLM`` and answers
token requests on a ZMQ socket (:func:`ask_stage`); pass ``target=`` to run vLLM-Omni's
own stage worker (any ``module:qualname`` taking ``stage`` and ``model``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._pipeline_spec import PipelineSpec, StageSpec
from .._spec import ProcessSpec, ShutdownPolicy, StartMethod

ENGINE_STAGE_TARGET = "launch.integrations.omni:engine_stage"


@dataclass(frozen=True)
class OmniStage:
    """One replica of one vLLM-Omni stage, as the stage's child receives it."""

    stage_id: int
    name: str
    replica: int
    devices: tuple[str, ...]
    engine_args: Mapping[str, Any]
    input_sources: tuple[int, ...]
    config: Mapping[str, Any]
    """The stage's whole entry in ``stage_args``."""


def _load(config: str | Path | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    if isinstance(config, Mapping):
        return config, "stage config"
    path = Path(config)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the stage config ({exc.strerror})") from None
    if path.suffix == ".toml":
        return tomllib.loads(text), str(path)
    import yaml  # vLLM-Omni's format; PyYAML comes with vllm

    loaded = yaml.safe_load(text)
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path}: a stage config is a mapping with a 'stage_args' list")
    return loaded, str(path)


def _devices(value: Any, where: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, int):
        return (str(value),)
    if isinstance(value, str):
        parts = tuple(part.strip() for part in value.split(","))
    elif isinstance(value, Sequence):
        parts = tuple(str(part).strip() for part in value)
    else:
        raise ValueError(f'{where}: runtime.devices must be like "0,1", got {value!r}')
    if any(not part for part in parts):
        raise ValueError(f"{where}: runtime.devices {value!r} has an empty entry")
    return parts


def omni_stages(config: str | Path | Mapping[str, Any]) -> list[OmniStage]:
    """Every stage replica of a vLLM-Omni stage config (a path to its YAML or TOML, or
    the mapping), in order. Reads ``stage_args`` (devices and replicas under
    ``runtime``) or a deploy profile's ``stages`` (``devices`` and ``num_replicas`` on
    the stage).

    Args:
        config: the stage config: a path to its YAML or TOML file, or the mapping.

    Returns:
        One :class:`OmniStage` per stage replica, in the config's order.

    Raises:
        ValueError: anything malformed, naming the file, the stage and the key.
    """
    data, source = _load(config)
    if "base_config" in data:
        raise ValueError(
            f"{source}: base_config ({data['base_config']!r}) overlays another file; "
            "pass the merged stage config"
        )
    key = "stage_args" if "stage_args" in data or "stages" not in data else "stages"
    entries = data.get(key)
    if not isinstance(entries, Sequence) or isinstance(entries, str) or not entries:
        raise ValueError(f"{source}: '{key}' must be a non-empty list of stages")
    ids: dict[int, str] = {}
    parsed: list[tuple[int, str, Mapping[str, Any], tuple[int, ...], int, tuple[str, ...]]] = []
    for index, entry in enumerate(entries):
        where = f"{source}: {key}[{index}]"
        if not isinstance(entry, Mapping) or "stage_id" not in entry:
            raise ValueError(f"{where}: each stage needs a 'stage_id'")
        stage_id = entry["stage_id"]
        if not isinstance(stage_id, int) or isinstance(stage_id, bool):
            raise ValueError(f"{where}: stage_id must be an integer, got {stage_id!r}")
        if stage_id in ids:
            raise ValueError(f"{where}: stage_id {stage_id} is used twice")
        engine_args = entry.get("engine_args") or {}
        if not isinstance(engine_args, Mapping):
            raise ValueError(f"{where}: engine_args must be a mapping")
        name = str(engine_args.get("model_stage") or f"stage-{stage_id}")
        if name in ids.values():
            name = f"{name}-{stage_id}"
        ids[stage_id] = name
        runtime = entry.get("runtime") or {}
        if not isinstance(runtime, Mapping):
            raise ValueError(f"{where}: runtime must be a mapping")
        devices = _devices(runtime.get("devices", entry.get("devices")), where)
        replicas = runtime.get(
            "replicas", runtime.get("num_replicas", entry.get("num_replicas", 1))
        )
        if not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"{where}: runtime.replicas must be a positive integer")
        if replicas > 1 and devices and len(devices) % replicas:
            raise ValueError(
                f"{where}: runtime.devices {','.join(devices)} cannot be split evenly over "
                f"{replicas} replicas"
            )
        sources = entry.get("engine_input_source") or []
        if not isinstance(sources, Sequence) or isinstance(sources, str):
            raise ValueError(f"{where}: engine_input_source must be a list of stage ids")
        parsed.append((stage_id, name, entry, tuple(sources), replicas, devices))
    stages = []
    for stage_id, name, entry, sources, replicas, devices in parsed:
        unknown = [s for s in sources if s not in ids]
        if unknown:
            raise ValueError(
                f"{source}: stage {stage_id} ({name}): engine_input_source names unknown "
                f"stage id(s) {unknown}; known: {sorted(ids)}"
            )
        share = len(devices) // replicas if devices else 0
        for replica in range(replicas):
            stages.append(
                OmniStage(
                    stage_id=stage_id,
                    name=name if replicas == 1 else f"{name}-r{replica}",
                    replica=replica,
                    devices=devices[replica * share : (replica + 1) * share] if share else devices,
                    engine_args=dict(entry.get("engine_args") or {}),
                    input_sources=sources,
                    config=dict(entry),
                )
            )
    return stages


def omni_pipeline(
    config: str | Path | Mapping[str, Any],
    *,
    model: str,
    target: str = ENGINE_STAGE_TARGET,
    name: str = "omni",
    ready_timeout: float | None = 600.0,
    start_method: StartMethod = "spawn",
    lock_dir: str | Path | None = None,
    device_lock_timeout: float | None = 600.0,
    shutdown: ShutdownPolicy | None = None,
    env: Mapping[str, str] | None = None,
) -> PipelineSpec:
    """A launch :class:`PipelineSpec` with one stage per vLLM-Omni stage replica, each
    running ``target(stage=<OmniStage as a dict>, model=model)`` on its devices.

    Args:
        config: the stage config (see :func:`omni_stages`).
        model: the model path or id, passed to every stage's target.
        target: the ``module:qualname`` each stage runs; :func:`engine_stage` by default.
        name: the pipeline's name.
        ready_timeout: seconds from spawn to READY for each stage; None: no deadline.
        start_method: how each stage's process starts.
        lock_dir: the device lock directory (see :class:`launch.PipelineSpec`).
        device_lock_timeout: how long a stage waits for its devices' locks.
        shutdown: how stages are stopped.
        env: variables set in every stage's process.

    Returns:
        The pipeline spec, for :func:`launch.open_pipeline` or :func:`launch.start_pipeline`.

    Raises:
        ValueError: the config is malformed (see :func:`omni_stages`).
    """
    stages = [
        StageSpec(
            stage.name,
            [
                ProcessSpec(
                    target,
                    name=stage.name,
                    kwargs={"stage": dataclasses.asdict(stage), "model": model},
                    env=dict(env or {}),
                    start_method=start_method,
                    ready_timeout=ready_timeout,
                )
            ],
            devices=stage.devices,
        )
        for stage in omni_stages(config)
    ]
    return PipelineSpec(
        stages,
        name=name,
        lock_dir=lock_dir,
        device_lock_timeout=device_lock_timeout,
        shutdown=shutdown,
    )


def engine_stage(*, stage: dict[str, Any], model: str) -> None:
    """Reference stage target: the stage's ``engine_args`` as a vLLM ``LLM`` (keys vLLM
    does not know, such as Omni's ``model_stage``, are left out and listed in the READY
    payload), answering ``{"prompt_token_ids": [...], "max_tokens": n}`` requests with
    token ids on a ZMQ socket until launch stops it."""
    import zmq
    from vllm import LLM, SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.network_utils import get_open_zmq_ipc_path

    from .. import phase, ready, stop_requested

    known = {field.name for field in dataclasses.fields(EngineArgs)}
    args = {k: v for k, v in stage["engine_args"].items() if k in known}
    ignored = sorted(set(stage["engine_args"]) - known)
    phase(f"engine {stage['name']}")
    llm = LLM(model=model, **args)
    context = zmq.Context()
    socket = context.socket(zmq.REP)
    socket.setsockopt(zmq.LINGER, 0)
    address = get_open_zmq_ipc_path()
    socket.bind(address)
    try:
        ready(
            {
                "stage_id": stage["stage_id"],
                "address": address,
                "pid": os.getpid(),
                "ignored_engine_args": ignored,
            }
        )
        while not stop_requested():
            if not socket.poll(100):
                continue
            request = socket.recv_json()
            params = SamplingParams(max_tokens=int(request["max_tokens"]), detokenize=False)
            (output,) = llm.generate([{"prompt_token_ids": request["prompt_token_ids"]}], params)
            socket.send_json({"token_ids": list(output.outputs[0].token_ids)})
    finally:
        socket.close()
        context.term()
        llm.llm_engine.engine_core.shutdown()


def ask_stage(
    address: str, prompt_token_ids: list[int], max_tokens: int, timeout: float = 60.0
) -> list[int]:
    """Send one request to a stage run by :func:`engine_stage`.

    Args:
        address: the stage's ZMQ address (``payload["address"]`` of its READY).
        prompt_token_ids: the prompt, as token ids.
        max_tokens: how many tokens to generate.
        timeout: seconds to wait for the answer.

    Returns:
        The generated token ids.

    Raises:
        TimeoutError: no answer within ``timeout``.
    """
    import zmq

    context = zmq.Context()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(address)
        socket.send_json({"prompt_token_ids": prompt_token_ids, "max_tokens": max_tokens})
        if not socket.poll(int(timeout * 1000)):
            raise TimeoutError(f"stage at {address} did not answer within {timeout} s")
        answer = socket.recv_json()
        return [int(token) for token in answer["token_ids"]]
    finally:
        socket.close()
        context.term()
