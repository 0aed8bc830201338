"""vLLM-Omni stage configs started as a launch pipeline.

vLLM-Omni splits a model into stages (a thinker, a talker, a vocoder...), each an engine
of its own on its own devices. Here every stage replica becomes a stage of a launch
pipeline tree::

    spec = omni_pipeline("qwen2_5_omni.yaml", model="/models/qwen2.5-omni")
    async with launch.open_pipeline(spec) as running:
        running["thinker"]["thinker"].payload["address"]

- the config is read as vLLM-Omni reads it (both generations: deploy profiles with their
  ``base_config`` overlays and ``platforms:`` overrides, and legacy ``stage_args``
  files; see docs/omni.md), and what launch cannot run is refused with a
  :class:`launch.ConfigError` naming the file, the stage and the key;
- each replica's devices (split over ``num_replicas`` as vLLM-Omni splits them) are its
  device locks and its ``CUDA_VISIBLE_DEVICES``, set inside the child;
- stages start concurrently: two stages that share a device serialize on its lock (so
  vLLM's memory profiling sees the device alone), the others overlap; only launch's
  narrow lock covers each spawn;
- the first stage that fails tears the whole tree down, with its own traceback.

The input sources (``engine_input_source``, ``input_connectors``, the topology's
``input_sources``) are the data flow between stages, not a startup order: they are kept
on :class:`OmniStage` for the stage runtime. The default stage target,
:func:`engine_stage`, runs an LLM stage's ``engine_args`` as a vLLM ``LLM`` and answers
token requests on a ZMQ socket (:func:`ask_stage`); pass ``target=`` to run vLLM-Omni's
own stage worker (any ``module:qualname`` taking ``stage`` and ``model``).

:class:`LaunchAsyncOmniEngine` is vLLM-Omni's own orchestrator (``AsyncOmniEngine``)
with its LLM stages started that way, as one launch group held for the engine's life.

:func:`open_omni_stages` starts vLLM-Omni's own stage process (``StageEngineCoreProc``,
vLLM-Omni installed) for each replica's ``VllmConfig``, serves Omni's handshake, and
gives each replica's client addresses and Omni's stage client: the part of vLLM-Omni's
``AsyncOmniEngine`` that launches LLM stages, done by launch (docs/omni.md).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import ConfigError, PipelineSpec, ProcessSpec, ShutdownPolicy, StageSpec, StartMethod
from ._omni_config import StageId, deploy_pipeline, omni_topology, read_omni_config
from ._omni_stage import OmniStageLaunch, OmniStageProcess, OmniStages, open_omni_stages

if TYPE_CHECKING:
    from ._omni_engine import LaunchAsyncOmniEngine, StageRefused

__all__ = [
    "ENGINE_STAGE_TARGET",
    "LaunchAsyncOmniEngine",
    "OmniStage",
    "OmniStageLaunch",
    "OmniStageProcess",
    "OmniStages",
    "StageRefused",
    "ask_stage",
    "engine_stage",
    "omni_pipeline",
    "omni_stages",
    "omni_topology",
    "open_omni_stages",
]

ENGINE_STAGE_TARGET = "launch.integrations.omni:engine_stage"

# Subclasses of vLLM-Omni's engine: importing them imports vLLM-Omni, so only on demand
_ENGINE_NAMES = ("LaunchAsyncOmniEngine", "StageRefused")


def __getattr__(name: str) -> Any:
    """``LaunchAsyncOmniEngine`` and ``StageRefused``, imported (with vLLM-Omni) when
    first asked for (see :mod:`launch.integrations._omni_engine`).

    Args:
        name: The attribute.

    Returns:
        The class.

    Raises:
        AttributeError: No such name.
        ImportError: vLLM-Omni is not installed.
    """
    if name in _ENGINE_NAMES:
        from . import _omni_engine

        return getattr(_omni_engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class OmniStage:
    """One replica of one vLLM-Omni stage, as the stage's child receives it (as a dict).

    Attributes:
        stage_id: The stage's id as the file gives it (an int, or a string).
        name: The stage's ``model_stage`` (else ``stage-<id>``), with ``-r<replica>``
            when the stage has more than one replica; the launch stage's name.
        replica: This replica's index, from 0.
        devices: This replica's devices (indexes into the visible devices), or ``()``.
        engine_args: The stage's engine options, merged as vLLM-Omni merges them.
        input_sources: The ids of the stages this one reads from.
        config: The stage's whole entry in the file (after ``base_config``).
        stage_type: ``"llm"`` or ``"diffusion"``; None where neither the file nor the
            topology says.
        model_stage: The stage's ``model_stage``, or None.
        model_arch: The stage's ``model_arch``, or None.
        engine_output_type: The stage's ``engine_output_type``, or None.
        hf_config_name: The stage's ``hf_config_name``, or None.
    """

    stage_id: int | str
    name: str
    replica: int
    devices: tuple[str, ...]
    engine_args: Mapping[str, Any]
    input_sources: tuple[int | str, ...]
    config: Mapping[str, Any]
    stage_type: str | None = None
    model_stage: str | None = None
    model_arch: str | None = None
    engine_output_type: str | None = None
    hf_config_name: str | None = None


def omni_stages(
    config: str | Path | Mapping[str, Any],
    *,
    platform: str = "cuda",
    topology: Mapping[StageId, Mapping[str, Any]] | None = None,
    stage_types: Collection[str] | None = None,
) -> list[OmniStage]:
    """Every stage replica of a vLLM-Omni config, in order: a deploy profile
    (``stages:``, with its ``base_config`` chain and ``platforms:`` overrides) or a
    legacy stage config (``stage_args:``).

    Args:
        config: A path to the YAML (PyYAML needed) or TOML file, or the mapping.
        platform: Whose ``platforms:`` overrides apply (vLLM-Omni's device name:
            ``cuda``, ``rocm``, ``npu``, ``xpu``...).
        topology: A deploy profile's stages as vLLM-Omni's pipeline registry gives
            them (stage id -> ``model_stage``, ``stage_type`` or ``execution_type``,
            ``input_sources``...): a deploy profile does not name its stages or say
            their types. None: :func:`omni_topology` of the profile's ``pipeline:``
            where vLLM-Omni is installed and importable, else none.
        stage_types: The stage types the caller can run (``"llm"``, ``"diffusion"``);
            a stage of another type, or of a type the config does not give, is
            refused. None: any.

    Returns:
        One :class:`OmniStage` per stage replica, in the config's order.

    Raises:
        ConfigError: The file cannot be read, breaks vLLM-Omni's schema, names a
            pipeline vLLM-Omni does not have, or has a stage of a type not in
            ``stage_types``; the message names the file, the stage and the key.
    """
    if topology is None:
        topology = _installed_topology(config)
    read = read_omni_config(config, platform=platform, topology=topology, stage_types=stage_types)
    return [
        OmniStage(
            stage_id=s.stage_id,
            name=s.name if s.replicas == 1 else f"{s.name}-r{r}",
            replica=r,
            devices=s.devices[r] if s.devices else (),
            engine_args=s.engine_args,
            input_sources=s.input_sources,
            config=s.config,
            stage_type=s.stage_type,
            model_stage=s.model_stage,
            model_arch=s.model_arch,
            engine_output_type=s.engine_output_type,
            hf_config_name=s.hf_config_name,
        )
        for s in read.stages
        for r in range(s.replicas)
    ]


def _installed_topology(
    config: str | Path | Mapping[str, Any],
) -> dict[StageId, dict[str, Any]] | None:
    """The topology of a deploy profile's ``pipeline:`` from the installed vLLM-Omni;
    None where there is no ``pipeline:`` or vLLM-Omni cannot be imported."""
    if importlib.util.find_spec("vllm_omni") is None:  # locates, imports nothing
        return None
    pipeline = deploy_pipeline(config)
    if pipeline is None:
        return None
    try:
        return omni_topology(pipeline)
    except ImportError:  # installed, but not importable next to this vLLM
        return None
    except KeyError:
        source = Path("<mapping>") if isinstance(config, Mapping) else Path(config)
        raise ConfigError(
            source, f"the installed vLLM-Omni has no pipeline {pipeline!r}", key="pipeline"
        ) from None


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
    platform: str = "cuda",
    topology: Mapping[StageId, Mapping[str, Any]] | None = None,
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
        platform: whose ``platforms:`` overrides of a deploy profile apply (see
            :func:`omni_stages`).
        topology: a deploy profile's stages as vLLM-Omni's pipeline registry gives them
            (see :func:`omni_stages`); None: from the installed vLLM-Omni, if any.

    Returns:
        The pipeline spec, for :func:`launch.open_pipeline` or :func:`launch.start_pipeline`.

    Raises:
        ConfigError: the config is malformed (see :func:`omni_stages`), or, with the
            default ``target``, a stage is not an LLM stage (a ``diffusion`` stage, or
            a deploy profile's stage whose type no topology gives): :func:`engine_stage`
            runs vLLM engines only.
    """
    stage_types = ("llm",) if target == ENGINE_STAGE_TARGET else None
    replicas = omni_stages(config, platform=platform, topology=topology, stage_types=stage_types)
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
        for stage in replicas
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
