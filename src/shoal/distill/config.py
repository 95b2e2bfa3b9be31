"""``DistillConfig``: every setting of a distillation run (``shoal distill``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.distill.augment import WEIGHTINGS
from shoal.distill.trainer import TrainConfig
from shoal.errors import ConfigError
from shoal.models.layer_plan import NAMED_PLANS, layer_plan

METHODS = ("stack", "boost", "average")


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """A distillation run."""

    teacher: str
    """Fine-tuned teacher checkpoint (a Hugging Face folder or hub name)."""
    data: str = "default"
    """TSV folder, 'hf:NAME[:CONFIG]' or 'default'."""
    out: str = "runs/cohort"
    """Output folder: the cohort, checkpoints, caches and the resolved config."""
    n_students: int = 4
    """Students in the cohort (N)."""
    student_layers: int = 2
    """Layers per student (m)."""
    init: str = "bottom"
    """Teacher layers each student copies: 'bottom', 'spread', 'skip', or layer numbers such
    as '0,5' (every student) or '2,5/0,5' (one list per student; see
    ``ShoalModel.from_teacher``)."""
    dropout: float = 0.1
    """Dropout in the students while they train (BERT's 0.1; inference never drops)."""
    method: str = "average"
    """'average' (independently distilled students, averaged: the default, because it beat
    docs/method.md's boosting in the SST-2 ablations, see docs/results/distill.md), 'stack'
    (boosting + virtual stacking, docs/method.md) or 'boost' (boosting without stacking)."""
    w_res: float = 1.0
    """Weight of the residual (boosting) MSE."""
    w_stack: float = 1.0
    """Weight of the stacking imitation MSE."""
    w_kd: float = 1.0
    """Weight of the logit distillation through the head."""
    w_ce: float = 0.0
    """Weight of the label cross-entropy."""
    temperature: float = 1.0
    """Softmax temperature of the logit distillation."""
    shrinkage: float = 1.0
    """L / L_0 in Theorem 1's step size; > 1 shrinks each alpha."""
    space: str = "hidden"
    """Where the students are boosted: 'hidden' (summed first-token states read by one shared
    head; docs/method.md's default) or 'logits' (each student has its own head, their logits are
    summed, and each student's states imitate the teacher's)."""
    boost_on: str = "tokens"
    """Rows of the boosting loss that alpha is computed on: 'tokens' (every real token) or
    'cls' (the first token, the only state the head reads)."""
    w_cls: float = 0.0
    """Extra weight of the first token's residual MSE (the state the head reads)."""
    joint_epochs: float = 0.0
    """After boosting, train all students together for this many epochs on the loss of every
    prefix (``mean_k L(b_k)``), so later students learn what earlier ones leave out; 0 keeps
    pure stagewise boosting (docs/method.md)."""
    joint_lr: float | None = None
    """Peak learning rate of the joint phase (default: the students' lr)."""
    min_gain: float | None = None
    """Offline pruning: stop adding students once one gains less dev accuracy (0..1)."""
    augment: int = 0
    """Word-replaced copies of every training example to add (``shoal.distill.augment``,
    TinyBERT-style; the teacher labels them); 0 trains on the labelled set alone."""
    augment_p: float = 0.4
    """Probability that an augmented copy replaces a word."""
    augment_by: str = "uniform"
    """How copies are shared out: 'uniform' (``augment`` per example) or 'length' (the same
    total, in proportion to each example's words; ``shoal.distill.augment``)."""
    augment_candidates: int = 15
    """Nearest neighbours (in the teacher's word embeddings) a replacement is drawn from."""
    compose: int = 0
    """Joined texts to add, per training example: each joins two labelled examples with a
    connective (``shoal.distill.augment.compose``), so phrase-level training sets show the
    teacher whole sentences; single-text tasks only; 0 adds none."""
    swap_pairs: bool = False
    """Also train on every sentence pair in the other order (``shoal.distill.augment.
    swap_pairs``): for symmetric pair tasks such as paraphrase detection (MRPC, QQP), where
    the reversed pair keeps its label. Sentence-pair data only."""
    max_length: int = 128
    """Tokens per example after truncation."""
    max_train: int | None = None
    """Use at most this many training examples (before augmentation)."""
    max_eval: int | None = None
    """Use at most this many dev/test examples."""
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default."""
    device: str = "auto"
    """Where to train: 'auto' (the first GPU when there is one, else the CPU), 'cpu', 'cuda'
    or 'cuda:N'. The teacher cache and the running ensemble stay in host memory."""
    cache_dir: str | None = None
    """Where the teacher's cached outputs live (default OUT/cache); share it between runs
    on the same data so the teacher runs once."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, epochs=1.0))
    """Optimiser and schedule of each student."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r} is unknown; use one of {METHODS}")
        if self.n_students < 1 or self.student_layers < 1:
            raise ConfigError(
                f"n_students={self.n_students} and student_layers="
                f"{self.student_layers} must be >= 1"
            )
        if self.space not in ("hidden", "logits"):
            raise ConfigError(f"space={self.space!r} must be 'hidden' or 'logits'")
        if self.boost_on not in ("tokens", "cls"):
            raise ConfigError(f"boost_on={self.boost_on!r} must be 'tokens' or 'cls'")
        if self.joint_epochs < 0:
            raise ConfigError(f"joint_epochs={self.joint_epochs} must be >= 0 (0 turns it off)")
        if self.augment < 0 or not 0.0 < self.augment_p <= 1.0 or self.augment_candidates < 1:
            raise ConfigError(
                f"augment={self.augment}, augment_p={self.augment_p}, augment_candidates="
                f"{self.augment_candidates}: use augment >= 0, 0 < augment_p <= 1 and "
                "augment_candidates >= 1"
            )
        if self.augment_by not in WEIGHTINGS:
            raise ConfigError(f"augment_by={self.augment_by!r} is unknown; use one of {WEIGHTINGS}")
        if self.compose < 0:
            raise ConfigError(f"compose={self.compose} must be >= 0 (0 adds no joined texts)")
        if (self.augment or self.compose) and self.w_ce:
            raise ConfigError(
                "augmented copies and joined texts have no gold label, so w_ce > 0 cannot be "
                "combined with augment or compose; use w_ce=0 (the teacher's outputs label them)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1); BERT uses 0.1")
        if self.init not in NAMED_PLANS:  # the layers' range is checked once the teacher loads
            layer_plan(self.init, self.n_students, self.student_layers)
        if self.shrinkage < 0.5:
            raise ConfigError(
                f"shrinkage={self.shrinkage} < 0.5 can increase the loss; "
                f"use 1.0 (exact line search) or more"
            )
