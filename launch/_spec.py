"""What to launch: ``ProcessSpec`` and ``ShutdownPolicy``, validated at construction."""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol, TypeVar

#: How a child starts: ``"spawn"`` (a fresh interpreter, the default), ``"forkserver"``
#: (a fork of launch's own forkserver, see :func:`launch.prewarm`) or ``"fork"`` (a fork
#: of the parent: discouraged, a multi-threaded parent is unsafe to fork).
StartMethod = Literal["spawn", "forkserver", "fork"]
START_METHODS: tuple[str, ...] = ("spawn", "forkserver", "fork")
Output = Literal["inherit", "prefix"]
OUTPUTS: tuple[str, ...] = ("inherit", "prefix")

_TARGET_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def check_timeout(owner: str, key: str, value: float | None, *, allow_none: bool) -> None:
    """Raise ValueError, naming ``owner`` and ``key``, unless ``value`` is a finite
    number of seconds >= 0 (or None, where ``allow_none``)."""
    if value is None:
        if not allow_none:
            raise ValueError(f"{owner}: {key} must be a number of seconds, not None")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{owner}: {key} must be a number of seconds, got {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{owner}: {key} must be >= 0, got {value!r}")
    if math.isinf(value):
        hint = "use None for no limit" if allow_none else "a teardown is always bounded"
        raise ValueError(f"{owner}: {key} must be a finite number of seconds ({hint})")


ENV_NAME_RULE = "a non-empty printable string without '=' or whitespace"


def _encodes(text: str) -> bool:
    """True if ``os.environ`` can take ``text``: it encodes to the file-system encoding
    (a lone surrogate such as ``'\\ud800'`` does not, and fails the spawn)."""
    try:
        os.fsencode(text)
    except UnicodeError:
        return False
    return True


def env_name_ok(name: object) -> bool:
    """The one rule for an environment variable name launch sets (``ProcessSpec.env``,
    ``StageSpec.env``, ``device_env``, a pipeline file's ``env`` and ``device_env``).

    A non-empty printable string without ``=`` or whitespace that the OS can encode.
    Everything it accepts, ``os.environ`` and ``subprocess`` accept too; of what they
    take it refuses only names no shell can write (a space, a control character),
    which are mistakes. Names a shell cannot export but programs read (``MY-VAR``)
    are allowed.

    Args:
        name: the candidate name.

    Returns:
        Whether launch accepts it.
    """
    return (
        isinstance(name, str)
        and bool(name)
        and name.isprintable()
        and "=" not in name
        and not any(c.isspace() for c in name)
        and _encodes(name)
    )


def env_problem(env: object, key: str = "env") -> str | None:
    """What is wrong with ``env`` as a mapping of variable names to strings.

    The one check of an ``env`` mapping, used by :class:`ProcessSpec`,
    :class:`~launch.StageSpec` and the pipeline-file reader: names as
    :func:`env_name_ok` allows, values strings without NUL that the OS can encode.

    Args:
        env: the candidate mapping.
        key: how the mapping is named at the start of the phrase.

    Returns:
        A phrase that starts with ``key`` (e.g. ``"env['N'] must be a string, got int
        1"``), or None if nothing is wrong.
    """
    if not isinstance(env, Mapping):
        return f"{key} must be a mapping of str to str, got {type(env).__name__}"
    for name, value in env.items():
        if not env_name_ok(name):
            return f"{key} key {name!r} is not a valid variable name ({ENV_NAME_RULE})"
        if not isinstance(value, str):
            what = "a string"
        elif "\0" in value:
            what = "a string without NUL"
        elif not _encodes(value):
            what = f"a string the OS can encode ({sys.getfilesystemencoding()})"
        else:
            continue
        return f"{key}[{name!r}] must be {what}, got {type(value).__name__} {value!r}"
    return None


def target_problem(target: str) -> str | None:
    """Why a target string is not ``"module:qualname"``, or None."""
    if _TARGET_RE.match(target):
        return None
    return f"{target!r} is not of the form 'module:qualname' (e.g. 'mypkg.engine:run')"


@dataclass(frozen=True)
class ProcessSpec:
    """What one child runs.

    ``target`` is a ``"module:qualname"`` string (preferred: it is imported inside the
    child after ``env`` is applied) or a picklable callable. ``kwargs`` are pickled in
    the parent; ``env`` is applied inside the child before the target is imported;
    ``ready_timeout`` counts from the spawn to READY (``None``: no deadline; it must be
    finite otherwise). Env names must pass :func:`env_name_ok` (non-empty, printable,
    no ``=`` or whitespace), as ``StageSpec.env`` and ``device_env`` names do.
    ``output="inherit"`` (default) lets the child write to the parent's stdout and
    stderr; ``output="prefix"`` pipes them to the parent, which prints each line as
    ``[group/name] line`` and keeps the last lines for the child's :class:`ChildFailed`.

    The fields are read back as given, except that ``kwargs`` and ``env`` are kept as
    read-only copies (``MappingProxyType``).

    Args:
        target: What the child runs: a ``"module:qualname"`` string, imported in the
            child once ``env`` is applied, or a picklable callable. It is called with
            ``**kwargs`` and must call :func:`launch.ready` when its startup is done.
        name: The child's name, unique within its group (non-empty): the key of
            ``group["name"]`` and the name in messages and errors.
        kwargs: Keyword arguments for ``target`` (string keys), pickled in the parent
            and unpickled in the child.
        env: Environment variables set inside the child before ``target`` is imported
            (names as :func:`env_name_ok` allows, values strings without NUL).
        start_method: How the child starts (:data:`launch.StartMethod`): ``"spawn"``
            (default), ``"forkserver"`` or ``"fork"``.
        ready_timeout: Seconds from the spawn to READY before the child fails with
            :class:`ReadyTimeout`; ``None`` for no deadline, otherwise a finite number
            ``>= 0``.
        output: ``"inherit"`` (default): the child writes to the parent's stdout and
            stderr; ``"prefix"``: its lines are printed by the parent as
            ``[group/name] line`` and the last ones kept for its :class:`ChildFailed`.

    Raises:
        ValueError: A field is invalid: an empty name, a target that is neither a
            ``"module:qualname"`` string nor a callable, an unknown ``start_method`` or
            ``output``, ``kwargs`` that are not a mapping with string keys, a bad
            ``env`` name or value, or a ``ready_timeout`` that is negative, NaN,
            infinite or not a number.
    """

    target: str | Callable[..., Any]
    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    start_method: StartMethod = "spawn"
    ready_timeout: float | None = 600.0
    output: Output = "inherit"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"ProcessSpec name must be a non-empty string, got {self.name!r}")
        owner = f"ProcessSpec {self.name!r}"
        if isinstance(self.target, str):
            problem = target_problem(self.target)
            if problem is not None:
                raise ValueError(f"{owner}: target {problem}")
        elif not callable(self.target):
            raise ValueError(
                f"{owner}: target must be a 'module:qualname' string or a callable, "
                f"got {type(self.target).__name__}"
            )
        if self.start_method not in START_METHODS:
            raise ValueError(
                f"{owner}: unknown start method {self.start_method!r}; "
                f"expected one of {', '.join(START_METHODS)}"
            )
        if not isinstance(self.kwargs, Mapping) or not all(isinstance(k, str) for k in self.kwargs):
            raise ValueError(f"{owner}: kwargs must be a mapping with string keys")
        problem = env_problem(self.env)
        if problem is not None:
            raise ValueError(f"{owner}: {problem}")
        check_timeout(owner, "ready_timeout", self.ready_timeout, allow_none=True)
        if self.output not in OUTPUTS:
            raise ValueError(
                f"{owner}: unknown output {self.output!r}; expected one of {', '.join(OUTPUTS)}"
            )
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    @property
    def target_name(self) -> str:
        """The target as text, for messages.

        Returns:
            The ``"module:qualname"`` string itself, or for a callable its
            ``__module__`` and ``__qualname__`` joined the same way.
        """
        if isinstance(self.target, str):
            return self.target
        module = getattr(self.target, "__module__", "?")
        return f"{module}:{getattr(self.target, '__qualname__', repr(self.target))}"


