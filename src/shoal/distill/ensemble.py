"""The running ensemble ``b_k`` on the training set and the boosting arithmetic around it:
each student's outputs, alpha_k (Theorem 1), ``b_k = b_{k-1} + alpha_k * s_k``, and the initial
scale of a boosting student."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.data import EVAL_TOKENS, Encoded, iterate
from shoal.devices import model_device, to_device
from shoal.distill import boosting
from shoal.distill.config import DistillConfig
from shoal.distill.teacher_outputs import TeacherCache
from shoal.distill.token_store import TokenStore
from shoal.models.cohort import ShoalModel


@dataclass
class Ensemble:
    """The running ensemble b_{k} on the training set, kept so no student is rerun."""

    hidden: TokenStore  # (n_tokens, H) sum of alpha_i * s_i
    logits: torch.Tensor  # (N, C) sum of alpha_i * head_i(s_i) (logit space only)


@torch.inference_mode()
def student_outputs(model: ShoalModel, k: int, enc: Encoded, pad_id: int, batch_size: int = 128):
    """Yield (index, mask, s_k) over a split in a fixed order; s_k is (B, L, H) float32.
    ``mask`` and ``s_k`` are on the model's device, ``index`` is a list."""
    model.eval()  # no dropout: these outputs feed alpha and the cached ensemble
    dev = model_device(model)
    for b in iterate(enc, batch_size, shuffle=False, pad_id=pad_id, max_tokens=EVAL_TOKENS):
        b = to_device(b, dev)
        x, mask = model.embed(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        yield b["index"].tolist(), b["attention_mask"], model.students[k](x, mask)[-1]


@torch.no_grad()
def fit_alpha_and_add(
    model: ShoalModel,
    k: int,
    enc: Encoded,
    cache: TeacherCache,
    ensemble: Ensemble | None,
    pad_id: int,
    config: DistillConfig,
) -> float:
    """Compute alpha_k (Theorem 1) and update the cached ensemble in place; return alpha_k.

    One pass over the training set: the student's outputs are kept while alpha's sums are
    accumulated, then ``b_k = b_{k-1} + alpha_k * s_k`` is one addition over the whole store.
    In hidden space the boosting loss is over every real token (``boost_on='tokens'``) or the
    first token only ('cls'); in logit space it is over the logits. Averaged students
    (``method='average'``) count 1 each (ShoalModel divides by k at use) and never read the
    ensemble, which is None for them, so nothing is computed.
    """
    if ensemble is None:
        model.alpha[k] = 1.0
        return 1.0
    outputs = TokenStore(enc.lengths(), model.config.hidden_size)
    own_logits = torch.zeros_like(ensemble.logits)
    acc = boosting.AlphaAccumulator()
    dev = model_device(model)
    for idx, mask, s in student_outputs(model, k, enc, pad_id):
        outputs.set_(idx, s)
        if model.config.head_per_student:
            own_logits[idx] = model.student_logits(s[None, :, 0], [k])[0].cpu()
        if config.space == "logits":
            r = boosting.residual(cache.logits[idx], ensemble.logits[idx])
            acc.add(r, own_logits[idx])
            continue
        real = mask.bool()
        if config.boost_on == "cls":
            real = torch.zeros_like(real)
            real[:, 0] = True
        r = boosting.residual(
            cache.final.gather(idx, device=dev), ensemble.hidden.gather(idx, device=dev)
        )
        acc.add(r[real], s[real])
    alpha = acc.alpha(config.shrinkage)
    ensemble.hidden.data += alpha * outputs.data
    ensemble.logits += alpha * own_logits
    model.alpha[k] = alpha
    return alpha


@torch.inference_mode()
def accumulate(
    model: ShoalModel, k: int, enc: Encoded, ensemble: Ensemble, pad_id: int, alpha: float
) -> None:
    """b_k = b_{k-1} + alpha_k * s_k, in hidden space and (per-student heads) logit space."""
    for idx, _, s in student_outputs(model, k, enc, pad_id):
        ensemble.hidden.add_(idx, s, alpha)
        if model.config.head_per_student:
            ensemble.logits[idx] += alpha * model.student_logits(s[None, :, 0], [k])[0].cpu()


@torch.inference_mode()
def initial_scale(
    model: ShoalModel,
    k: int,
    enc: Encoded,
    cache: TeacherCache,
    ensemble: Ensemble | None,
    pad: int,
    batches: int = 4,
) -> float:
    """RMS ratio of the residual to the untrained student's output on a few batches (hidden
    states, or logits with a head per student); 1 without boosting (``ensemble`` None)."""
    if ensemble is None or k == 0:
        return 1.0
    r2 = s2 = 0.0
    dev = model_device(model)
    for i, (idx, mask, s) in enumerate(student_outputs(model, k, enc, pad)):
        if model.config.head_per_student:
            r = boosting.residual(cache.logits[idx], ensemble.logits[idx])
            out = model.student_logits(s[None, :, 0], [k])[0].cpu()
        else:
            real = mask.bool()
            r = boosting.residual(
                cache.final.gather(idx, device=dev), ensemble.hidden.gather(idx, device=dev)
            )[real]
            out = s[real]
        r2 += float((r**2).sum())
        s2 += float((out**2).sum())
        if i + 1 >= batches:
            break
    return (r2 / s2) ** 0.5 if s2 > 0 else 1.0
