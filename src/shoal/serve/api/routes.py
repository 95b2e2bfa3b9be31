"""The routes: TEI's ``/predict``, ``/v1/classify`` (and ``/classify``; Shoal's body or vLLM's,
``compat``), the Inference API's ``POST /`` and SageMaker's ``POST /invocations``, ``/health``
(and ``/ping``, and ``GET /`` as TEI has it), ``/info`` and ``/metrics``. ``compat`` holds the
routes only other stacks' clients use (``/v1/models``, ``/tokenize``).

They live on one module-level ``router`` that ``create_app`` includes, and reach what they
serve (engine, encoder, the cohort's facts, limits, hooks, metrics) through the ``AppContext``
that ``create_app`` keeps on ``app.state.context``: one dependency, ``Context``, hands it to
every route, so a route is a plain function of its request. Each is a ``BoundedBodyRoute``,
which bounds what a body costs the event loop before FastAPI parses it (``bounded``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from shoal.problems import FUNCTIONS, MULTI, apply
from shoal.serve.api.bounded import BoundedBodyRoute
from shoal.serve.api.compat import (
    AnyClassifyRequest,
    VllmClassifyRequest,
    VllmClassifyResponse,
    tei_info,
    vllm_answer,
    vllm_inputs,
)
from shoal.serve.api.errors import ApiError, as_api_error, error_response
from shoal.serve.api.observe import RequestTiming, ServeMetrics
from shoal.serve.api.schemas import (
    ClassifyResponse,
    ErrorResponse,
    Health,
    Info,
    Inputs,
    LabelScore,
    PredictRequest,
    parse_classify_inputs,
    parse_predict_inputs,
)
from shoal.serve.encoder import TextEncoder
from shoal.serve.engine import Engine, Ticket
from shoal.serve.errors import Draining, ServingError
from shoal.serve.results import Prediction

if TYPE_CHECKING:
    from shoal.serve.api.app import ApiLimits, AppHooks, ServiceInfo

VERSION = "0.1.0"
"""The API's version, in ``/info`` and the OpenAPI document."""


router = APIRouter(route_class=BoundedBodyRoute)


@dataclass(frozen=True, kw_only=True)
class AppContext:
    """What the routes serve; one per app, on ``app.state.context``."""

    engine: Engine
    encoder: TextEncoder
    info: ServiceInfo
    limits: ApiLimits
    hooks: AppHooks
    metrics: ServeMetrics
    workers: Callable[[], Sequence[Any]]
    """The runtime's non-blocking worker status (``WorkerStatus`` list)."""


async def _context(request: Request) -> AppContext:
    # async: FastAPI runs a plain-def dependency in a thread, which this does not need
    context: AppContext = request.app.state.context
    return context


Context = Annotated[AppContext, Depends(_context)]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorResponse} for c in codes}


PREDICT_ERRORS = _errors(400, 401, 408, 413, 422, 429, 503)


# ------------------------------------------------------------------------------ inference


async def infer(
    request: Request,
    ctx: AppContext,
    inputs: Inputs,
    *,
    truncate: bool | None,
    direction: str,
    min_k: int | None,
    deadline_ms: float | None,
) -> list[Prediction]:
    """Tokenise, enqueue and await the inputs; the request's timing goes on its state."""
    limit = ctx.limits.max_client_batch_size
    if len(inputs) > limit:
        raise ApiError(
            413,
            "validation",
            f"{len(inputs)} inputs in one request, above max_client_batch_size={limit}; split it",
        )
    try:
        if not ctx.engine.accepting:  # refuse before tokenising
            raise Draining("the server is shutting down; retry on another replica")
        encoded = await ctx.encoder.encode_all(
            inputs,
            truncate=truncate,
            direction="left" if direction.lower() == "left" else "right",
        )
        request.state.prompt_tokens = sum(e.n_tokens for e in encoded)
        ticket = ctx.engine.enqueue(
            encoded,
            min_k=min_k or 1,
            deadline_s=None if deadline_ms is None else deadline_ms / 1e3,
        )
        predictions = await _unless_disconnected(request, ticket)
    except (ApiError, asyncio.CancelledError):
        raise
    except Exception as exc:
        if not isinstance(exc, ServingError):  # e.g. the tokenizer failed: a server failure
            ctx.engine.record_failure("request", f"a request failed ({type(exc).__name__})", exc)
        raise as_api_error(exc, ctx.limits.retry_after_s) from exc
    request.state.timing = RequestTiming.of(predictions)
    return predictions


