"""`create_app(settings)`: the FastAPI application, its lifespan (load, warm up, drain) and its routers."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from .batching import InferenceThread
from .bodies import register_schemas
from .errors import install_error_handlers
from .latent_schemas import DecodeRequest, EncodeRequest, InterpolateRequest
from .leases import LeaseMiddleware
from .metrics import Metrics
from .middleware import RequestContextMiddleware
from .oip_errors import ProtocolErrorMiddleware
from .registry import ModelRegistry, warmup_sizes
from .repository import model_names
from .routes import health, latent, logprob, metrics, models, playground, repository, sample, v2
from .runtime import prepare_kernels, set_up_process
from .schemas import SampleRequest, publish_limits
from .settings import Settings
from .state import AppState

__all__ = ["create_app"]

log = logging.getLogger("service")
# The request models of the routes that parse their bodies with `bodies.json_body`.
JSON_BODIES = (SampleRequest, EncodeRequest, DecodeRequest, InterpolateRequest)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: AppState = app.state.flows
    settings = state.settings
    runtime = set_up_process(settings)
    loop = asyncio.get_running_loop()
    executor = state.inference.executor
    await loop.run_in_executor(executor, prepare_kernels, runtime.device)  # no request waits for a compiler
    registry = await loop.run_in_executor(
        executor, ModelRegistry.load, settings, runtime, state.inference, state.metrics
    )
    if settings.warmup:
        await loop.run_in_executor(executor, registry.warm_up, warmup_sizes(settings))
    registry.start()
    # Start-up objects (models, modules, schemas) move out of the collector's generations, so the
    # collections that requests trigger stay short (fewer latency spikes).
    gc.collect()
    gc.freeze()
    state.registry, state.ready = registry, True
    log.info(
        "ready: %s (default %s) on %s, %d instance(s) of %d intra-op thread(s)",
        ", ".join(sorted(registry.entries)),
        registry.default,
        runtime.device,
        settings.instances,
        torch.get_num_threads(),
    )
    try:
        yield
    finally:
        state.ready = False
        await registry.close()
        state.inference.shutdown()
        log.info("drained and stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings come from the argument or from `FLOWS_*` environment variables."""
    settings = settings or Settings()
    metrics_ = Metrics()
    app = FastAPI(
        title="Flow sampling and likelihood service",
        version="0.1.0",
        description="Exact log-likelihoods and fast sampling for FInC Flow, Inverse-Flow and Glow models.",
        lifespan=_lifespan,
    )
    # One inference thread per model instance; each batcher runs up to `instances` batches at once.
    inference = InferenceThread(inline_max_s=settings.inline_max_ms / 1000, instances=settings.instances)
    app.state.flows = AppState(settings, metrics_, inference)
    install_error_handlers(app)
    for router in (health.router, metrics.router, models.router, sample.router, logprob.router):
        app.include_router(router)
    app.include_router(latent.router)
    app.include_router(playground.router)
    app.include_router(v2.router)  # the Open Inference Protocol, and Triton's repository extension
    app.include_router(repository.router)
    playground.mount_static(app)
    app.add_middleware(LeaseMiddleware)  # inside the request context: released before it logs
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics_,
        max_body_bytes=settings.max_body_bytes,
        inference=inference,
        body_timeout_s=settings.body_timeout_s,
        api_key=settings.api_key,
    )
    app.add_middleware(ProtocolErrorMiddleware)  # outermost: /v2 errors in the protocol's shape
    default_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = register_schemas(default_openapi(), JSON_BODIES)  # bodies parsed off the event loop
            publish_limits(
                spec,
                max_samples=settings.max_samples_per_request,
                max_images=settings.max_images_per_request,
                models=model_names(settings.models),
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
