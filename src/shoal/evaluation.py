"""`shoal eval`: accuracy of a teacher checkpoint or a cohort on one split."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from shoal.data import encode, load_task, long_examples
from shoal.distill.evaluate import predict_logits, score
from shoal.errors import ConfigError, DataError, ModelError
from shoal.models import cohort_folder

if TYPE_CHECKING:
    from shoal.models.cohort import ShoalModel
    from shoal.serve.runtime.runner import LocalRunner


def evaluate_model(
    model_path: str,
    data: str,
    *,
    split: str = "test",
    k: int | None = None,
    max_length: int = 128,
    min_words: int = 0,
    backend: str = "torch",
    dtype: str = "float32",
    device: str = "auto",
    by_k: bool = False,
) -> dict:
    """Score a model folder on a split; cohorts use their first k students (all if None).

    A cohort runs as the server would run it with the same ``backend`` and ``dtype``
    (``LocalRunner``), so the accuracy of a quantized or bf16 cohort is measured, not assumed.
    A teacher runs in transformers, float32. ``device`` is 'auto' (a GPU when there is one;
    always the CPU for ONNX Runtime), 'cpu', 'cuda' or 'cuda:N'. ``min_words`` > 0 scores
    only the examples of at least that many words (SST-2's whole sentences among its phrases).
    ``by_k`` scores every prefix k = 1..N of a cohort instead (``by_k`` in the result, one entry
    per k); in torch float32 the students run once and every prefix is summed from their outputs.
    """
    from shoal.devices import resolve_device

    if min_words < 0:
        raise ConfigError(f"min_words={min_words} must be 0 (every example) or more")
    dev = resolve_device("cpu" if device == "auto" and backend != "torch" else device)
    is_cohort = cohort_folder.is_cohort(model_path)
    problem_type, thresholds = _head(model_path, is_cohort)
    task = load_task(data, problem_type=problem_type)
    if split not in task.splits:
        raise DataError(f"{data} has no {split!r} split; it has {sorted(task.splits)}")
    dataset = task.splits[split]
    if min_words:
        dataset = long_examples(dataset, min_words, split=split, flag="--min-words")
    if by_k and (not is_cohort or k is not None):
        raise ConfigError(
            f"by_k scores every prefix of a cohort: {model_path} is "
            + ("a cohort and k is given; leave k out" if is_cohort else "not a cohort")
        )
    if is_cohort:
        from shoal.models.cohort import ShoalModel
        from shoal.models.cohort_folder import load_tokenizer
        from shoal.serve.runtime.runner import LocalRunner

        model = ShoalModel.from_pretrained(model_path)
        k = model.check_k(k)
        tok = load_tokenizer(model_path)
        n_labels = model.config.num_labels
        runner = LocalRunner(model, str(dev), dtype=dtype, backend=backend)

        def forward(b: dict[str, torch.Tensor]) -> torch.Tensor:
            return runner.run(b["input_ids"], b["attention_mask"], b["token_type_ids"], k)

        if by_k:
            forward = _every_prefix(
                model, runner, dev, fused=(backend, dtype) == ("torch", "float32")
            )
    else:
        if (backend, dtype) != ("torch", "float32"):
            raise ConfigError(
                f"backend={backend!r} and dtype={dtype!r} apply to Shoal cohorts; "
                f"{model_path} is a teacher, which is scored in transformers (float32)"
            )
        from shoal.models.teacher import load_teacher, logits_of

        model, tok = load_teacher(model_path)
        model.to(dev).eval()
        n_labels = model.config.num_labels
        forward = logits_of(model)

    if task.num_labels > n_labels:
        raise ModelError(
            f"{model_path} predicts {n_labels} labels but {data} has "
            f"{task.num_labels}; evaluate a model trained on this task"
        )
    enc = encode(tok, dataset, max_length)
    logits = predict_logits(forward, enc, pad_id=tok.pad_token_id or 0)
    if by_k:  # (examples, N, labels): one score per prefix
        rows = [
            {"k": j + 1, **score(logits[:, j], enc.labels, problem_type, thresholds)}
            for j in range(logits.shape[1])
        ]
        result: dict = {"by_k": rows}
    else:
        result = score(logits, enc.labels, problem_type, thresholds)
    return {
        "model": model_path,
        "data": data,
        "split": split,
        "examples": len(dataset),
        **({"min_words": min_words} if min_words else {}),
        "device": str(dev),
        "problem_type": problem_type,
        **({"k": "1..N" if by_k else k, "backend": backend, "dtype": dtype} if is_cohort else {}),
        **result,
    }


def _head(model_path: str, is_cohort: bool) -> tuple[str, list[float] | None]:
    """The model's problem type and, for a multi-label cohort, its stored thresholds."""
    if is_cohort:
        config, _ = cohort_folder.read_cohort(model_path)
        return config["problem_type"], config["thresholds"]
    from shoal.models.teacher import problem_type_of

    return problem_type_of(model_path), None


def _every_prefix(
    model: ShoalModel, runner: LocalRunner, dev: torch.device, *, fused: bool
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """A forward that returns the logits of every prefix k = 1..N, shape (B, N, labels).

    In torch float32 one fused pass of the students serves every prefix
    (``ShoalModel.prefix_logits``); other backends and dtypes run the runner once per k.
    """

    def forward(b: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask, types = b["input_ids"], b["attention_mask"], b["token_type_ids"]
        if fused:
            with torch.inference_mode():
                return model.prefix_logits(ids.to(dev), mask.to(dev), types.to(dev)).transpose(0, 1)
        ks = range(1, model.n_students + 1)
        return torch.stack([runner.run(ids, mask, types, k) for k in ks], dim=1)

    return forward