@dataclass(frozen=True)
class ShutdownPolicy:
    """How children are stopped when a group is left or fails.

    A READY child first gets a cooperative stop (``launch.stop_requested()`` turns
    true) and ``stop_timeout`` seconds to exit; then SIGTERM and ``term_timeout``
    seconds; then SIGKILL to its whole process group and ``kill_timeout`` seconds,
    after which a process that still has not exited (state D) is reported, not waited
    on. A child that is not READY yet starts at SIGTERM. Every child is stopped
    concurrently, so a teardown takes at most the sum of the three timeouts; each must
    be a finite number of seconds >= 0 (``ValueError`` otherwise).

    Args:
        stop_timeout: Seconds a READY child has to exit after the cooperative stop
            (:func:`launch.stop_requested` turns true) before it gets SIGTERM.
        term_timeout: Seconds a child has to exit after SIGTERM before its whole
            process group gets SIGKILL.
        kill_timeout: Seconds to wait after SIGKILL; a process still there then is
            reported as :class:`Unreaped` and not waited on.

    Raises:
        ValueError: A timeout is negative, NaN, infinite, ``None`` or not a number.
    """

    stop_timeout: float = 2.0
    term_timeout: float = 2.0
    kill_timeout: float = 1.0

    def __post_init__(self) -> None:
        for key in ("stop_timeout", "term_timeout", "kill_timeout"):
            check_timeout("ShutdownPolicy", key, getattr(self, key), allow_none=False)

    @property
    def budget(self) -> float:
        """The most a teardown can take, in seconds.

        Returns:
            ``stop_timeout + term_timeout + kill_timeout``.
        """
        return self.stop_timeout + self.term_timeout + self.kill_timeout


