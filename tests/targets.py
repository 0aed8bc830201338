"""Child targets used by the tests. Imported inside launched children: stdlib + launch only."""

from __future__ import annotations

import os
import signal
import sys
import time

import launch


def serve(init: float = 0.0, payload: object = None) -> None:
    """A well-behaved child: init, READY, then serve until asked to stop."""
    launch.phase("init")
    time.sleep(init)
    launch.ready(payload if payload is not None else {"pid": os.getpid()})
    launch.wait_for_stop()


def report_env(key: str = "CUDA_VISIBLE_DEVICES") -> None:
    launch.ready({"value": os.environ.get(key), "pid": os.getpid()})
    launch.wait_for_stop()


def report_modules() -> None:
    heavy = sorted(m for m in ("trio", "anyio", "pytest", "psutil") if m in sys.modules)
    launch.ready(heavy)
    launch.wait_for_stop()


def crash(delay: float = 0.0) -> None:
    launch.phase("load_model")
    time.sleep(delay)
    raise RuntimeError("weights file is corrupt")


def exit_zero() -> None:
    launch.phase("configure")
    sys.exit(0)


def hang(phase: str = "nccl_init") -> None:
    launch.phase(phase)
    time.sleep(3600)


def die_after_ready(after: float = 0.2, code: int = 3) -> None:
    launch.ready()
    time.sleep(after)
    os._exit(code)


def raise_after_ready(after: float = 0.2) -> None:
    launch.ready()
    time.sleep(after)
    raise ValueError("lost connection to peer")


def ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    launch.ready()
    while True:  # ignores the cooperative stop too
        time.sleep(1)


def bad_payload() -> None:
    launch.ready(lambda: None)


def ready_twice() -> None:
    launch.ready()
    try:
        launch.ready()
    except RuntimeError:
        launch.wait_for_stop()  # refused, as it should be: keep serving
        return
    raise SystemExit("a second launch.ready() was accepted")


def stop_then_exit(marker: str) -> None:
    launch.ready()
    launch.wait_for_stop()
    with open(marker, "w") as f:
        f.write("stopped cooperatively")


def callable_target(value: int) -> None:
    launch.ready(value * 2)
    launch.wait_for_stop()


def report_envs(keys: list[str]) -> None:
    launch.ready({key: os.environ.get(key) for key in keys})
    launch.wait_for_stop()


def meet(mine: str, theirs: str, timeout: float = 10.0) -> None:
    """Write ``mine``, then wait for ``theirs`` before READY: two such children only
    both become READY if neither's handshake blocks the other's spawn."""
    launch.phase("meet")
    with open(mine, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + timeout
    while not os.path.exists(theirs):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{theirs} never appeared: the other child was not spawned")
        time.sleep(0.01)
    launch.ready()
    launch.wait_for_stop()


def chatty(lines: int = 10) -> None:
    """Many lines on stdout and stderr, then a last line without a newline."""
    for i in range(lines):
        print(f"out {i} " + "x" * 40)
    for i in range(3):
        print(f"err {i}", file=sys.stderr)
    launch.ready()
    launch.wait_for_stop()
    sys.stdout.write("partial last line")
    sys.stdout.flush()


def print_then_crash() -> None:
    launch.phase("load_model")
    print("loading shard 3 of 8", flush=True)
    print("warning: shard 3 checksum mismatch", file=sys.stderr, flush=True)
    raise RuntimeError("weights file is corrupt")


def report_loaded(names: list[str]) -> None:
    """READY with which of ``names`` this child has imported (inherited from a forkserver)."""
    launch.ready({name: name in sys.modules for name in names})
    launch.wait_for_stop()


def crash_then_linger(linger: float = 10.0) -> None:
    """Raises before READY, then takes ``linger`` seconds over its interpreter shutdown
    (as torch or vLLM can, in their atexit handlers)."""
    import atexit

    atexit.register(time.sleep, linger)
    launch.phase("load_model")
    raise RuntimeError("weights file is corrupt")


def omni_stage(stage: dict[str, object], model: str) -> None:
    """A vLLM-Omni stage stand-in: fails if its engine_args say so, else reports what
    it was given (after a short init) and serves."""
    args = stage["engine_args"]
    assert isinstance(args, dict)
    launch.phase(f"engine {stage['name']}")
    time.sleep(float(args.get("init_s", 0.3)))
    if args.get("fail"):
        raise RuntimeError(f"stage {stage['name']}: {args['fail']}")
    launch.ready(
        {
            "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "sources": list(stage["input_sources"]),  # type: ignore[call-overload]
            "model": model,
        }
    )
    launch.wait_for_stop()


def nested_group(method: str) -> None:
    """Starts a launch group of its own: the vLLM engine core does this with its
    workers. A ``fork`` child must not inherit the parent's launch lock held."""
    spec = launch.ProcessSpec("targets:serve", name="grandchild", start_method=method)  # type: ignore[arg-type]
    with launch.start_group([spec], name="inner") as inner:
        launch.ready({"grandchild": inner.children[0].pid})
        launch.wait_for_stop()
