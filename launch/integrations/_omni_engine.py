"""vLLM-Omni's orchestrator (``AsyncOmniEngine``) with its LLM stages started by launch.

    engine = LaunchAsyncOmniEngine(model, stage_configs_path="stages.yaml")
    engine.add_request("r1", {"prompt_token_ids": [...]}, sampling_params_list=[...])
    ...
    engine.shutdown()  # Omni's clients first, then launch stops the stages

The seam is the class: :class:`LaunchAsyncOmniEngine` overrides one step of Omni's
startup, ``_initialize_stage_replicas`` (every replica of every stage, started, and a
client for each), and leaves the rest to Omni: reading the stage configs, the replica
layout and the plans (``_build_logical_stage_init_plans``), the stage pools, the
input processor, the orchestrator and its request API. Nothing of Omni is patched in the
parent; the stage process carries the one patch of :func:`._omni_stage.stage_core`.

Every local LLM replica of the plans is one :class:`OmniStageLaunch` and all of them are
one launch group (:func:`open_omni_stages`): spawned concurrently, device locks, Omni's
handshake under ``stage_init_timeout``, the first failure tearing all down. The group is
async and Omni's startup is sync (on its orchestrator thread), so the group is held in
an anyio blocking portal for as long as the engine lives: :meth:`shutdown` closes it
after Omni's own shutdown, and so does Omni's finalizer (garbage collection, interpreter
exit) and every failure of the constructor.

Written against vLLM-Omni 0.22 (``vllm_omni.engine.async_omni_engine``); imported only
when ``launch.integrations.omni.LaunchAsyncOmniEngine`` is asked for.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import anyio.from_thread

from ._omni_stage import OmniStageLaunch, OmniStages, open_omni_stages

logger = logging.getLogger(__name__)

_engine: Any = importlib.import_module("vllm_omni.engine.async_omni_engine")
_stage_utils: Any = importlib.import_module("vllm_omni.entrypoints.stage_utils")


class StageRefused(ValueError):
    """A stage this engine does not start: the message names the stage and says why."""


class LaunchAsyncOmniEngine(_engine.AsyncOmniEngine):  # type: ignore[misc]
    """vLLM-Omni's ``AsyncOmniEngine`` whose LLM stage replicas are launch children.

    Takes Omni's arguments (``model``, ``stage_configs_path`` or ``deploy_config``,
    ``stage_init_timeout``, ``init_timeout``, ``log_stats``...) and gives Omni's API
    (``add_request``, ``try_get_output``, ``abort``, ``collective_rpc``,
    ``shutdown``). What changes is how the stages start: see docs/omni.md.

    Args:
        model: The model path or id (Omni's).
        *args: Omni's positional arguments.
        **kwargs: Omni's keyword arguments.

    Raises:
        StageRefused: The config has a diffusion stage, or single-stage mode
            (``single_stage_mode``, ``stage_id``: Omni's master server and remote
            replicas) is asked for; nothing was started.
        RuntimeError: Omni's ``"Orchestrator initialization failed: ..."``; when a
            stage failed to start, its ``__cause__`` is launch's
            :class:`launch.LaunchFailed` (``.first``: that stage, with its own
            traceback in ``remote_traceback``), and every stage is stopped.
        TimeoutError: Omni's orchestrator was not ready within ``init_timeout``;
            every stage is stopped.
    """

    _weak_finalizer: Any  # Omni's attribute (a weakref.finalize)

    def __init__(self, model: str, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("single_stage_mode") or isinstance(kwargs.get("stage_id"), int):
            raise StageRefused(
                f"stage {kwargs.get('stage_id')}: single-stage mode (Omni's master server, "
                "remote replicas registering with it) is not started by launch; use "
                "AsyncOmniEngine for it"
            )
        self._launch_stages = HeldStages()
        try:
            super().__init__(model, *args, **kwargs)
        except BaseException:
            self._launch_stages.close()  # an interrupt in the wait, too
            raise
        # Omni's finalizer stops the orchestrator; this one then stops the stages
        omni_finalizer: Any = self._weak_finalizer
        _, omni_cleanup, omni_args, _ = omni_finalizer.detach()
        self._weak_finalizer = weakref.finalize(
            self, _finalize, omni_cleanup, omni_args, self._launch_stages
        )

    def _resolve_stage_configs(self, model: str, kwargs: dict[str, Any]) -> tuple[str, list[Any]]:
        config_path, stage_configs = super()._resolve_stage_configs(model, kwargs)
        for index, stage_cfg in enumerate(stage_configs):
            if getattr(stage_cfg, "stage_type", "llm") == "diffusion":
                stage_id = getattr(stage_cfg, "stage_id", index)
                raise StageRefused(f"stage {stage_id} of {config_path}: {_DIFFUSION}")
        return config_path, stage_configs

    def _initialize_stage_replicas(
        self, stage_plans: Sequence[Any], stage_init_timeout: int
    ) -> dict[int, list[Any]]:
        platform = importlib.import_module("vllm_omni.platforms").current_omni_platform
        device_env = platform.device_control_env_var
        launches, plans = stage_launches(stage_plans, device_env=device_env)
        stages = self._launch_stages.open(
            launches,
            log_stats=self._log_stats,
            ready_timeout=stage_init_timeout,
            device_lock_timeout=stage_init_timeout,
            device_env=device_env,
            name="omni-engine",
        )
        clients: dict[int, list[Any]] = {
            plan.stage_idx: [None] * len(plan.replicas) for plan in stage_plans
        }
        try:
            for launched, (stage_idx, plan) in zip(stages, plans, strict=True):
                clients[stage_idx][plan.replica_id] = launched.make_client(
                    plan.metadata, log_stats=self._log_stats
                )
        except Exception as exc:
            exc._initialized_clients_by_stage = clients  # type: ignore[attr-defined]
            raise
        return clients

    @property
    def launch_stages(self) -> OmniStages | None:
        """The stage processes launch started (their pids, the launch pipeline), or
        None before they are READY.

        Returns:
            The :class:`OmniStages`, or None.
        """
        return self._launch_stages.stages

    def shutdown(self) -> None:
        """Omni's shutdown (the orchestrator and its stage clients), then launch stops
        every stage process. Safe to call twice; never raises for a stage that failed
        while the engine ran (that is logged)."""
        try:
            super().shutdown()
        finally:
            self._launch_stages.close()


_DIFFUSION = (
    "a diffusion stage runs Omni's own process tree (StageDiffusionProc and its "
    "workers), which launch does not start; use AsyncOmniEngine for this config"
)


def stage_launches(
    stage_plans: Sequence[Any],
    *,
    device_env: str,
    environ: Mapping[str, str] | None = None,
) -> tuple[list[OmniStageLaunch], list[tuple[int, Any]]]:
    """One :class:`OmniStageLaunch` per replica of Omni's startup plans, with what
    ``_initialize_llm_replica`` would have set around its spawn: the stage's
    ``runtime.env`` and its devices (logical indexes mapped onto the parent's device
    variable as Omni's ``set_stage_devices`` maps them), both for the child only.

    Args:
        stage_plans: Omni's ``LogicalStageInitPlan`` list.
        device_env: Omni's platform's ``device_control_env_var``.
        environ: The parent's environment (read only); ``os.environ`` if None.

    Returns:
        The launches, and for each its ``(stage_idx, ReplicaInitPlan)``, in order.

    Raises:
        StageRefused: A replica this engine does not start (diffusion, remote, no
            engine config, data parallel inside the stage).
    """
    environ = os.environ if environ is None else environ
    launches: list[OmniStageLaunch] = []
    plans: list[tuple[int, Any]] = []
    for stage in stage_plans:
        for plan in stage.replicas:
            stage_id = plan.metadata.stage_id
            where = f"stage {stage_id} replica {plan.replica_id}"
            if plan.metadata.stage_type == "diffusion":
                raise StageRefused(f"{where}: {_DIFFUSION}")
            if plan.launch_mode != "local":
                raise StageRefused(
                    f"{where}: launch mode {plan.launch_mode!r} (a remote replica of "
                    "Omni's master server) is not started by launch"
                )
            config = plan.stage_vllm_config
            if config is None:
                raise StageRefused(f"{where}: Omni's plan has no engine config")
            data_parallel = config.parallel_config.data_parallel_size
            if data_parallel > 1:
                raise StageRefused(
                    f"{where}: data_parallel_size={data_parallel} inside a stage needs "
                    "vLLM's DP coordinator and one engine per rank, which launch does not "
                    "start here; use the stage's runtime.num_replicas instead"
                )
            env = runtime_env(plan.metadata.runtime_cfg)
            devices: tuple[str, ...] = ()
            if _runtime_devices(plan.metadata.runtime_cfg) not in (None, "cpu"):
                # Omni applies runtime.env first, then maps the devices onto the device
                # variable as it then is, and sets the variable to them: so here
                visible = env.pop(device_env, None)
                devices = replica_devices(
                    stage_id,
                    plan.metadata.runtime_cfg,
                    visible if visible is not None else environ.get(device_env),
                )
            name = f"stage-{stage_id}"
            if plan.num_replicas > 1:
                name += f"-r{plan.replica_id}"
            launches.append(
                OmniStageLaunch(
                    name,
                    config,
                    executor_class=plan.executor_class,
                    devices=devices,
                    stage_id=stage_id,
                    replica=plan.replica_id,
                    env=env,
                )
            )
            plans.append((stage.stage_idx, plan))
    return launches, plans


def _runtime_devices(runtime_cfg: Any) -> Any:
    """What ``setup_stage_devices`` reads: ``runtime.devices``."""
    return runtime_cfg.get("devices") if hasattr(runtime_cfg, "get") else None


def runtime_env(runtime_cfg: Any) -> dict[str, str]:
    """A stage's ``runtime.env``, read as Omni's ``stage_runtime_env`` reads it.

    Args:
        runtime_cfg: The replica's ``runtime`` (a mapping or OmegaConf node), or None.

    Returns:
        The variables, names and values as strings; ``{}`` if none.
    """
    if runtime_cfg is None:
        return {}
    cfg = runtime_cfg if isinstance(runtime_cfg, dict) else _stage_utils._to_dict(runtime_cfg)
    raw = cfg.get("env")
    if raw is None:
        return {}
    env = raw if isinstance(raw, dict) else _stage_utils._to_dict(raw)
    return {str(key): str(value) for key, value in env.items()}


def replica_devices(stage_id: int, runtime_cfg: Any, visible: str | None) -> tuple[str, ...]:
    """The physical devices Omni's ``set_stage_devices`` would make visible to this
    replica: its logical ``runtime.devices`` mapped onto ``visible`` (the parent's
    device variable), or as given where the variable is not set.

    Args:
        stage_id: The stage's id (for Omni's messages).
        runtime_cfg: The replica's ``runtime``.
        visible: The parent's device variable, or None.

    Returns:
        The device ids, or ``()`` for none (``devices`` unset or ``"cpu"``).

    Raises:
        ValueError: Omni's: the devices do not map onto the visible ones.
    """
    devices = _runtime_devices(runtime_cfg)
    if devices in (None, "cpu"):
        return ()
    device_list = _stage_utils._parse_device_list(devices)
    if visible is not None:
        device_list = _stage_utils._map_device_list(
            stage_id, device_list, _stage_utils._parse_device_list(visible)
        )
    return tuple(device_list)


class HeldStages:
    """:func:`open_omni_stages` entered from sync code and held open in an anyio
    blocking portal (its own event loop thread) until :meth:`close`. Thread-safe: the
    orchestrator thread opens, any thread may close, and a close during the opening
    cancels it (the stages started so far are stopped before either call returns)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stack = ExitStack()
        self._portal: Any = None
        self._entered = False
        self._closed = False
        self._cancelled = False
        self.stages: OmniStages | None = None

    def open(self, launches: Sequence[OmniStageLaunch], **options: Any) -> OmniStages:
        """Start the stages; return once every one is READY.

        Args:
            launches: The replicas.
            **options: :func:`open_omni_stages`'s options.

        Returns:
            The running stages.

        Raises:
            RuntimeError: Closed before or while the stages started.
            LaunchFailed: A stage failed to start (every other one is stopped).
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine was shut down before its stages started")
            portal = self._stack.enter_context(
                anyio.from_thread.start_blocking_portal(name="launch-omni-stages")
            )
            self._portal = portal
            held = portal.wrap_async_context_manager(open_omni_stages(launches, **options))
        try:
            stages: OmniStages = held.__enter__()
        except BaseException as exc:
            with self._lock:
                cancelled = self._cancelled  # a close() during the opening
            self.close()
            if cancelled:
                raise RuntimeError("the engine was shut down while its stages started") from exc
            raise
        with self._lock:
            if self._closed:  # closed (cancelled) just after the stages were READY
                raise RuntimeError("the engine was shut down while its stages started")
            self._stack.push(held.__exit__)
            self._entered = True
            self.stages = stages
        return stages

    def close(self) -> None:
        """Stop every stage and the portal's thread; idempotent. A stage that failed
        while held (its :class:`launch.LaunchFailed`) is logged, not raised."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._portal is not None and not self._entered:
                self._cancelled = True
                try:  # the opening is under way: cancel it (the teardown runs)
                    self._portal.call(self._portal.stop, True)
                except RuntimeError:
                    pass  # the portal has stopped already
            try:
                self._stack.close()
            except Exception:
                logger.exception("launch: a stage of the Omni engine failed while it ran")


def _finalize(
    omni_cleanup: Callable[..., None], omni_args: tuple[Any, ...], stages: HeldStages
) -> None:
    """The engine's finalizer (garbage collection, interpreter exit): Omni's, then the
    stages."""
    try:
        omni_cleanup(*omni_args)
    finally:
        stages.close()
