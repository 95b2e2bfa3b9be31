"""Accuracy of every prefix k of the cohort on dev and test, each student run once."""

from __future__ import annotations

import dataclasses

import torch
from tqdm.auto import tqdm

from shoal.data import Encoded
from shoal.devices import model_device
from shoal.distill.ensemble import student_outputs
from shoal.distill.evaluate import score
from shoal.models.cohort import ShoalModel
from shoal.problems import MULTI, PRIMARY, disagreement, fit_thresholds, predict


class PrefixEvaluator:
    """Scores every prefix k = 1..K on dev/test, running each student over them only once.

    The first-token state of every finished student is kept per split (n x H each), so adding
    student k costs one 2-layer pass instead of a whole-cohort pass per prefix.
    """

    def __init__(self, model: ShoalModel, enc: dict[str, Encoded], pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        self.problem_type = model.config.problem_type
        self.metric = PRIMARY[self.problem_type]
        """The metric ``dev_score`` returns: accuracy, micro-F1 or Pearson's r."""
        self.enc = {s: enc[s] for s in ("dev", "test") if s in enc}
        self.states: dict[str, list[torch.Tensor]] = {s: [] for s in self.enc}

    @torch.inference_mode()
    def add(self, k: int) -> None:
        """Run student k over the evaluation splits and keep its first-token states."""
        for split in self.enc:
            self.states[split].append(self._first_tokens(k, split))

    def _first_tokens(self, k: int, split: str) -> torch.Tensor:
        data = self.enc[split]
        first = torch.zeros(len(data), self.model.config.hidden_size)
        for idx, _, s in student_outputs(self.model, k, data, self.pad_id, batch_size=256):
            first[idx] = s[:, 0].cpu()
        return first

    @torch.inference_mode()
    def dev_score(self, k: int) -> float:
        """Dev score of prefix k (``metric``) with student k as it is now (the students before
        it as added); what a student's training selects its weights by."""
        if "dev" not in self.enc:
            raise ValueError("dev_score needs a dev split")
        dev = model_device(self.model)
        states = torch.stack([*self.states["dev"][:k], self._first_tokens(k, "dev")]).to(dev)
        logits = self.model.finish(self.model.students_sum(states, list(range(k + 1)), k + 1))
        return self._score(logits, "dev")[self.metric]

    def _score(self, logits: torch.Tensor, split: str) -> dict[str, float]:
        c = self.model.config
        return score(logits.cpu(), self.enc[split].labels, self.problem_type, c.thresholds)

    @torch.inference_mode()
    def table(self) -> list[dict]:
        """The scores (``shoal.problems.metrics``) of every prefix of the students added so
        far, as ``{split}_{metric}``. A multi-label cohort's thresholds are fitted first, on
        dev, to the whole cohort so far (``shoal.problems.fit_thresholds``), and kept in its
        config: every prefix and split is scored with them, as the server predicts."""
        self.model.eval()
        upto = min(len(v) for v in self.states.values()) if self.states else 0
        rows = [{"k": k} for k in range(1, upto + 1)]
        dev = model_device(self.model)
        if self.problem_type == MULTI and "dev" in self.enc and upto:
            states = torch.stack(self.states["dev"][:upto]).to(dev)
            logits = self.model.finish(self.model.students_sum(states, list(range(upto)), upto))
            fitted = fit_thresholds(logits.float().cpu().numpy(), self.enc["dev"].labels)
            self.model.config = dataclasses.replace(self.model.config, thresholds=fitted)
        for split in self.enc:
            states = torch.stack(self.states[split][:upto]).to(dev)  # (K, n, H)
            for k in range(1, upto + 1):
                logits = self.model.finish(self.model.students_sum(states[:k], list(range(k)), k))
                for name, value in self._score(logits, split).items():
                    rows[k - 1][f"{split}_{name}"] = value
                if split == "dev":
                    rows[k - 1]["dev_disagreement"] = self._disagreement(states, k)
        return rows

    def _disagreement(self, states: torch.Tensor, k: int) -> float | None:
        """The fraction of dev examples on which student k, alone, predicts another label (or
        label set) than prefix k - 1 (0 for the first student): what averaging it in can
        change. None for boosted cohorts, whose later students fit residuals and predict
        nothing alone, and for regression."""
        m = self.model
        if m.config.combine != "mean" or self.problem_type == "regression":
            return None
        if k == 1:
            return 0.0
        alone = m.finish(m.alpha[k - 1].to(states.dtype) * states[k - 1])
        before = m.finish(m.students_sum(states[: k - 1], list(range(k - 1)), k - 1))
        t, c = self.problem_type, m.config.thresholds
        return disagreement(
            predict(alone.float().cpu().numpy(), t, c),
            predict(before.float().cpu().numpy(), t, c),
            t,
        )


def print_table(table: list[dict], metric: str = "accuracy") -> None:
    keys = [c for c in (f"dev_{metric}", f"test_{metric}", "test_f1") if c in table[0]]
    tqdm.write("  k  " + "  ".join(f"{c:>14}" for c in keys))
    for row in table:
        tqdm.write(f"{row['k']:>3}  " + "  ".join(f"{100 * row[c]:>14.2f}" for c in keys))
