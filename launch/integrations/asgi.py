"""Running a pipeline inside an ASGI server (Starlette, FastAPI; under uvicorn, or
hypercorn with its trio worker): started in the server's lifespan, in its own task
group, stopped at shutdown, watched while the server serves.

::

    from starlette.applications import Starlette
    from launch.integrations.asgi import pipeline_lifespan

    app = Starlette(routes=[...], lifespan=pipeline_lifespan(spec, exit_on_failure=True))
    # in a handler: service = request.state.launch; service.health(), service.pipeline

The server does not answer before every stage is READY; a startup failure fails the
server's startup (uvicorn and hypercorn then exit non-zero). A child dying later turns
``service.health()`` to 503 with the failure; with ``exit_on_failure`` the server is
asked to shut down (SIGTERM to itself, where the server handles it gracefully, as
uvicorn does) and the process exits with ``exit_code``; a process with no SIGTERM
handler (a hypercorn worker, whose master handles signals) exits with it at once, its
children being reaped already, and hypercorn's master then shuts down (hypercorn 0.18
loses the worker's code and exits 0). The servers themselves would exit 0: they swallow
errors raised from a lifespan's shutdown.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskStatus

from .. import LaunchFailed, Pipeline, PipelineSpec, open_pipeline
from ..hooks import serve_until_stopped, stop_forkserver

logger = logging.getLogger("launch")


class PipelineService:
    """A pipeline as a server runs it: ``state`` is ``"starting"``, ``"ready"``,
    ``"failed"`` (a child died after READY; ``failure`` says which) or ``"stopped"``."""

    def __init__(self, spec: PipelineSpec, exit_code: int = 3) -> None:
        self.spec = spec
        self.exit_code = exit_code
        self.pipeline: Pipeline | None = None
        self.state = "starting"
        self.failure: LaunchFailed | None = None
        self._stop = anyio.Event()

    def health(self) -> tuple[int, dict[str, Any]]:
        """``(status code, body)`` for a health endpoint: 200 while every child runs,
        503 otherwise; the body names the pipeline, each child's state and the failure."""
        children = []
        if self.pipeline is not None:
            for group in self.pipeline:
                for child in group:
                    children.append(
                        {
                            "stage": group.name,
                            "name": child.name,
                            "pid": child.pid,
                            "state": str(child.state),
                            "exitcode": child.exitcode,
                        }
                    )
        body: dict[str, Any] = {
            "status": self.state,
            "pipeline": self.spec.name,
            "children": children,
        }
        if self.failure is not None:
            body["error"] = self.failure.first.summary()
        return (200 if self.state == "ready" else 503), body

    def _ready(self, pipeline: Pipeline) -> None:
        self.pipeline, self.state = pipeline, "ready"

    async def _run(self, exit_on_failure: bool, *, task_status: TaskStatus[Pipeline]) -> None:
        # a startup failure raises here, and the server's startup fails with it
        exc = await serve_until_stopped(
            open_pipeline(self.spec), self._stop, on_ready=self._ready, task_status=task_status
        )
        if exc is None:
            self.state = "stopped"
            return
        self.failure, self.state = exc, "failed"
        # on stderr too: servers configure their own loggers, not launch's
        print(
            f"launch: pipeline {self.spec.name!r} failed while serving: {exc.first}",
            file=sys.stderr,
            flush=True,
        )
        logger.error("pipeline %r failed while serving: %s", self.spec.name, exc.first)
        if exit_on_failure:
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                # no graceful SIGTERM here (a hypercorn worker process): every child
                # is reaped already, so end now; its master then shuts down too
                _exit_now(self.exit_code)
            os.kill(os.getpid(), signal.SIGTERM)  # the server's own graceful shutdown


def _exit_now(code: int) -> None:
    """End the process with ``code`` after a graceful server shutdown: the servers exit
    0 after SIGTERM and swallow errors raised from a lifespan's shutdown."""
    stop_forkserver()
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def pipeline_lifespan(
    spec: PipelineSpec | Callable[[], PipelineSpec],
    *,
    exit_on_failure: bool = False,
    exit_code: int = 3,
    state_key: str = "launch",
) -> Callable[[Any], AbstractAsyncContextManager[dict[str, Any]]]:
    """A lifespan (Starlette/FastAPI ``lifespan=``) that runs ``spec`` for the server's
    life; a callable is called at startup (load the file then, not at import).

    The server takes no request before every stage is READY; a startup failure fails
    the server's startup. A child dying later sets the service's ``state`` to
    ``"failed"`` and tears its siblings down.

    Args:
        spec: the pipeline, or a callable returning it, called at startup.
        exit_on_failure: shut the server down when a child dies after READY, and exit
            the process with ``exit_code``.
        exit_code: the exit code for ``exit_on_failure``.
        state_key: the name of the :class:`PipelineService` in the lifespan state.

    Returns:
        The lifespan. It yields ``{state_key: PipelineService}``, so handlers find the
        service at ``request.state.<state_key>``.
    """

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        service = PipelineService(spec() if callable(spec) else spec, exit_code)
        async with anyio.create_task_group() as tg:
            await tg.start(service._run, exit_on_failure, name=f"pipeline {service.spec.name}")
            try:
                yield {state_key: service}
            finally:
                service._stop.set()
        if service.failure is not None and exit_on_failure:
            _exit_now(service.exit_code)

    return lifespan
