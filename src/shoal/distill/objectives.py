"""What each distillation method asks of student k, one class per method (``OBJECTIVES``,
keyed by ``DistillConfig.method``), each with ``step(batch) -> loss``.

Every method shares the frame of ``Objective.step``: the student's states on the batch, the
residual term in its space (hidden states read by the shared head, or logits through the
student's own head), an imitation of an intermediate target by its middle layer when the
method stacks, and the KD / label terms through the head. The methods differ in what student
k fits and what its middle layer imitates:

- ``average``: the teacher itself; the middle layer imitates the teacher's states at the same
  depth; prefix k is the mean of the first k students.
- ``boost``: the residual ``T - b_{k-1}`` (the first student: the teacher); no imitation.
- ``stack``: boosting plus virtual stacking (docs/method.md): the middle layer imitates
  ``b_{k-1}`` (the first student: the teacher's intermediate states).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from shoal.devices import model_device, to_device
from shoal.distill import boosting, losses
from shoal.distill.config import DistillConfig
from shoal.distill.ensemble import Ensemble
from shoal.distill.teacher_outputs import TeacherCache
from shoal.models.cohort import ShoalModel


class Objective:
    """Student k's loss on one batch; subclasses say what it fits and imitates."""

    boosts: ClassVar[bool] = False
    """Student k > 1 fits the residual of the running ensemble ``b_{k-1}`` (which then must
    exist), with a learned scale ``c`` that alpha_k replaces after training."""
    combine: ClassVar[str] = "sum"
    """How prefix k combines its students (``ShoalConfig.combine``)."""
    imitates: ClassVar[bool] = False
    """The middle layer imitates an intermediate target (with ``w_stack`` > 0 and students
    of more than one layer)."""

    def __init__(
        self,
        model: ShoalModel,
        k: int,
        cache: TeacherCache,
        ensemble: Ensemble | None,
        config: DistillConfig,
        proj: nn.Linear,
        c: nn.Parameter,
    ) -> None:
        if self.boosts and ensemble is None:
            raise ValueError(f"method {config.method!r} needs the running ensemble")
        self.model, self.k, self.cache, self.ensemble = model, k, cache, ensemble
        self.config, self.proj, self.c = config, proj, c
        self.student = model.students[k]
        self.dev = model_device(model)
        self.residual = self.boosts and k > 0
        self.stack = self.imitates and config.w_stack > 0 and config.student_layers > 1
        self.logit_space = config.space == "logits"
        self.head = model.heads[k] if self.logit_space else model.head
        self.problem_type = model.config.problem_type

    def imitation_target(self, idx: list[int], prev: torch.Tensor) -> torch.Tensor:
        """What the middle layer imitates: the teacher's intermediate states."""
        return self.cache.middle.gather(idx, device=self.dev)

    def __call__(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.step(b)

    def step(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one batch (the trainer backpropagates it)."""
        config, dev = self.config, self.dev
        b = to_device(b, dev)
        idx, mask = b["index"].tolist(), b["attention_mask"]
        with torch.no_grad():
            x, amask = self.model.embed(b["input_ids"], mask, b["token_type_ids"])
        states = self.student(x, amask)
        teacher_states = self.cache.final.gather(idx, device=dev)
        t_logits = self.cache.logits[b["index"]].to(dev)
        prev = (
            self.ensemble.hidden.gather(idx, device=dev)
            if self.ensemble is not None and self.residual
            else torch.zeros_like(teacher_states)
        )
        if self.logit_space:
            loss, logits = self._logit_residual(b, states, teacher_states, t_logits)
        else:
            loss, logits = self._hidden_residual(states, teacher_states, prev, mask)
        if self.stack:
            loss = loss + config.w_stack * losses.stacking_loss(
                self.proj(states[-2]), self.imitation_target(idx, prev), mask
            )
        if config.w_rel > 0:
            loss = loss + config.w_rel * self._relations(idx, x, states, mask)
        if config.w_kd > 0:
            loss = loss + config.w_kd * losses.kd_loss(
                logits, t_logits, config.temperature, self.problem_type
            )
        if config.w_ce > 0:
            loss = loss + config.w_ce * losses.label_loss(logits, b["labels"], self.problem_type)
        return loss

    def _relations(
        self, idx: list[int], x: torch.Tensor, states: list[torch.Tensor], mask: torch.Tensor
    ) -> torch.Tensor:
        """The attention relations of the student's last layer against the teacher's."""
        late, layer = self.cache.late, self.cache.late_layer
        if late is None or layer is None:
            raise ValueError("w_rel > 0 needs the teacher's last layer and its cached input")
        return losses.relation_loss(
            states[-2] if len(states) > 1 else x,
            late.gather(idx, device=self.dev),
            self.student.layers[-1],
            layer,
            mask,
            self.model.config.num_attention_heads,
        )

    def _logit_residual(
        self,
        b: dict[str, torch.Tensor],
        states: list[torch.Tensor],
        teacher_states: torch.Tensor,
        t_logits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Own head: the residual is in logits. Returns (loss, the prefix's logits)."""
        mask, w_res = b["attention_mask"], self.config.w_res
        z = self.c * self.head(states[-1][:, 0])
        prev_logits = (
            self.ensemble.logits[b["index"]].to(self.dev)
            if self.ensemble is not None and self.residual
            else torch.zeros_like(z)
        )
        loss = w_res * losses.residual_loss(
            z[:, None], (t_logits - prev_logits)[:, None], mask[:, :1]
        )
        if not self.residual:
            # A student that fits the whole teacher also imitates its states; a boosting
            # student's states are free to encode whatever predicts the residual.
            loss = loss + w_res * losses.masked_mse(states[-1], teacher_states, mask)
        return loss, prev_logits + z

    def _hidden_residual(
        self,
        states: list[torch.Tensor],
        teacher_states: torch.Tensor,
        prev: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared head: the residual is in hidden states. Returns (loss, the prefix's logits)."""
        config = self.config
        s = self.c * states[-1]
        target = boosting.residual(teacher_states, prev)
        loss = config.w_res * losses.residual_loss(s, target, mask)
        if config.w_cls > 0:
            loss = loss + config.w_cls * losses.masked_mse(s[:, :1], target[:, :1], mask[:, :1])
        return loss, self.head(prev[:, 0] + s[:, 0])


class AverageObjective(Objective):
    """'average': every student fits the teacher; prefix k averages the first k."""

    combine = "mean"
    imitates = True


class BoostObjective(Objective):
    """'boost': student k fits the residual of the first k - 1; no imitation."""

    boosts = True


class StackObjective(BoostObjective):
    """'stack': boosting, and the middle layer imitates the ensemble so far."""

    imitates = True

    def imitation_target(self, idx: list[int], prev: torch.Tensor) -> torch.Tensor:
        """``b_{k-1}``; the first student, with no ensemble yet, the teacher's states."""
        return prev if self.residual else super().imitation_target(idx, prev)


OBJECTIVES: dict[str, type[Objective]] = {
    "average": AverageObjective,
    "boost": BoostObjective,
    "stack": StackObjective,
}
"""The objective of each ``DistillConfig.method``."""
