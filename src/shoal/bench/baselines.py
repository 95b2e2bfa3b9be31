"""Baseline servers for `shoal bench serve`: the teacher as common servers run it.

Every baseline speaks the same `/predict` API as Shoal (text-embeddings-inference shapes):
- ``fastapi``: the teacher behind FIFO dynamic batching with a maximum batch size and a maximum
  wait, the policy of the usual model servers; backend ``torch`` (transformers, eager),
  ``onnx`` (ONNX Runtime) or ``onnx-int8`` (ONNX Runtime, int8 weights);
- ``litserve``: the teacher in LitServe with its own batching (``max_batch_size``,
  ``batch_timeout``).

Run one with ``python -m shoal.bench.baselines --model DIR --backend torch --port 8100``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shoal.models.teacher import input_names, teacher_inputs

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BaselineConfig:
    """One baseline server."""

    model: str
    """Fine-tuned teacher folder (a Hugging Face checkpoint)."""
    backend: str = "torch"
    """'torch' (transformers eager), 'onnx' (ONNX Runtime) or 'onnx-int8' (ONNX Runtime, the
    weights quantized like Shoal's int8 students)."""
    server: str = "fastapi"
    """'fastapi' (FIFO dynamic batching) or 'litserve'."""
    host: str = "127.0.0.1"
    port: int = 8100
    max_batch: int = 32
    """Largest batch the batcher forms."""
    max_wait_ms: float = 5.0
    """Longest time the first request of a batch waits for others."""
    max_length: int = 128
    """Tokens per text after truncation."""
    threads: int = 0
    """torch / ONNX Runtime intra-op threads; 0 keeps the default."""


def export_onnx(model_dir: str, folder: Path) -> Path:
    """Export a Hugging Face sequence classifier to ONNX (dynamic batch and length)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from shoal.bench.offline.systems import export_onnx as export

    folder.mkdir(parents=True, exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    ids = torch.ones(2, 8, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # trace with padding so the mask path is kept
    sample = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return export(model, folder, teacher_inputs(model, sample))


class TeacherClassifier:
    """Tokenise and classify a batch with the teacher on torch or ONNX Runtime."""

    def __init__(self, config: BaselineConfig) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(config.model)
        hf = AutoConfig.from_pretrained(config.model)
        self.labels = [hf.id2label[i] for i in range(hf.num_labels)]
        if config.backend in ("onnx", "onnx-int8"):
            from shoal.bench.offline.systems import ort_session, quantize_onnx

            path = export_onnx(config.model, Path(config.model) / "onnx")
            if config.backend == "onnx-int8":
                path = quantize_onnx(path)
            self.path = path
            self.session = ort_session(path, config.threads)  # 0 threads: ORT's default
            self.names = [i.name for i in self.session.get_inputs()]
        elif config.backend == "torch":
            import torch
            from transformers import AutoModelForSequenceClassification

            if config.threads:
                torch.set_num_threads(config.threads)
            self.model = AutoModelForSequenceClassification.from_pretrained(config.model).eval()
            self.names = input_names(self.model)
        else:
            raise ValueError(f"backend={config.backend!r} must be 'torch', 'onnx' or 'onnx-int8'")

    def probabilities(self, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        """(B, C) class probabilities."""
        enc = self.tokenizer(
            texts,
            pairs,
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="np",
        )
        feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
        feeds["token_type_ids"] = enc.get(
            "token_type_ids", np.zeros_like(feeds["input_ids"])
        ).astype(np.int64)
        if self.config.backend != "torch":
            logits = self.session.run(["logits"], {n: feeds[n] for n in self.names})[0]
        else:
            import torch

            feeds = {n: feeds[n] for n in self.names}
            with torch.inference_mode():
                logits = (
                    self.model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
                    .logits.float()
                    .numpy()
                )
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def answer(self, probs: np.ndarray) -> list[dict[str, Any]]:
        """One TEI-style answer: [{label, score}] sorted by score."""
        order = np.argsort(-probs)
        return [{"label": self.labels[i], "score": float(probs[i])} for i in order]


def parse_inputs(body: Any) -> tuple[list[tuple[str, str | None]], bool]:
    """TEI /predict inputs -> [(text, pair)], and whether the request was a batch.

    The same schema and rules as Shoal's server, so every system answers the same requests;
    raises ``ValueError`` (pydantic's ``ValidationError`` is one) on a malformed body.
    """
    from shoal.serve.api.schemas import PredictRequest, parse_predict_inputs

    return parse_predict_inputs(PredictRequest.model_validate(body).inputs)


def fastapi_app(config: BaselineConfig):
    """The teacher behind FIFO dynamic batching (max batch size + max wait)."""
    from contextlib import asynccontextmanager

    clf = TeacherClassifier(config)
    queue: asyncio.Queue = asyncio.Queue()

    async def batcher() -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await queue.get()
            batch = [first]
            deadline = loop.time() + config.max_wait_ms / 1000
            while len(batch) < config.max_batch:  # FIFO: wait up to max_wait for more
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except TimeoutError:
                    break
            texts = [t for t, _, _ in batch]
            pairs = [p for _, p, _ in batch]
            try:
                probs = await loop.run_in_executor(
                    None, clf.probabilities, texts, None if pairs[0] is None else pairs
                )
                for (_, _, fut), p in zip(batch, probs):
                    if not fut.done():
                        fut.set_result(clf.answer(p))
            except Exception as e:  # answer every waiting request, never leave one hanging
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(batcher())
        yield
        task.cancel()

    app = FastAPI(title=f"teacher baseline ({config.backend})", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(request: Request):
        try:
            items, is_batch = parse_inputs(await request.json())
        except ValueError as e:
            return JSONResponse({"error": str(e), "error_type": "Validation"}, status_code=422)
        loop = asyncio.get_running_loop()
        futs = []
        for text, pair in items:
            fut = loop.create_future()
            await queue.put((text, pair, fut))
            futs.append(fut)
        answers = await asyncio.gather(*futs)
        return answers if is_batch else answers[0]

    return app


def _teacher_lit_api(config: BaselineConfig):
    """A LitAPI for the teacher; LitServe pickles it into its worker process, so the class
    lives at module level (see ``TeacherLitAPI``)."""
    return TeacherLitAPI(
        config, max_batch_size=config.max_batch, batch_timeout=config.max_wait_ms / 1000
    )


try:  # LitServe is optional: only the 'litserve' baseline needs it
    import litserve as _ls

    class TeacherLitAPI(_ls.LitAPI):
        """The teacher as a LitServe API with LitServe's own batching."""

        def __init__(self, config: BaselineConfig, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.config = config

        def setup(self, device: str) -> None:
            self.clf = TeacherClassifier(self.config)

        def decode_request(self, request: dict) -> tuple[str, str | None]:
            (item,), _ = parse_inputs(request)
            return item

        def batch(self, inputs: list) -> list:
            return inputs

        def predict(self, batch: list) -> list:
            pairs = [p for _, p in batch]
            probs = self.clf.probabilities(
                [t for t, _ in batch], None if pairs[0] is None else pairs
            )
            return [self.clf.answer(p) for p in probs]

        def unbatch(self, output: list) -> list:
            return output

        def encode_response(self, output: list) -> list:
            return output
except ImportError:  # pragma: no cover
    _ls = None


def litserve_server(config: BaselineConfig):
    """The teacher in LitServe, batching with its own max_batch_size / batch_timeout."""
    if _ls is None:
        raise RuntimeError("the litserve baseline needs `pip install litserve`")
    return _ls.LitServer(
        _teacher_lit_api(config), accelerator="cpu", devices=1, workers_per_device=1, timeout=60
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"])
    p.add_argument("--server", default="fastapi", choices=["fastapi", "litserve"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    config = BaselineConfig(
        model=a.model,
        backend=a.backend,
        server=a.server,
        host=a.host,
        port=a.port,
        max_batch=a.max_batch,
        max_wait_ms=a.max_wait_ms,
        max_length=a.max_length,
        threads=a.threads,
    )
    if config.server == "litserve":
        litserve_server(config).run(
            host=config.host, port=config.port, log_level="warning", generate_client_file=False
        )
    else:
        import uvicorn

        uvicorn.run(fastapi_app(config), host=config.host, port=config.port, log_level="warning")


if __name__ == "__main__":
    main()
