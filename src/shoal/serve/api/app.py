"""The HTTP API: TEI-compatible ``/predict``, Shoal's ``/v1/classify``, ``/health``, ``/info``
and ``/metrics``; for Hugging Face and SageMaker clients also ``POST /`` and ``POST
/invocations`` (the Inference API's answer shape), ``GET /`` (info) and ``GET /ping``. It speaks
HTTP only: parse, hand the inputs to the engine, shape the answer.

This module holds what ``create_app`` is given (the cohort's facts, the limits, the hooks of a
replica behind another proxy) and the assembly: middleware, error handlers, the routes of
``routes.py`` and the dashboard, around one ``AppContext`` on ``app.state.context``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from shoal.serve.api.compat import compat_router
from shoal.serve.api.dashboard import add_dashboard
from shoal.serve.api.errors import install_error_handlers
from shoal.serve.api.guard import GuardLimits, GuardMiddleware
from shoal.serve.api.observe import ObserveMiddleware, ServeMetrics
from shoal.serve.api.routes import VERSION, AppContext, router
from shoal.serve.encoder import TextEncoder
from shoal.serve.engine import Engine


@dataclass(frozen=True, kw_only=True)
class ServiceInfo:
    """What the API tells clients about the served cohort."""

    model_id: str
    """Name shown in ``/info`` and answers (the cohort folder)."""
    labels: list[str]
    """Label names by class id."""
    problem_type: str = "single_label_classification"
    """What the head computes (``shoal.problems``); its score function is the default."""
    thresholds: list[float] | None = None
    """A multi-label head's probability threshold per label (0.5 each when None)."""
    n_students: int
    student_layers: int
    prefix_accuracy: list[dict[str, Any]] = field(default_factory=list)
    """As stored with the cohort: ``{k, dev_accuracy, test_accuracy, ...}`` per prefix."""
    config: dict[str, Any] = field(default_factory=dict)
    """The resolved serving configuration, for ``/info``."""


@dataclass(frozen=True, kw_only=True)
class ApiLimits:
    """Per-request limits the API enforces before anything is queued."""

    max_client_batch_size: int = 32
    """Most inputs in one request (413 above)."""
    api_key: str | None = None
    """If set, every route but ``/health`` and ``/ping`` (``/docs`` and ``/openapi.json``
    included) needs ``Authorization: Bearer <key>`` (401, checked before the body is read)."""
    max_body_bytes: int = 1 << 20
    """Most bytes of request body (413 above, declared or streamed)."""
    retry_after_s: int = 1
    """``Retry-After`` sent with 429 and 503."""


@dataclass(frozen=True, kw_only=True)
class AppHooks:
    """What differs when the app runs as one replica behind another proxy (Ray Serve)."""

    metrics_view: Callable[[bytes], Awaitable[bytes]] | None = None
    """Turns this app's exposition into what ``/metrics`` answers (a replica answers every
    replica's); None: this app's own."""
    request_id_header: bool = True
    """Add ``x-request-id`` to answers; False where the proxy in front adds it."""


def create_app(
    engine: Engine,
    encoder: TextEncoder,
    info: ServiceInfo,
    limits: ApiLimits | None = None,
    on_close: Callable[[], None] | None = None,
    hooks: AppHooks | None = None,
) -> FastAPI:
    """The FastAPI app; its lifespan starts the engine loop and stops it (then ``on_close``).

    ``app.state`` carries the ``context`` the routes read, the ``engine`` and the ``metrics``.
    """
    hooks = hooks or AppHooks()
    limits = limits or ApiLimits()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()
            encoder.close()
            if on_close is not None:
                on_close()

    app = FastAPI(
        title="Shoal",
        version=VERSION,
        lifespan=lifespan,
        description="BERT-like classification by a cohort of shallow students.",
    )
    workers = _worker_status(engine)
    metrics = ServeMetrics(engine, workers)
    app.state.context = AppContext(
        engine=engine,
        encoder=encoder,
        info=info,
        limits=limits,
        hooks=hooks,
        metrics=metrics,
        workers=workers,
    )
    app.state.engine = engine
    app.state.metrics = metrics
    guard = GuardLimits(api_key=limits.api_key, max_body_bytes=limits.max_body_bytes)
    app.add_middleware(GuardMiddleware, limits=guard)
    app.add_middleware(
        ObserveMiddleware, metrics=metrics, request_id_header=hooks.request_id_header
    )  # outermost: sees every answer
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(compat_router)
    add_dashboard(app, engine, info, metrics)
    return app


def _worker_status(engine: Engine) -> Callable[[], Sequence[Any]]:
    """The runtime's non-blocking worker status (``WorkerStatus`` list); none for a runtime
    without one."""
    status = getattr(engine.runner, "status", None)
    return status if callable(status) else (lambda: ())
