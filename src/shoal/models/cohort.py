"""The cohort: shared embeddings, N shallow students, boosting weights alpha and the head.

The model that uses the first k students predicts ``head(b_k)`` with
``b_k = sum_{i<=k} alpha_i * s_i(embeddings(x))``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from shoal import problems
from shoal.errors import ConfigError, ModelError
from shoal.models.cohort_folder import (
    CONFIG_NAME,
    META_NAME,
    MODEL_TYPE,
    WEIGHTS_NAME,
    read_cohort,
    read_config,
)
from shoal.models.families import family_of
from shoal.models.fused import FusedStudents
from shoal.models.layer_plan import layer_plan
from shoal.models.layers import (
    ACTIVATIONS,
    Embeddings,
    RelativePositionBias,
    Student,
    activation,
    additive_mask,
)


@dataclass(frozen=True, kw_only=True)
class ShoalConfig:
    """Shape of a cohort; saved as ``config.json``."""

    vocab_size: int
    """Rows of the token-embedding table (the teacher's)."""
    hidden_size: int
    """Width of embeddings and of every student's output (the teacher's)."""
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    """Rows of the segment-embedding table; 0 for families without one (DistilBERT, MPNet)."""
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    family: str = "bert"
    """The teacher's ``model_type`` (``shoal.models.families``)."""
    positions: str = "absolute"
    """'absolute' (0..L-1) or 'padded' (from pad_token_id + 1: RoBERTa, XLM-R, MPNet)."""
    embedding_size: int | None = None
    """Width of the embedding tables when narrower than hidden_size (ELECTRA's projection)."""
    relative_attention_num_buckets: int = 0
    """Buckets of a relative position bias shared by every layer (MPNet); 0: none."""
    hidden_act: str = "gelu"
    """Activation of the students' feed-forward blocks."""
    head_activation: str = "tanh"
    """Between the head's dense layer and its output: 'tanh' (BERT, RoBERTa, MPNet), 'gelu'
    (ELECTRA) or 'relu' (DistilBERT)."""
    num_labels: int = 2
    id2label: dict[str, str] = field(default_factory=dict)
    """Label names by class id (string keys, as in Hugging Face configs)."""
    problem_type: str = "single_label_classification"
    """What the head computes (``shoal.problems``): 'single_label_classification' (softmax),
    'multi_label_classification' (a sigmoid per label) or 'regression' (the raw value), as
    the teacher's config says."""
    thresholds: list[float] | None = None
    """Multi-label only: the probability at which each label is predicted (None: 0.5)."""
    n_students: int = 4
    """Students in the cohort (N)."""
    student_layers: int = 2
    """Transformer layers per student (m)."""
    dropout: float = 0.1
    """Dropout while training; inference never drops."""
    head_per_student: bool = False
    """False: one shared head reads the combined first-token state b_k (boosting in hidden
    space). True: every student has its own head and their logits are combined (boosting in
    logit space)."""
    combine: str = "sum"
    """'sum': b_k = sum alpha_i s_i (boosting); 'mean': the average of the first k students
    (the independently-distilled ensemble ablation)."""
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        if self.n_students < 1:
            raise ConfigError(f"n_students={self.n_students} must be >= 1")
        if self.student_layers < 1:
            raise ConfigError(f"student_layers={self.student_layers} must be >= 1")
        if self.positions not in ("absolute", "padded"):
            raise ConfigError(f"positions={self.positions!r} must be 'absolute' or 'padded'")
        for name in (self.hidden_act, self.head_activation):
            if name not in ACTIVATIONS:
                raise ConfigError(f"activation {name!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.combine not in ("sum", "mean"):
            raise ConfigError(f"combine={self.combine!r} must be 'sum' or 'mean'")
        problems.check(self.problem_type, self.num_labels)
        if self.thresholds is not None and (
            self.problem_type != problems.MULTI or len(self.thresholds) != self.num_labels
        ):
            raise ConfigError(
                f"thresholds are one probability per label of a {problems.MULTI} head; this "
                f"{self.problem_type} head has {self.num_labels} labels and "
                f"{len(self.thresholds)} thresholds"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )


@dataclass
class CohortOutput:
    """What a cohort forward returns.

    Shape:
        logits (B, num_labels); hidden (B, L, H) combined states b_k, or (B, H) first token
        only on the fused path; student_states: per student, its per-layer (B, L, H) states
        (one-by-one path with ``return_students``).
    """

    logits: torch.Tensor
    hidden: torch.Tensor
    student_states: list[list[torch.Tensor]] | None = None


class Head(nn.Module):
    """The first token's classifier: dense + activation + output layer, the shape of BERT's
    pooler and classifier and of the RoBERTa, ELECTRA, DistilBERT and MPNet heads."""

    def __init__(self, hidden: int, num_labels: int, dropout: float, act: str = "tanh") -> None:
        super().__init__()
        self.pooler = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_labels)
        self.act_fn = activation(act)

    def forward(self, first_token: torch.Tensor) -> torch.Tensor:
        """(B, H) -> (B, num_labels)."""
        return self.classifier(self.dropout(self.act_fn(self.pooler(first_token))))


class ShoalModel(nn.Module):
    """N shallow students over shared embeddings, summed with weights alpha, then the head."""

    def __init__(self, config: ShoalConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.embeddings = Embeddings(
            c.vocab_size,
            c.hidden_size,
            c.max_position_embeddings,
            c.type_vocab_size,
            c.layer_norm_eps,
            c.pad_token_id,
            c.dropout,
            positions=c.positions,
            embedding_size=c.embedding_size,
        )
        self.relative_attention_bias = (
            RelativePositionBias(c.relative_attention_num_buckets, c.num_attention_heads)
            if c.relative_attention_num_buckets
            else None
        )
        self.students = nn.ModuleList(
            Student(
                c.student_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.intermediate_size,
                c.layer_norm_eps,
                c.dropout,
                c.hidden_act,
            )
            for _ in range(c.n_students)
        )
        if c.head_per_student:
            self.heads = nn.ModuleList(
                Head(c.hidden_size, c.num_labels, c.dropout, c.head_activation)
                for _ in range(c.n_students)
            )
        else:
            self.head = Head(c.hidden_size, c.num_labels, c.dropout, c.head_activation)
        self.register_buffer("alpha", torch.ones(c.n_students))
        self.meta: dict[str, Any] = {}
        self._fused: FusedStudents | None = None
        self._fused_key: tuple | None = None

    @property
    def n_students(self) -> int:
        return self.config.n_students

    def check_k(self, k: int | None) -> int:
        """Resolve ``None`` to N and refuse k outside 1..N."""
        if k is None:
            return self.n_students
        if not isinstance(k, int) or not 1 <= k <= self.n_students:
            raise ConfigError(
                f"k={k} is outside 1..{self.n_students}: this cohort has {self.n_students} students"
            )
        return k

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, L, H) and the additive mask: (B, 1, 1, L), or (B, heads, L, L) with
        the relative position bias added (MPNet), what every student layer adds to its scores."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids, attention_mask)
        mask = additive_mask(attention_mask, x.dtype)
        if self.relative_attention_bias is not None:
            mask = mask + self.relative_attention_bias(input_ids.shape[1]).to(x.dtype)
        return x, mask

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        k: int | None = None,
        *,
        fused: bool = False,
        return_students: bool = False,
    ) -> CohortOutput:
        """Classify with the first k students (all when k is None).

        ``fused`` runs the students as one batched computation (inference only); the default
        one-by-one path is the reference and the training path.
        """
        k = self.check_k(k)
        x, mask = self.embed(input_ids, attention_mask, token_type_ids)
        if fused:
            states = self.fused_students()(x, mask, k, cls_only=True)  # (k, B, H)
            total = self.students_sum(states, list(range(k)), k)
            cls = torch.einsum("k,kbh->bh", self.weights(k).to(states.dtype), states)
            return CohortOutput(self.finish(total), cls)
        per_student = [self.students[i](x, mask) for i in range(k)]
        w = self.weights(k)
        hidden = sum(w[i] * s[-1] for i, s in enumerate(per_student))
        assert isinstance(hidden, torch.Tensor)
        if self.config.head_per_student:
            logits = sum(w[i] * self.heads[i](s[-1][:, 0]) for i, s in enumerate(per_student))
        else:
            logits = self.head(hidden[:, 0])
        assert isinstance(logits, torch.Tensor)
        return CohortOutput(logits, hidden, per_student if return_students else None)

    def students_sum(self, states: torch.Tensor, ids: list[int], k: int) -> torch.Tensor:
        """The weighted contribution of some of the first k students.

        Contributions of disjoint groups add up, so workers holding different students can
        each return one and the caller sums them before :meth:`finish`.

        Shape:
            states: (len(ids), B, H) first-token states of students ``ids``. Returns (B, H)
            with a shared head, (B, num_labels) with a head per student.
        """
        w = self.weights(k)[ids].to(states.dtype)
        if not self.config.head_per_student:
            return torch.einsum("k,kbh->bh", w, states)
        logits = self.student_logits(states, ids)
        return torch.einsum("k,kbc->bc", w.to(logits.dtype), logits)

    def student_logits(self, states: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """Each student's own head on its first-token state: (j, B, H) -> (j, B, C)."""
        return torch.stack(
            [
                self.heads[i](states[j].to(self.heads[i].pooler.weight.dtype))
                for j, i in enumerate(ids)
            ]
        )

    def finish(self, total: torch.Tensor) -> torch.Tensor:
        """Summed contributions -> logits (the shared head, or nothing to do)."""
        if self.config.head_per_student:
            return total.float()
        return self.head(total.to(self.head.pooler.weight.dtype))

    def weights(self, k: int) -> torch.Tensor:
        """The (k,) weights that combine the first k students' outputs."""
        a = self.alpha[:k]
        return a / k if self.config.combine == "mean" else a

    @torch.inference_mode()
    def prefix_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of every prefix k = 1..N from one fused pass.

        Shape:
            returns (N, B, num_labels).
        """
        x, mask = self.embed(input_ids, attention_mask, token_type_ids)
        states = self.fused_students()(x, mask, self.n_students, cls_only=True)  # (N, B, H)
        out = []
        for k in range(1, self.n_students + 1):
            out.append(self.finish(self.students_sum(states[:k], list(range(k)), k)))
        return torch.stack(out)

    def fused_students(self, dtype: torch.dtype | None = None) -> FusedStudents:
        """The stacked copy of the students, rebuilt whenever their weights changed."""
        key = (
            dtype,
            self.alpha.device,
            tuple(p._version for p in self.students.parameters()),
            tuple(id(p) for p in self.students.parameters()),
        )
        if self._fused is None or self._fused_key != key:
            self._fused = FusedStudents(list(self.students), dtype).to(self.alpha.device)
            self._fused_key = key
        return self._fused

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, folder: str | Path, tokenizer=None) -> None:
        """Write config.json, model.safetensors, shoal_meta.json and the tokenizer."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        (out / META_NAME).write_text(json.dumps(self.meta, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(out)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> ShoalModel:
        """Load a folder written by :meth:`save_pretrained`.

        ``cohort_folder.read_cohort`` checks both JSON files and the weights' shapes (from the
        safetensors header) first, so a damaged folder fails in one line before any tensor is
        allocated.
        """
        path = Path(folder)
        read_config(path)  # a cohort at all? (the 'not a Shoal cohort' message)
        if not (path / WEIGHTS_NAME).is_file():
            raise ModelError(
                f"{path} is not a Shoal cohort: it needs {WEIGHTS_NAME}; create one with "
                "`shoal distill`"
            )
        raw, meta = read_cohort(path)
        try:
            config = ShoalConfig(**raw)
        except TypeError as e:
            raise ModelError(f"{path / CONFIG_NAME} does not describe a cohort: {e}") from None
        model = cls(config)
        try:
            state = load_file(str(path / WEIGHTS_NAME))
        except (OSError, SafetensorError) as e:
            raise ModelError(
                f"cannot load the cohort's weights {path / WEIGHTS_NAME} ({e}); the file is "
                "damaged: copy it again or re-run `shoal distill`"
            ) from None
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelError(
                f"{path / WEIGHTS_NAME} does not match config.json: missing "
                f"{missing[:3]}, unexpected {unexpected[:3]}"
            )
        model.meta = meta
        return model.to(device).eval()

    # ------------------------------------------------------------------ from a teacher

    @classmethod
    def from_teacher(
        cls,
        teacher: nn.Module,
        n_students: int,
        student_layers: int = 2,
        init: str | list[list[int]] = "bottom",
        *,
        head_per_student: bool = False,
    ) -> ShoalModel:
        """Build a cohort whose embeddings, layers and head are copied from a teacher of any
        supported family (``shoal.models.families``).

        Args:
            init: which teacher layers each student copies: 'bottom' (layers 0..m-1 for
                every student), 'spread' (student i copies layers i*m.., wrapping), 'skip'
                (every student copies m evenly spaced layers ending at the last one, e.g.
                2 and 5 of 6), or explicit layers: a list of layer indices per student, or
                text such as '0,5' (every student) or '2,5/0,5' (one list per student).
        """
        tc = teacher.config
        family = family_of(getattr(tc, "model_type", None))
        teacher_layers = family.teacher_layers(teacher)
        plan = layer_plan(init, n_students, student_layers, len(teacher_layers))
        config = ShoalConfig(
            **family.config(tc),
            family=family.model_type,
            positions=family.positions,
            head_activation=family.head_activation,
            num_labels=tc.num_labels,
            id2label={str(i): str(v) for i, v in tc.id2label.items()},
            problem_type=problems.of_config(tc),
            n_students=n_students,
            student_layers=student_layers,
            head_per_student=head_per_student,
        )
        model = cls(config)
        family.copy_embeddings(teacher, model.embeddings)
        if family.extra is not None:
            family.extra(teacher, model)
        for student, layers in zip(model.students, plan):
            for ours, t in zip(student.layers, layers):
                family.copy_layer(teacher_layers[t], ours)
        for head in model.heads if head_per_student else [model.head]:
            family.copy_head(teacher, head)
        model.meta["init_layers"] = plan
        return model
