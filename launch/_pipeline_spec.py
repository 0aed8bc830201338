"""What a pipeline launches: ``StageSpec`` and ``PipelineSpec``, validated at construction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from ._placement import Placement, check_placement
from ._spec import (
    ENV_NAME_RULE,
    ProcessSpec,
    ShutdownPolicy,
    check_timeout,
    env_name_ok,
    env_problem,
    unique_members,
)

if TYPE_CHECKING:  # not at run time: ``import launch`` stays free of anyio (a child's)
    from ._start.spawn import Starter

DEVICE_ENV_VARS: tuple[str, ...] = (
    "CUDA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "ASCEND_RT_VISIBLE_DEVICES",
    "ZE_AFFINITY_MASK",
    "TPU_VISIBLE_CHIPS",
)


def stage_devices(devices: object) -> tuple[str, ...]:
    """``devices`` as a tuple of device ids; raises ValueError saying what is wrong
    (the caller adds whose devices they are)."""
    if isinstance(devices, int | str) or not isinstance(devices, Iterable):
        raise ValueError(f"devices must be a list, e.g. devices=({devices!r},)")
    out = []
    for device in devices:
        if isinstance(device, bool) or not isinstance(device, int | str):
            raise ValueError(f"device {device!r} must be an int index or a string id")
        if isinstance(device, int):
            if device < 0:
                raise ValueError(f"device index must be >= 0, got {device}")
            device = str(device)
        elif not device or "," in device or device != device.strip():
            raise ValueError(f"device id {device!r} must be non-empty, without commas")
        out.append(device)
    if len(set(out)) != len(out):
        raise ValueError(f"devices {out} lists a device twice")
    return tuple(out)


def device_env_names(device_env: object) -> tuple[str, ...]:
    """``device_env`` (one name or a list of them) as a tuple of variable names, each
    as :func:`~launch._spec.env_name_ok` allows; raises ValueError saying what is wrong
    (the caller adds whose ``device_env`` it is)."""
    if isinstance(device_env, str):
        names: tuple[object, ...] = (device_env,)
    elif isinstance(device_env, Iterable):
        names = tuple(device_env)
    else:
        names = ()
    if not names:
        raise ValueError(f"must name environment variables, got {device_env!r}")
    for name in names:
        if not env_name_ok(name):
            raise ValueError(
                f"must name environment variables; {name!r} is not a valid variable name "
                f"({ENV_NAME_RULE})"
            )
    return tuple(str(name) for name in names)


@dataclass(frozen=True)
class StageSpec:
    """One stage of a pipeline: a group of children with devices and ordering.

    ``specs`` are the stage's children. ``devices`` are made visible inside each child
    through the pipeline's ``device_env`` and locked (across processes) from before the
    first spawn until every child of the stage is READY. The stage spawns once every
    stage named in ``after`` is READY. ``env`` is a parent-side overlay: set on
    ``os.environ`` only while this stage's children are spawned (under the launch
    lock) and restored right after; it reaches the child with every start method.
    ``shutdown`` overrides the pipeline's policy for this stage. ``placement`` runs the
    stage's children elsewhere (a Ray cluster), as ``open_group(..., placement=...)``
    does.

    Args:
        name: The stage's name, unique within the pipeline (non-empty): the key of
            ``pipeline["name"]``, the name of the stage's :class:`Group` and of its
            device locks.
        specs: The stage's children (a non-empty list of :class:`ProcessSpec` with
            unique names), kept as a tuple.
        devices: Device ids (``int`` indexes ``>= 0`` or non-empty strings without
            commas, each listed once), kept as a tuple of strings. They are locked
            before the stage spawns and set, comma-joined, in each child's
            ``device_env`` variables (a child's own ``env`` wins).
        after: Names of the stages that must be READY before this one spawns (a
            single string is taken as one name), kept as a tuple.
        env: Variables set on the parent's ``os.environ`` only while this stage's
            children are spawned, then restored; kept as a read-only copy.
        shutdown: This stage's :class:`ShutdownPolicy`; ``None`` takes the
            pipeline's.
        placement: Where the stage's children run
            (:class:`~launch.integrations.ray.RayPlacement`: child ``i`` in bundle
            ``i``); ``None`` for this machine. The placement is reserved when the
            stage's turn comes and released once its children are reaped. Not with
            ``devices``: device locks are this machine's, and a placement's bundles
            give each child its devices on its node.

    Raises:
        ValueError: The stage is invalid: an empty name, ``specs`` empty, not
            :class:`ProcessSpec` or with duplicate names, a bad device id or a device
            listed twice, ``after`` naming the stage itself or not naming stages, a
            bad ``env``, a ``shutdown`` that is not a :class:`ShutdownPolicy`, or both
            ``placement`` and ``devices``.
        TypeError: ``placement`` is not a placement (it has no ``open`` method).
    """

    name: str
    specs: Sequence[ProcessSpec]
    devices: Sequence[int | str] = ()  # normalized to a tuple of str
    after: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    shutdown: ShutdownPolicy | None = None
    placement: Placement | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"StageSpec name must be a non-empty string, got {self.name!r}")
        owner = f"stage {self.name!r}"
        specs = unique_members(self.specs, ProcessSpec, owner, noun="child", none="ProcessSpec")
        object.__setattr__(self, "specs", specs)
        try:
            devices = stage_devices(self.devices)
        except ValueError as exc:
            raise ValueError(f"{owner}: {exc}") from None
        object.__setattr__(self, "devices", devices)
        after = (self.after,) if isinstance(self.after, str) else tuple(self.after)
        for dep in after:
            if not isinstance(dep, str) or not dep:
                raise ValueError(f"{owner}: after must name stages, got {dep!r}")
        if self.name in after:
            raise ValueError(f"{owner}: a stage cannot start after itself")
        object.__setattr__(self, "after", after)
        problem = env_problem(self.env)
        if problem is not None:
            raise ValueError(f"{owner}: {problem}")
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        if self.shutdown is not None and not isinstance(self.shutdown, ShutdownPolicy):
            raise ValueError(f"{owner}: shutdown must be a ShutdownPolicy")
        self._check_placement(owner)

    def _check_placement(self, owner: str) -> None:
        if check_placement(self.placement, owner) is None:
            return
        if self.devices:
            raise ValueError(
                f"{owner}: devices {list(self.devices)} cannot be used with a placement: "
                "device locks are this machine's, and the children run on other nodes; "
                "ask for devices in the placement's bundles instead (e.g. {'GPU': 1}), "
                "which give each child its devices on its node"
            )

    def open_placement(self) -> AbstractAsyncContextManager[Starter] | None:
        """The stage's placement, opened for its children (not entered yet); None
        without a placement.

        Returns:
            The placement's async context manager (see
            :class:`~launch._placement.Placement`), or None.

        Raises:
            ValueError: The stage has more children than the placement holds.
        """
        if self.placement is None:
            return None
        return self.placement.open(self.specs, self.name)


@dataclass(frozen=True)
class PipelineSpec:
    """A set of stages started as one tree (vLLM-Omni's stage pipeline).

    Stages start concurrently except where ``after`` orders them. ``device_env`` is the
    variable (or variables) that carries a stage's devices into its children: e.g.
    ``"CUDA_VISIBLE_DEVICES"``, ``("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")``.
    ``lock_dir`` holds the device lock files (default: a private per-user directory);
    one given here must be owned by this user or root and, if group/other-writable,
    sticky, or the stage fails with :class:`launch.DeviceLockError`;
    ``device_lock_timeout`` bounds the wait for a device another stage or process holds
    (``None``: wait as long as it takes). ``shutdown`` applies to stages without their own.

    ``preload``: modules launch's forkserver imports once, started at the root of the
    tree so it overlaps everything else (children with ``start_method="forkserver"`` are
    forks of it; see :func:`launch.prewarm`). ``prefetch``: model directories read into
    the page cache while the stages spawn (:func:`launch.prefetch_weights`).

    ``spec["stage"]`` is that :class:`StageSpec` (``KeyError`` for an unknown name).

    Args:
        stages: The stages (a non-empty list of :class:`StageSpec` with unique names,
            whose ``after`` name stages of this pipeline without a cycle), kept as a
            tuple.
        name: The pipeline's name, used in messages and errors.
        device_env: The environment variable, or list of them, that carries a stage's
            devices into its children; kept as a tuple of names.
        lock_dir: The directory of the device lock files; ``None`` for a private
            per-user directory. Kept as a :class:`~pathlib.Path`.
        device_lock_timeout: Seconds a stage waits for a device lock before it fails
            with :class:`DeviceLockTimeout`; ``None`` to wait as long as it takes,
            otherwise a finite number ``>= 0``.
        shutdown: The :class:`ShutdownPolicy` of stages without their own; ``None``
            for the default policy.
        preload: Module names launch's forkserver imports once, started at the root
            of the tree; kept as a tuple.
        prefetch: Model directories (or files) read into the page cache while the
            stages spawn; kept as a tuple.

    Raises:
        ValueError: The pipeline is invalid: no stages, a single :class:`StageSpec`
            or something else instead of a list of them, duplicate stage names, an
            ``after`` naming an unknown stage, stages waiting for each other in a
            cycle, a ``device_env`` that names no valid variable, a bad
            ``device_lock_timeout``, a ``shutdown`` that is not a
            :class:`ShutdownPolicy`, or ``preload`` / ``prefetch`` given as a single
            string or with empty entries.
    """

    stages: Sequence[StageSpec]
    name: str = "pipeline"
    device_env: str | Sequence[str] = "CUDA_VISIBLE_DEVICES"
    lock_dir: str | Path | None = None
    device_lock_timeout: float | None = 600.0
    shutdown: ShutdownPolicy | None = None
    preload: Sequence[str] = ()
    prefetch: Sequence[str | Path] = ()

    def __post_init__(self) -> None:
        owner = f"pipeline {self.name!r}"
        for key in ("preload", "prefetch"):
            value = getattr(self, key)
            if isinstance(value, str | Path):
                raise ValueError(f"{owner}: {key} takes a list, not a single {value!r}")
            items = tuple(value)
            if not all(isinstance(i, str | Path) and str(i) for i in items):
                raise ValueError(f"{owner}: {key} entries must be non-empty strings")
            object.__setattr__(self, key, items)
        stages = unique_members(self.stages, StageSpec, owner, noun="stage", none="stages")
        names = {stage.name for stage in stages}
        for stage in stages:
            for dep in stage.after:
                if dep not in names:
                    raise ValueError(
                        f"{owner}: stage {stage.name!r} starts after unknown stage {dep!r}; "
                        f"stages: {', '.join(s.name for s in stages)}"
                    )
        _check_cycles(owner, stages)
        object.__setattr__(self, "stages", stages)
        try:
            env_vars = device_env_names(self.device_env)
        except ValueError as exc:
            raise ValueError(f"{owner}: device_env {exc}") from None
        object.__setattr__(self, "device_env", env_vars)
        if self.lock_dir is not None:
            object.__setattr__(self, "lock_dir", Path(self.lock_dir))
        check_timeout(owner, "device_lock_timeout", self.device_lock_timeout, allow_none=True)
        if self.shutdown is not None and not isinstance(self.shutdown, ShutdownPolicy):
            raise ValueError(f"{owner}: shutdown must be a ShutdownPolicy")

    @property
    def uses_forkserver(self) -> bool:
        """True if any child starts from launch's forkserver, or modules are preloaded.

        Returns:
            Whether opening the pipeline starts launch's forkserver first.
        """
        return bool(self.preload) or any(
            spec.start_method == "forkserver"
            for stage in self.stages
            if stage.placement is None  # a placed child starts fresh on its node
            for spec in stage.specs
        )

    def __getitem__(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"pipeline {self.name!r} has no stage {name!r}")

    @property
    def device_env_vars(self) -> tuple[str, ...]:
        """``device_env`` as a tuple.

        Returns:
            The names of the variables that carry a stage's devices.
        """
        return tuple(self.device_env)

    def child_specs(self, stage: StageSpec) -> tuple[ProcessSpec, ...]:
        """The stage's specs with its devices added to their env (a child's own env wins).

        Args:
            stage: One of this pipeline's stages.

        Returns:
            The stage's :class:`ProcessSpec` objects, each with every ``device_env``
            variable set to the stage's comma-joined devices (unchanged if the stage
            has no devices).
        """
        if not stage.devices:
            return tuple(stage.specs)
        from dataclasses import replace

        visible = ",".join(str(d) for d in stage.devices)
        devices_env = dict.fromkeys(self.device_env_vars, visible)
        return tuple(replace(spec, env={**devices_env, **spec.env}) for spec in stage.specs)

    def order(self) -> tuple[StageSpec, ...]:
        """Stages in a start order that respects ``after`` (ties keep the given order).

        Returns:
            Every stage once, each after the stages it names in ``after``.
        """
        done: set[str] = set()
        out: list[StageSpec] = []
        while len(out) < len(self.stages):
            for stage in self.stages:
                if stage.name not in done and all(dep in done for dep in stage.after):
                    out.append(stage)
                    done.add(stage.name)
                    break
        return tuple(out)


def _check_cycles(owner: str, stages: Iterable[StageSpec]) -> None:
    after = {stage.name: stage.after for stage in stages}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in after[name]:
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                raise ValueError(f"{owner}: stages wait for each other: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in after:
        if name not in state:
            visit(name, [name])
