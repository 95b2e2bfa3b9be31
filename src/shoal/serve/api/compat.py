"""The shapes other serving stacks' clients speak, beside Shoal's own.

- vLLM's and SGLang's classify body (``{model, input}``, answered as ``data[{index, label,
  probs, num_classes}]`` with ``usage``), what LiteLLM and OpenAI-style gateways send, taken on
  ``/classify`` and ``/v1/classify``; a body with ``input`` is vLLM's, any other Shoal's.
- ``GET /v1/models``, the OpenAI model list the same clients read the model name from.
- TEI's ``POST /tokenize``: each input's tokens with their text and character offsets.
- TEI's ``/info`` fields (``model_type: {"classifier": {id2label, label2id}}``, the router
  limits), merged into Shoal's ``/info``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from shoal.serve.api.bounded import BoundedBodyRoute
from shoal.serve.api.errors import ApiError
from shoal.serve.api.schemas import ClassifyRequest, ErrorResponse, Text

if TYPE_CHECKING:
    from shoal.serve.api.routes import AppContext
    from shoal.serve.results import Prediction

CREATED = int(time.time())
"""When this server process started: the ``created`` of ``/v1/models``."""


class VllmClassifyRequest(BaseModel):
    """vLLM's (and SGLang's) classify body, with Shoal's optional extras."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input: Text | list[Text] = Field(
        description="A text or a list of texts.", examples=[["a great movie", "dull and slow"]]
    )
    model: str | None = Field(None, description="The served model's id (GET /v1/models).")
    user: str | None = Field(None, description="The caller, as OpenAI-style clients send it.")
    truncate: bool | None = Field(
        None, description="Shoal extension: truncate over-long inputs; null: the server's setting."
    )
    min_k: int | None = Field(None, ge=1, description="Shoal extension: fewest students to use.")
    deadline_ms: float | None = Field(
        None, ge=1, le=3_600_000, description="Shoal extension: start within this many ms or 408."
    )


def _body_kind(value: Any) -> str:
    return "vllm" if isinstance(value, dict) and "input" in value else "shoal"


AnyClassifyRequest = Annotated[
    Annotated[ClassifyRequest, Tag("shoal")] | Annotated[VllmClassifyRequest, Tag("vllm")],
    Discriminator(_body_kind),
]
"""A ``/v1/classify`` body: vLLM's when it has ``input``, Shoal's otherwise (errors are then
those of the one schema chosen)."""


def vllm_inputs(body: VllmClassifyRequest, ctx: AppContext) -> list[tuple[str, str | None]]:
    """The texts of a vLLM body, after checking that it names the served model."""
    if body.model is not None and body.model != ctx.info.model_id:
        raise ApiError(
            404,
            "not_found",
            f"model {body.model!r} is not served here; this server serves "
            f"{ctx.info.model_id!r} (GET /v1/models), or leave model out",
        )
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise ApiError(422, "validation", "input is an empty list; send at least one text")
    return [(t, None) for t in texts]


def vllm_answer(preds: list[Prediction], request: Request, ctx: AppContext) -> JSONResponse:
    """vLLM's classification response for ``preds``."""
    labels = ctx.info.labels
    tokens = int(getattr(request.state, "prompt_tokens", 0))
    rid = getattr(request.state, "request_id", None) or "-"
    return JSONResponse(
        {
            "id": f"classify-{rid}",
            "object": "list",
            "created": int(time.time()),
            "model": ctx.info.model_id,
            "data": [
                {
                    "index": i,
                    "label": labels[p.label_id],
                    "probs": list(p.scores),
                    "num_classes": len(labels),
                }
                for i, p in enumerate(preds)
            ],
            "usage": {
                "prompt_tokens": tokens,
                "total_tokens": tokens,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            },
        }
    )


class VllmClassifyData(BaseModel):
    index: int
    label: str
    probs: list[float]
    num_classes: int


class VllmUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None


class VllmClassifyResponse(BaseModel):
    """vLLM's classification response."""

    id: str
    object: str = "list"
    created: int
    model: str
    data: list[VllmClassifyData]
    usage: VllmUsage


def tei_info(ctx: AppContext) -> dict[str, Any]:
    """TEI's ``Info`` fields for the served cohort (``model_sha``, ``sha`` and
    ``docker_label`` are null: a cohort folder has no hub revision or image)."""
    labels = ctx.info.labels
    config = ctx.info.config
    return {
        "model_id": ctx.info.model_id,
        "model_sha": None,
        "model_dtype": str(config.get("dtype", "float32")),
        "model_type": {
            "classifier": {
                "id2label": {str(i): label for i, label in enumerate(labels)},
                "label2id": {label: i for i, label in enumerate(labels)},
            }
        },
        "max_concurrent_requests": int(config.get("max_connections", 0) or 0),
        "max_input_length": ctx.encoder.max_length,
        "max_batch_tokens": int(config.get("max_batch_tokens", 0) or 0),
        "max_batch_requests": config.get("max_batch_size"),
        "max_client_batch_size": ctx.limits.max_client_batch_size,
        "auto_truncate": ctx.encoder.truncate,
        "tokenization_workers": 1,
        "sha": None,
        "docker_label": None,
    }


# ------------------------------------------------------------------------------ routes

compat_router = APIRouter(route_class=BoundedBodyRoute)


async def _context(request: Request) -> Any:
    return request.app.state.context  # the routes' ``AppContext``


Context = Annotated[Any, Depends(_context)]


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "shoal"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


@compat_router.get(
    "/v1/models", response_model=ModelList, responses={401: {"model": ErrorResponse}}
)
async def list_models(ctx: Context) -> Any:
    """The served model, as OpenAI-style clients list models."""
    return {
        "object": "list",
        "data": [
            {"id": ctx.info.model_id, "object": "model", "created": CREATED, "owned_by": "shoal"}
        ],
    }


class TokenizeRequest(BaseModel):
    """TEI's ``/tokenize`` body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: Text | list[Text] = Field(examples=["a great movie"])
    add_special_tokens: bool = Field(True, description="Add [CLS], [SEP] and the like.")
    prompt_name: None = Field(None, description="TEI's prompts; a cohort has none: null only.")


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None = Field(description="First character of the token; null if special.")
    stop: int | None = Field(description="Character after the token; null if special.")


@compat_router.post(
    "/tokenize",
    response_model=list[list[SimpleToken]],
    responses={code: {"model": ErrorResponse} for code in (401, 413, 422)},
)
async def tokenize(body: TokenizeRequest, ctx: Context) -> Any:
    """TEI's ``/tokenize``: every input's tokens, untruncated, with their character offsets."""
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    limit = ctx.limits.max_client_batch_size
    if not texts or len(texts) > limit:
        raise ApiError(
            413 if texts else 422,
            "validation",
            f"{len(texts)} inputs; send 1 to max_client_batch_size={limit}",
        )
    return [ctx.encoder.tokens(t, add_special_tokens=body.add_special_tokens) for t in texts]
