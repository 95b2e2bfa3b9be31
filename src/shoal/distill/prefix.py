"""Accuracy of every prefix k of the cohort on dev and test, each student run once."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from shoal.data import Encoded
from shoal.devices import model_device
from shoal.distill.ensemble import student_outputs
from shoal.distill.evaluate import score
from shoal.models.cohort import ShoalModel


class PrefixEvaluator:
    """Scores every prefix k = 1..K on dev/test, running each student over them only once.

    The first-token state of every finished student is kept per split (n x H each), so adding
    student k costs one 2-layer pass instead of a whole-cohort pass per prefix.
    """

    def __init__(self, model: ShoalModel, enc: dict[str, Encoded], pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        self.enc = {s: enc[s] for s in ("dev", "test") if s in enc}
        self.states: dict[str, list[torch.Tensor]] = {s: [] for s in self.enc}

    @torch.inference_mode()
    def add(self, k: int) -> None:
        """Run student k over the evaluation splits and keep its first-token states."""
        for split, data in self.enc.items():
            first = torch.zeros(len(data), self.model.config.hidden_size)
            for idx, _, s in student_outputs(self.model, k, data, self.pad_id, batch_size=256):
                first[idx] = s[:, 0].cpu()
            self.states[split].append(first)

    @torch.inference_mode()
    def table(self) -> list[dict]:
        """Accuracy (and F1) of every prefix of the students added so far."""
        self.model.eval()
        upto = min(len(v) for v in self.states.values()) if self.states else 0
        rows = [{"k": k} for k in range(1, upto + 1)]
        dev = model_device(self.model)
        for split, data in self.enc.items():
            states = torch.stack(self.states[split][:upto]).to(dev)  # (K, n, H)
            for k in range(1, upto + 1):
                logits = self.model.finish(self.model.students_sum(states[:k], list(range(k)), k))
                logits = logits.cpu()
                for name, value in score(logits, data.labels).items():
                    rows[k - 1][f"{split}_{name}"] = value
        return rows


def print_table(table: list[dict]) -> None:
    keys = [c for c in ("dev_accuracy", "test_accuracy", "test_f1") if c in table[0]]
    tqdm.write("  k  " + "  ".join(f"{c:>14}" for c in keys))
    for row in table:
        tqdm.write(f"{row['k']:>3}  " + "  ".join(f"{100 * row[c]:>14.2f}" for c in keys))
