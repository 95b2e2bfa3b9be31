"""The HTTP API: TEI-compatible ``/predict``, Shoal's ``/v1/classify``, ``/health``, ``/info``
and ``/metrics``; for Hugging Face and SageMaker clients also ``POST /`` and ``POST
/invocations`` (the Inference API's answer shape), ``GET /`` (info) and ``GET /ping``. It speaks
HTTP only: parse, hand the inputs to the engine, shape the answer."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from shoal.serve.api.dashboard import add_dashboard
from shoal.serve.api.errors import ApiError, as_api_error, error_response, install_error_handlers
from shoal.serve.api.guard import GuardLimits, GuardMiddleware
from shoal.serve.api.observe import ObserveMiddleware, RequestTiming, ServeMetrics
from shoal.serve.api.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ErrorResponse,
    Health,
    Info,
    Inputs,
    Prediction,
    PredictRequest,
    parse_classify_inputs,
    parse_predict_inputs,
)
from shoal.serve.engine import Draining, Engine, TextEncoder, Ticket
from shoal.serve.engine import Prediction as EnginePrediction

VERSION = "0.1.0"
FAILING_AFTER = 3
"""Batches failing in a row after which ``/health`` reports the server unready..."""
FAILING_FOR_S = 10.0
"""...for this many seconds after the last failure (or until a batch runs)."""


@dataclass(frozen=True, kw_only=True)
class ServiceInfo:
    """What the API tells clients about the served cohort."""

    model_id: str
    """Name shown in ``/info`` and answers (the cohort folder)."""
    labels: list[str]
    """Label names by class id."""
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


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorResponse} for c in codes}


def create_app(
    engine: Engine,
    encoder: TextEncoder,
    info: ServiceInfo,
    limits: ApiLimits | None = None,
    on_close: Callable[[], None] | None = None,
    hooks: AppHooks | None = None,
) -> FastAPI:
    """The FastAPI app; its lifespan starts the engine loop and stops it (then ``on_close``)."""
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
    app.state.metrics = metrics
    guard = GuardLimits(api_key=limits.api_key, max_body_bytes=limits.max_body_bytes)
    app.add_middleware(GuardMiddleware, limits=guard)
    app.add_middleware(
        ObserveMiddleware, metrics=metrics, request_id_header=hooks.request_id_header
    )  # outermost: sees every answer
    install_error_handlers(app)

    async def infer(
        request: Request,
        inputs: Inputs,
        *,
        truncate: bool | None,
        direction: str,
        min_k: int | None,
        deadline_ms: float | None,
    ) -> list[EnginePrediction]:
        if len(inputs) > limits.max_client_batch_size:
            raise ApiError(
                413,
                "validation",
                f"{len(inputs)} inputs in one request, above "
                f"max_client_batch_size={limits.max_client_batch_size}; split it",
            )
        try:
            if not engine.accepting:  # refuse before tokenising
                raise Draining("the server is shutting down; retry on another replica")
            encoded = await encoder.encode_all(
                inputs,
                truncate=truncate,
                direction="left" if direction.lower() == "left" else "right",
            )
            ticket = engine.enqueue(
                encoded,
                min_k=min_k or 1,
                deadline_s=None if deadline_ms is None else deadline_ms / 1e3,
            )
            predictions = await _unless_disconnected(request, ticket)
        except (ApiError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise as_api_error(exc, limits.retry_after_s) from exc
        request.state.timing = RequestTiming.of(predictions)
        return predictions

    def ranked(p: EnginePrediction, function: str, top_k: int | None) -> list[dict[str, Any]]:
        values = _scores(p, function)
        order = sorted(range(len(values)), key=lambda i: -values[i])[:top_k]
        return [{"label": info.labels[i], "score": values[i]} for i in order]

    async def answer(body: PredictRequest, request: Request) -> tuple[list[Any], bool]:
        """Ranked labels per input, and whether the request was a batch."""
        try:
            inputs, batched = parse_predict_inputs(body.inputs)
            function = _function(body)
        except ValueError as e:
            raise ApiError(422, "validation", str(e)) from None
        preds = await infer(
            request,
            inputs,
            truncate=body.truncate,
            direction=body.truncation_direction,
            min_k=body.min_k,
            deadline_ms=body.deadline_ms,
        )
        top_k = body.parameters.top_k if body.parameters else None
        return [ranked(p, function, top_k) for p in preds], batched

    predict_errors = _errors(400, 401, 408, 413, 422, 429, 503)

    @app.post(
        "/predict",
        response_model=list[Prediction] | list[list[Prediction]],
        responses=predict_errors,
    )
    async def predict(body: PredictRequest, request: Request) -> Any:
        """Classify a text, a pair or a batch (TEI's ``/predict``): labels by score."""
        answers, batched = await answer(body, request)
        return JSONResponse(answers if batched else answers[0])

    async def inference_api(body: PredictRequest, request: Request) -> Any:
        """``/predict`` in the Hugging Face Inference API's shape: one list of labels per
        input, a single text included (``[[{label, score}, ...]]``)."""
        answers, _ = await answer(body, request)
        return JSONResponse(answers)

    for path, name in (("/", "inference_api_root"), ("/invocations", "sagemaker_invocations")):
        app.add_api_route(
            path,
            inference_api,
            methods=["POST"],
            response_model=list[list[Prediction]],
            responses=predict_errors,
            name=name,
            operation_id=name,
            # '/' also answers GET (/info); the documented route is /invocations
            include_in_schema=path != "/",
        )

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=_errors(400, 401, 408, 413, 422, 429, 503),
    )
    async def classify(body: ClassifyRequest, request: Request) -> Any:
        """Classify texts; every label's probability and the students used per text."""
        try:
            inputs = parse_classify_inputs(body)
        except ValueError as e:
            raise ApiError(422, "validation", str(e)) from None
        preds = await infer(
            request,
            inputs,
            truncate=body.truncate,
            direction=body.truncation_direction,
            min_k=body.min_k,
            deadline_ms=body.deadline_ms,
        )
        timing: RequestTiming = request.state.timing
        return JSONResponse(
            {
                "model": info.model_id,
                "n_students": info.n_students,
                "students_used": timing.students_used,
                "queue_time_ms": timing.queue_s * 1e3,
                "inference_time_ms": timing.inference_s * 1e3,
                "results": [
                    {
                        "label": info.labels[p.label_id],
                        "label_id": p.label_id,
                        "scores": dict(zip(info.labels, p.scores, strict=True)),
                        "logits": list(p.logits),
                        "students_used": p.k,
                        "truncated": p.truncated,
                    }
                    for p in preds
                ],
            }
        )

    def unready() -> str | None:
        """Why the server cannot answer now, or None when it can."""
        if not (engine.accepting and engine.running):
            return "the server is draining or stopped"
        status = workers()
        down = sum(1 for w in status if not w.alive)
        if down:
            return (
                f"{down} of {len(status)} worker processes are down (restarting, with "
                "backoff if they fail to start); see the server log"
            )
        if engine.batch_failures >= FAILING_AFTER and engine.seconds_since_failure < FAILING_FOR_S:
            return f"the last {engine.batch_failures} batches failed; see the server log"
        return None

    @app.get("/health", response_model=Health, responses=_errors(503))
    async def health() -> Any:
        """200 while serving; 503 while draining, stopped, with a worker down, or after
        several batches failed in a row."""
        reason = unready()
        if reason is not None:
            return error_response(
                503, "unhealthy", reason, {"Retry-After": str(limits.retry_after_s)}
            )
        return {"status": "ok", "active_students": engine.current_k}

    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.get("/ping", response_model=Health, responses=_errors(503))
    async def ping() -> Any:
        """SageMaker's health check: ``/health`` under its name."""
        return await health()

    @app.get("/info", response_model=Info, responses=_errors(401))
    @app.get("/", response_model=Info, responses=_errors(401), include_in_schema=False)
    async def get_info() -> Any:
        """The model, its students and their accuracy per prefix, current k, the config."""
        return {
            "model_id": info.model_id,
            "model_type": "shoal-cohort",
            "version": VERSION,
            "labels": info.labels,
            "n_students": info.n_students,
            "student_layers": info.student_layers,
            "max_input_length": encoder.max_length,
            "max_client_batch_size": limits.max_client_batch_size,
            "current_k": engine.current_k,
            "cost_scale": engine.cost_scale,
            "queue_depth": engine.queue_depth,
            "prefix_accuracy": info.prefix_accuracy,
            "config": info.config,
        }

    @app.get("/metrics", response_class=Response, responses=_errors(401))
    async def get_metrics() -> Response:
        """Prometheus text format."""
        text = metrics.render()
        if hooks.metrics_view is not None:
            text = await hooks.metrics_view(text)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    add_dashboard(app, engine, info, metrics)
    return app