async def _answer(
    body: PredictRequest, request: Request, ctx: AppContext
) -> tuple[list[Any], bool]:
    """Ranked labels per input, and whether the request was a batch."""
    try:
        inputs, batched = parse_predict_inputs(body.inputs)
        function = _function(body, FUNCTIONS[ctx.info.problem_type])
    except ValueError as e:
        raise ApiError(422, "validation", str(e)) from None
    preds = await infer(
        request,
        ctx,
        inputs,
        truncate=body.truncate,
        direction=body.truncation_direction,
        min_k=body.min_k,
        deadline_ms=body.deadline_ms,
    )
    top_k = body.parameters.top_k if body.parameters else None
    default = FUNCTIONS[ctx.info.problem_type]
    return [_ranked(p, ctx.info.labels, function, default, top_k) for p in preds], batched


@router.post(
    "/predict",
    response_model=list[LabelScore] | list[list[LabelScore]],
    responses=PREDICT_ERRORS,
)
async def predict(body: PredictRequest, request: Request, ctx: Context) -> Any:
    """Classify a text, a pair or a batch (TEI's ``/predict``): labels by score."""
    answers, batched = await _answer(body, request, ctx)
    return JSONResponse(answers if batched else answers[0])


async def inference_api(body: PredictRequest, request: Request, ctx: Context) -> Any:
    """``/predict`` in the Hugging Face Inference API's shape: one list of labels per
    input, a single text included (``[[{label, score}, ...]]``)."""
    answers, _ = await _answer(body, request, ctx)
    return JSONResponse(answers)


for _path, _name in (("/", "inference_api_root"), ("/invocations", "sagemaker_invocations")):
    router.add_api_route(
        _path,
        inference_api,
        methods=["POST"],
        response_model=list[list[LabelScore]],
        responses=PREDICT_ERRORS,
        name=_name,
        operation_id=_name,
        # '/' also answers GET (/info); the documented route is /invocations
        include_in_schema=_path != "/",
    )


@router.post(
    "/v1/classify",
    response_model=ClassifyResponse | VllmClassifyResponse,
    responses=_errors(400, 401, 404, 408, 413, 422, 429, 503),
)
async def classify(body: AnyClassifyRequest, request: Request, ctx: Context) -> Any:
    """Classify texts: Shoal's body (``texts``) gets every label's probability and the
    students used per text; vLLM's and SGLang's (``input``, with ``model``) gets their
    ``data[{index, label, probs, num_classes}]``."""
    if isinstance(body, VllmClassifyRequest):
        inputs = vllm_inputs(body, ctx)
        direction = "right"
    else:
        try:
            inputs = parse_classify_inputs(body)
        except ValueError as e:
            raise ApiError(422, "validation", str(e)) from None
        direction = body.truncation_direction
    preds = await infer(
        request,
        ctx,
        inputs,
        truncate=body.truncate,
        direction=direction,
        min_k=body.min_k,
        deadline_ms=body.deadline_ms,
    )
    if isinstance(body, VllmClassifyRequest):
        return vllm_answer(preds, request, ctx)
    timing: RequestTiming = request.state.timing
    info = ctx.info
    return JSONResponse(
        {
            "model": info.model_id,
            "n_students": info.n_students,
            "students_used": timing.students_used,
            "queue_time_ms": timing.queue_s * 1e3,
            "inference_time_ms": timing.inference_s * 1e3,
            "results": [_classified(p, info) for p in preds],
        }
    )


# ------------------------------------------------------------------------------ state


def unready(ctx: AppContext) -> str | None:
    """Why the server cannot answer now, or None when it can."""
    engine = ctx.engine
    if not (engine.accepting and engine.running):
        return "the server is draining or stopped"
    status = ctx.workers()
    down = sum(1 for w in status if not w.alive)
    if down:
        return (
            f"{down} of {len(status)} worker processes are down (restarting, with "
            "backoff if they fail to start); see the server log"
        )
    failing = engine.failing
    if failing is not None:
        return f"{failing}; it is healthy again once a forward pass succeeds; see the server log"
    return None


