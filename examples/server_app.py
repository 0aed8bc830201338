"""A Starlette app that runs the omni pipeline (omni_pipeline.toml) for its whole life.

    cd examples
    hypercorn -k trio --bind 127.0.0.1:8000 server_app:app     # trio
    uvicorn --port 8000 server_app:app                          # asyncio

``GET /`` shows what each child said at READY; ``GET /health`` is 200 while every child
runs, 503 (naming the failure) once one has died. ``LAUNCH_EXIT_ON_FAILURE=1`` makes the
server shut down, exit code 3, when a child dies. Needs ``pip install 'launch-tree[server]'``.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import launch
from launch.integrations.asgi import PipelineService, pipeline_lifespan

HERE = Path(__file__).resolve().parent


def spec() -> launch.PipelineSpec:
    return launch.load_pipeline(HERE / "omni_pipeline.toml")


async def index(request: Request) -> JSONResponse:
    service: PipelineService = request.state.launch
    assert service.pipeline is not None
    stages = {
        group.name: {child.name: child.payload for child in group} for group in service.pipeline
    }
    return JSONResponse({"pipeline": service.spec.name, "stages": stages})


async def health(request: Request) -> JSONResponse:
    status, body = request.state.launch.health()
    return JSONResponse(body, status_code=status)


app = Starlette(
    routes=[Route("/", index), Route("/health", health)],
    lifespan=pipeline_lifespan(
        spec, exit_on_failure=os.environ.get("LAUNCH_EXIT_ON_FAILURE") == "1"
    ),
)
