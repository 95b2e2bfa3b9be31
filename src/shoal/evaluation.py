"""`shoal eval`: accuracy of a teacher checkpoint or a cohort on one split."""

from __future__ import annotations

import torch

from shoal.data import encode, load_task, long_examples
from shoal.distill.evaluate import predict_logits, score
from shoal.errors import ConfigError, DataError, ModelError
from shoal.models import cohort_folder


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
) -> dict:
    """Score a model folder on a split; cohorts use their first k students (all if None).

    A cohort runs as the server would run it with the same ``backend`` and ``dtype``
    (``LocalRunner``), so the accuracy of a quantized or bf16 cohort is measured, not assumed.
    A teacher runs in transformers, float32. ``device`` is 'auto' (a GPU when there is one;
    always the CPU for ONNX Runtime), 'cpu', 'cuda' or 'cuda:N'. ``min_words`` > 0 scores
    only the examples of at least that many words (SST-2's whole sentences among its phrases).
    """
    from shoal.devices import resolve_device

    if min_words < 0:
        raise ConfigError(f"min_words={min_words} must be 0 (every example) or more")
    dev = resolve_device("cpu" if device == "auto" and backend != "torch" else device)
    task = load_task(data)
    if split not in task.splits:
        raise DataError(f"{data} has no {split!r} split; it has {sorted(task.splits)}")
    dataset = task.splits[split]
    if min_words:
        dataset = long_examples(dataset, min_words, split=split, flag="--min-words")
    is_cohort = cohort_folder.is_cohort(model_path)
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
    result = score(predict_logits(forward, enc, pad_id=tok.pad_token_id or 0), enc.labels)
    return {
        "model": model_path,
        "data": data,
        "split": split,
        "examples": len(dataset),
        **({"min_words": min_words} if min_words else {}),
        "device": str(dev),
        **({"k": k, "backend": backend, "dtype": dtype} if is_cohort else {}),
        **result,
    }