@router.get("/health", response_model=Health, responses=_errors(503))
async def health(ctx: Context) -> Any:
    """200 while serving; 503 while draining, stopped, with a worker down, or from the
    ``failures.FAILING_AFTER``-th failure in a row (failed batches, non-finite logits, requests
    failing outside a batch) until a forward pass succeeds (a batch, or the self-check the
    engine reruns while failing)."""
    reason = unready(ctx)
    if reason is not None:
        return error_response(
            503, "unhealthy", reason, {"Retry-After": str(ctx.limits.retry_after_s)}
        )
    return {"status": "ok", "active_students": ctx.engine.current_k}


router.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)
# TEI answers GET / as its health check (no key needed, as for /health)
router.add_api_route("/", health, methods=["GET", "HEAD"], include_in_schema=False)


@router.get("/ping", response_model=Health, responses=_errors(503))
async def ping(ctx: Context) -> Any:
    """SageMaker's health check: ``/health`` under its name."""
    return await health(ctx)


router.add_api_route(
    "/classify",
    classify,
    methods=["POST"],
    response_model=ClassifyResponse | VllmClassifyResponse,
    responses=_errors(400, 401, 404, 408, 413, 422, 429, 503),
    name="classify_vllm_path",
    operation_id="classify_vllm_path",
)


@router.get("/info", response_model=Info, responses=_errors(401))
async def get_info(ctx: Context) -> Any:
    """TEI's ``Info`` fields, then the cohort: its students and their accuracy per prefix,
    current k, the config."""
    info, engine = ctx.info, ctx.engine
    return {
        **tei_info(ctx),
        "format": "shoal-cohort",
        "version": VERSION,
        "labels": info.labels,
        "problem_type": info.problem_type,
        "thresholds": info.thresholds,
        "n_students": info.n_students,
        "student_layers": info.student_layers,
        "current_k": engine.current_k,
        "cost_scale": engine.cost_scale,
        "queue_depth": engine.queue_depth,
        "prefix_accuracy": info.prefix_accuracy,
        "config": info.config,
    }


@router.get("/metrics", response_class=Response, responses=_errors(401))
async def get_metrics(ctx: Context) -> Response:
    """Prometheus text format."""
    text = ctx.metrics.render()
    if ctx.hooks.metrics_view is not None:
        text = await ctx.hooks.metrics_view(text)
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


# ------------------------------------------------------------------------------ helpers


def _function(body: PredictRequest, default: str) -> str:
    """The score function asked for: 'softmax', 'sigmoid' or 'none' (logits); ``default``
    (the head's own) when none is."""
    asked = body.parameters.function_to_apply if body.parameters else None
    if body.raw_scores and asked not in (None, "none"):
        raise ValueError(
            f"raw_scores=true asks for logits but parameters.function_to_apply={asked!r} "
            "asks for another function; send one of the two"
        )
    return "none" if body.raw_scores else (asked or default)


def _scores(p: Prediction, function: str, default: str) -> Sequence[float]:
    """The prediction's scores under ``function`` (the engine computed ``default``'s)."""
    if function == default:
        return p.scores
    if function == "none":
        return p.logits
    with np.errstate(over="ignore"):  # sigmoid of a very negative logit: 0
        return apply(function, np.asarray(p.logits, dtype=np.float64)).tolist()


def _classified(p: Prediction, info: ServiceInfo) -> dict[str, Any]:
    """One text's entry of Shoal's classify answer."""
    out: dict[str, Any] = {"label": info.labels[p.label_id], "label_id": p.label_id}
    if info.problem_type == MULTI:
        thresholds = info.thresholds or [0.5] * len(info.labels)
        fired = [i for i, (s, t) in enumerate(zip(p.scores, thresholds, strict=True)) if s >= t]
        out["labels"] = [info.labels[i] for i in sorted(fired, key=lambda i: -p.scores[i])]
    out.update(
        scores=dict(zip(info.labels, p.scores, strict=True)),
        logits=list(p.logits),
        students_used=p.k,
        truncated=p.truncated,
    )
    return out


def _ranked(
    p: Prediction, labels: list[str], function: str, default: str, top_k: int | None
) -> list[dict[str, Any]]:
    """``{label, score}`` by falling score, the first ``top_k`` (all when None)."""
    values = _scores(p, function, default)
    order = sorted(range(len(values)), key=lambda i: -values[i])[:top_k]
    return [{"label": labels[i], "score": values[i]} for i in order]


async def _unless_disconnected(request: Request, ticket: Ticket) -> list[Prediction]:
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