def _function(body: PredictRequest) -> str:
    """The score function asked for: 'softmax', 'sigmoid' or 'none' (logits)."""
    asked = body.parameters.function_to_apply if body.parameters else None
    if body.raw_scores and asked not in (None, "none"):
        raise ValueError(
            f"raw_scores=true asks for logits but parameters.function_to_apply={asked!r} "
            "asks for another function; send one of the two"
        )
    return "none" if body.raw_scores else (asked or "softmax")


def _scores(p: EnginePrediction, function: str) -> Sequence[float]:
    if function == "none":
        return p.logits
    if function == "sigmoid":
        return [1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0 for x in p.logits]
    return p.scores


def _worker_status(engine: Engine) -> Callable[[], Sequence[Any]]:
    """The runtime's non-blocking worker status (``WorkerStatus`` list); none for a runtime
    without one."""
    status = getattr(engine.runner, "status", None)
    return status if callable(status) else (lambda: ())


async def _unless_disconnected(request: Request, ticket: Ticket) -> list[EnginePrediction]:
    """The ticket's predictions, or withdraw its queued inputs if the client goes away."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    answer = asyncio.ensure_future(ticket.wait())
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({answer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if answer.done():
            return answer.result()
        ticket.cancel()  # now, before the engine can plan them
        raise ApiError(499, "cancelled", "the client closed the connection")
    finally:
        if not answer.done():  # cancelled ourselves, or the client left
            ticket.cancel()
            answer.cancel()
        watcher.cancel()