class _Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=_Named)


def first_duplicate(names: Iterable[str]) -> str | None:
    """The first name that comes again in ``names``, or None if all are unique.

    The one uniqueness rule for child names in a group and stage names in a pipeline
    (a pipeline file's reader uses it too): names are compared exactly.

    Args:
        names: the names, in order.

    Returns:
        The first repeated name, or None.
    """
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def unique_members(
    items: Iterable[N], kind: type[N], owner: str, *, noun: str, none: str
) -> tuple[N, ...]:
    """Check a collection of named specs as a whole: a list (not one spec), non-empty,
    every item a ``kind``, names unique (:func:`first_duplicate`).

    Args:
        items: the specs.
        kind: the class each must be.
        owner: who holds them, as messages start (``"group 'tp'"``).
        noun: what a name names, in messages (``"child"``, ``"stage"``).
        none: what is missing when ``items`` is empty (``"ProcessSpec"``, ``"stages"``).

    Returns:
        The items, as a tuple.

    Raises:
        ValueError: one of those checks failed; the message names ``owner``.
    """
    if isinstance(items, kind):
        raise ValueError(f"{owner}: pass a list of {kind.__name__}, not a single one")
    result = tuple(items)
    if not result:
        raise ValueError(f"{owner} has no {none}")
    for item in result:
        if not isinstance(item, kind):
            raise ValueError(f"{owner}: expected {kind.__name__}, got {type(item).__name__}")
    duplicate = first_duplicate(item.name for item in result)
    if duplicate is not None:
        raise ValueError(f"{owner}: duplicate {noun} name {duplicate!r}")
    return result


def validate_group(specs: Iterable[ProcessSpec], group: str) -> tuple[ProcessSpec, ...]:
    """Check a group's specs as a whole: non-empty, all ``ProcessSpec``, unique names.

    Args:
        specs: the group's specs.
        group: the group's name, for messages.

    Returns:
        The specs, as a tuple.

    Raises:
        ValueError: the specs are one ``ProcessSpec``, none, not all ``ProcessSpec``, or
            two share a name.
    """
    return unique_members(specs, ProcessSpec, f"group {group!r}", noun="child", none="ProcessSpec")
