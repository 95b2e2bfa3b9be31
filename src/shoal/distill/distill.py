"""Stacking distillation with a boosting ensemble: teacher -> cohort of shallow students.

Life of a run: load data and teacher -> run the teacher once over the training set and cache
its final/intermediate hidden states and logits -> for k = 1..N: train student k on the
residual ``T - b_{k-1}`` (its intermediate layer imitating ``b_{k-1}``), compute alpha_k,
update the cached ensemble ``b_k``, evaluate every prefix, checkpoint -> save the cohort.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from shoal.data import Encoded, encode, iterate, load_task, with_dev_split
from shoal.devices import model_device, resolve_device, to_device
from shoal.distill import boosting, losses
from shoal.distill.augment import (
    WEIGHTINGS,
    augment_key,
    augment_with_teacher,
    compose,
    swap_pairs,
)
from shoal.distill.cache import TokenStore
from shoal.distill.evaluate import score
from shoal.distill.trainer import Checkpoint, TrainConfig, train
from shoal.errors import ConfigError, DataError
from shoal.models.cohort import NAMED_PLANS, ShoalModel, layer_plan
from shoal.models.teacher import accepts_token_types, load_teacher
from shoal.provenance import command_line, git_commit

log = logging.getLogger(__name__)
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


@dataclass
class TeacherCache:
    """The teacher's outputs on the training set, computed once."""

    final: TokenStore  # (n_tokens, H) last hidden states
    middle: TokenStore  # (n_tokens, H) hidden states at the students' intermediate depth
    logits: torch.Tensor  # (N, C)


@dataclass
class Ensemble:
    """The running ensemble b_{k} on the training set, kept so no student is rerun."""

    hidden: TokenStore  # (n_tokens, H) sum of alpha_i * s_i
    logits: torch.Tensor  # (N, C) sum of alpha_i * head_i(s_i) (logit space only)


@torch.inference_mode()
def cache_teacher(
    teacher: nn.Module, enc: Encoded, depth: int, pad_id: int, batch_size: int = 128
) -> TeacherCache:
    """Run the teacher once over a split and keep what distillation needs."""
    hidden = teacher.config.hidden_size
    final = TokenStore(enc.lengths(), hidden, torch.float16)
    middle = TokenStore(enc.lengths(), hidden, torch.float16)
    logits = torch.zeros(len(enc), teacher.config.num_labels)
    teacher.eval()
    dev = model_device(teacher)
    takes_types = accepts_token_types(teacher)
    bar = tqdm(total=len(enc), desc="teacher outputs", unit="ex", dynamic_ncols=True)
    for b in iterate(enc, batch_size, shuffle=False, pad_id=pad_id):
        bar.update(len(b["index"]))
        b = to_device(b, dev)
        inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
        if takes_types:
            inputs["token_type_ids"] = b["token_type_ids"]
        out = teacher(**inputs, output_hidden_states=True)
        idx = b["index"].tolist()
        final.set_(idx, out.hidden_states[-1])
        middle.set_(idx, out.hidden_states[depth])
        logits[b["index"]] = out.logits.float().cpu()
    bar.close()
    return TeacherCache(final, middle, logits)


@torch.inference_mode()
def student_outputs(model: ShoalModel, k: int, enc: Encoded, pad_id: int, batch_size: int = 128):
    """Yield (index, mask, s_k) over a split in a fixed order; s_k is (B, L, H) float32.
    ``mask`` and ``s_k`` are on the model's device, ``index`` is a list."""
    model.eval()  # no dropout: these outputs feed alpha and the cached ensemble
    dev = model_device(model)
    for b in iterate(enc, batch_size, shuffle=False, pad_id=pad_id):
        b = to_device(b, dev)
        x, mask = model.embed(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        yield b["index"].tolist(), b["attention_mask"], model.students[k](x, mask)[-1]


@torch.no_grad()
def add_student(
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
def _accumulate(
    model: ShoalModel, k: int, enc: Encoded, ensemble: Ensemble, pad_id: int, alpha: float
) -> None:
    """b_k = b_{k-1} + alpha_k * s_k, in hidden space and (per-student heads) logit space."""
    for idx, _, s in student_outputs(model, k, enc, pad_id):
        ensemble.hidden.add_(idx, s, alpha)
        if model.config.head_per_student:
            ensemble.logits[idx] += alpha * model.student_logits(s[None, :, 0], [k])[0].cpu()


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
                logits = self.model.finish(self.model.partial(states[:k], list(range(k)), k))
                logits = logits.cpu()
                for name, value in score(logits, data.labels).items():
                    rows[k - 1][f"{split}_{name}"] = value
        return rows


def distill(config: DistillConfig, *, stop_after: int | None = None) -> dict:
    """Run a distillation; resumes from ``out/checkpoints`` when a previous run stopped.

    A run asked for more students than ``out`` holds extends that cohort: its students are
    kept and the new ones trained (students are seeded by position, so the result is the
    cohort a single run of the larger size gives). Any other setting must match.

    Args:
        stop_after: train at most this many new students, then return (used to test resume).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    out = Path(config.out)
    _check_same_run(out, config)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "distill_config.json").write_text(json.dumps(asdict(config), indent=2))
    task = with_dev_split(load_task(config.data))
    if "train" not in task.splits:
        raise DataError(f"{config.data} has no train split; distillation needs train.tsv")
    if config.compose and task.is_pair:
        raise DataError(
            f"compose joins single texts, but {config.data} has sentence pairs; "
            "drop --compose (use --augment or --swap-pairs for pair tasks)"
        )
    teacher, tok = load_teacher(config.teacher, task.num_labels)
    # layers the teacher lacks are refused now, not after its outputs are cached
    plan = layer_plan(
        config.init, config.n_students, config.student_layers, teacher.config.num_hidden_layers
    )
    pad = tok.pad_token_id or 0
    train_set = task.splits["train"].subset(config.max_train or len(task.splits["train"]))
    if config.swap_pairs:
        if not task.is_pair:
            raise DataError(
                f"swap_pairs reverses sentence pairs, but {config.data} has single texts; "
                "drop --swap-pairs (it is for pair tasks such as MRPC)"
            )
        train_set = swap_pairs(train_set)
    n_labelled = len(train_set)
    if config.augment:
        train_set = augment_with_teacher(
            train_set, tok, teacher, config.augment, config.augment_p,
            config.augment_candidates, config.train.seed, config.augment_by,
        )  # fmt: skip
        tqdm.write(
            f"augmented {n_labelled:,} training examples to {len(train_set):,} "
            f"(--augment {config.augment}, by {config.augment_by})"
        )
    if config.compose:
        n_before = len(train_set)
        train_set = compose(
            train_set, config.compose * n_labelled, config.train.seed, pool=n_labelled
        )
        tqdm.write(
            f"joined {len(train_set) - n_before:,} pairs of training examples into new texts "
            f"(--compose {config.compose}): {len(train_set):,} in all"
        )
    enc = {"train": encode(tok, train_set, config.max_length)}
    for s in ("dev", "test"):
        if s in task.splits:
            d = task.splits[s]
            enc[s] = encode(tok, d.subset(config.max_eval or len(d)), config.max_length)
    m, n_t = config.student_layers, teacher.config.num_hidden_layers
    depth = max(1, round(n_t * (m - 1) / m)) if m > 1 else n_t
    teacher.to(device)
    t0 = time.perf_counter()
    cache = _teacher_cache(
        Path(config.cache_dir) if config.cache_dir else out / "cache",
        teacher,
        enc["train"],
        depth,
        pad,
        augment=augment_key(
            config.augment,
            config.augment_p,
            config.augment_candidates,
            config.train.seed,
            config.augment_by,
        )
        if config.augment
        else None,
        swapped=config.swap_pairs,
        composed=[config.compose, config.train.seed] if config.compose else None,
    )
    teacher_seconds = time.perf_counter() - t0

    torch.manual_seed(config.train.seed)
    model = ShoalModel.from_teacher(
        teacher, config.n_students, m, plan, head_per_student=config.space == "logits"
    )
    changes = {"combine": "mean"} if config.method == "average" else {}
    if config.dropout != model.config.dropout:
        changes["dropout"] = config.dropout
    if changes:
        model = _with_config(model, **changes)
    model.to(device)
    del teacher
    shared = [*model.embeddings.parameters()]
    shared += [] if config.space == "logits" else [*model.head.parameters()]
    for p in shared:
        p.requires_grad_(False)  # shared by all students: frozen so cached outputs stay valid
    # Averaged students never read the running ensemble: no (n_tokens, H) store for them.
    ensemble = (
        None
        if config.method == "average"
        else Ensemble(
            TokenStore(enc["train"].lengths(), model.config.hidden_size),
            torch.zeros(len(enc["train"]), model.config.num_labels),
        )
    )
    state = _resume(out, model, enc["train"], ensemble, pad)
    table: list[dict] = state["table"]
    seconds: list[float] = state["seconds"]
    evaluator = PrefixEvaluator(model, enc, pad)
    for k in range(state["done"]):
        evaluator.add(k)
    for k in range(state["done"], config.n_students):
        if stop_after is not None and k - state["done"] >= stop_after:
            return {"stopped_after": k, "table": table}
        t1 = time.perf_counter()
        _train_student(model, k, enc["train"], cache, ensemble, pad, config, out)
        alpha = add_student(model, k, enc["train"], cache, ensemble, pad, config)
        seconds.append(time.perf_counter() - t1)
        evaluator.add(k)
        table = evaluator.table()
        log.info("student %d: alpha %.4f, prefix table %s", k + 1, alpha, table[-1])
        _checkpoint(out, model, table, seconds, done=k + 1)
        if config.min_gain is not None and k > 0 and "dev_accuracy" in table[k]:
            gain = table[k]["dev_accuracy"] - table[k - 1]["dev_accuracy"]
            if gain < config.min_gain:
                log.info("student %d gains %.4f < min_gain; keeping %d students", k + 1, gain, k)
                model, table = _truncate(model, k).to(device), table[:k]
                break
    joint_seconds = 0.0
    if config.joint_epochs > 0 and not state.get("joint_done"):
        t1 = time.perf_counter()
        _train_jointly(model, enc["train"], cache, pad, config, out)
        joint_seconds = time.perf_counter() - t1
        evaluator = PrefixEvaluator(model, enc, pad)
        for k in range(model.n_students):
            evaluator.add(k)
        table = evaluator.table()
        log.info("after joint training: prefix table %s", table)
        _checkpoint(
            out,
            model,
            table,
            seconds,
            done=model.n_students,
            joint_done=True,
            joint_seconds=joint_seconds,
        )
    joint_seconds = state.get("joint_seconds", joint_seconds)
    model.meta.update(
        {
            "prefix_accuracy": table,
            "command": command_line(),
            "commit": git_commit(),
            "teacher": config.teacher,
            "data": config.data,
            "method": config.method,
            "label_names": task.label_names,
            "max_length": config.max_length,
            "train_seconds": {
                "teacher_cache": round(teacher_seconds, 1),
                "students": [round(s, 1) for s in seconds],
                "joint": round(joint_seconds, 1),
                "total": round(teacher_seconds + sum(seconds) + joint_seconds, 1),
            },
        }
    )
    model.cpu().save_pretrained(out, tok)
    return {"out": str(out), **model.meta}


def _teacher_cache(
    folder: Path,
    teacher,
    enc: Encoded,
    depth: int,
    pad: int,
    augment: list | None = None,
    swapped: bool = False,
    composed: list | None = None,
) -> TeacherCache:
    """Load the cached teacher outputs, or run the teacher once and save them."""
    key = {
        "n": len(enc),
        "tokens": sum(enc.lengths()),
        "depth": depth,
        "teacher": str(teacher.name_or_path),
    }
    if augment:
        key["augment"] = augment
    if swapped:
        key["swap_pairs"] = True
    if composed:
        key["compose"] = composed
    folder = folder / f"depth{depth}"
    meta = folder / "teacher.json"
    if meta.is_file() and json.loads(meta.read_text()) == key:
        return TeacherCache(
            TokenStore.load(folder, "final"),
            TokenStore.load(folder, "middle"),
            torch.load(folder / "logits.pt"),
        )
    cache = cache_teacher(teacher, enc, depth, pad)
    folder.mkdir(parents=True, exist_ok=True)
    cache.final.save(folder, "final")
    cache.middle.save(folder, "middle")
    torch.save(cache.logits, folder / "logits.pt")
    meta.write_text(json.dumps(key))
    return cache


def _checkpoint(
    out: Path, model: ShoalModel, table: list[dict], seconds: list[float], **progress
) -> None:
    """Print the prefix table and save what ``_resume`` needs to continue from here."""
    _print_table(table)
    torch.save(
        {"state": model.state_dict(), "table": table, "seconds": seconds, **progress},
        out / "checkpoints" / "latest.pt",
    )


# Settings that may differ when a run resumes or extends one in the same folder (``out``:
# the folder may have been moved).
_RESUMABLE = frozenset(
    {"n_students", "min_gain", "threads", "device", "cache_dir", "out", "train.checkpoint_every"}
)


def _check_same_run(out: Path, config: DistillConfig) -> None:
    """Refuse to resume a checkpoint in ``out`` that was trained with other settings."""
    saved_cfg = out / "distill_config.json"
    if not (out / "checkpoints" / "latest.pt").is_file() or not saved_cfg.is_file():
        return

    def flat(d: dict) -> dict:  # nested sections (train) as 'train.lr'
        top = {k: v for k, v in d.items() if not isinstance(v, dict)}
        return top | {
            f"{k}.{kk}": vv for k, v in d.items() if isinstance(v, dict) for kk, vv in v.items()
        }

    before = flat(json.loads(saved_cfg.read_text()))
    now = flat(asdict(config))
    defaults = flat(asdict(DistillConfig(teacher=config.teacher)))
    differ = sorted(
        key for key in now if key not in _RESUMABLE and before.get(key, defaults[key]) != now[key]
    )
    if differ:
        shown = ", ".join(f"{k}: {before.get(k, defaults[k])!r} -> {now[k]!r}" for k in differ)
        raise ConfigError(
            f"{out} holds a checkpoint trained with other settings ({shown}); resume it "
            "with the same settings, or use a new --out"
        )


def _resume(
    out: Path, model: ShoalModel, enc: Encoded, ensemble: Ensemble | None, pad: int
) -> dict:
    """Restore finished students and rebuild the ensemble cache from them (boosting only:
    ``ensemble`` is None for averaged students, which never read it). A checkpoint of a
    smaller cohort fills the first students of ``model``; the rest keep their initial
    weights and are trained next."""
    ckpt = out / "checkpoints" / "latest.pt"
    if not ckpt.is_file():
        return {"done": 0, "table": [], "seconds": []}
    saved = torch.load(ckpt, map_location="cpu")
    done = saved["done"]
    if done > model.n_students:
        raise ConfigError(
            f"{out} already holds {done} trained students; ask for at least {done} "
            f"(not {model.n_students}) to resume or extend it, or use a new --out"
        )
    state = model.state_dict()
    for key, value in saved["state"].items():
        if key == "alpha":
            state[key][:done] = value[:done]
        elif key in state and state[key].shape == value.shape:
            state[key] = value
    model.load_state_dict(state)
    for k in range(saved["done"] if ensemble is not None else 0):
        _accumulate(model, k, enc, ensemble, pad, float(model.alpha[k]))
    log.info("resumed after %d students", saved["done"])
    return saved


def _train_student(
    model: ShoalModel,
    k: int,
    enc: Encoded,
    cache: TeacherCache,
    ensemble: Ensemble | None,
    pad: int,
    config: DistillConfig,
    out: Path,
) -> None:
    """Train student k against the residual and the stacking target; others stay frozen.
    ``ensemble`` is None for averaged students (they fit the teacher itself). The training
    state is checkpointed every ``config.train.checkpoint_every`` steps under
    ``out/checkpoints``, and a run of the same command continues from there."""
    student = model.students[k]
    hidden = model.config.hidden_size
    dev = model_device(model)
    proj = nn.Linear(hidden, hidden)  # maps the intermediate state onto b_{k-1}; discarded
    with torch.no_grad():
        proj.weight.copy_(torch.eye(hidden))
        proj.bias.zero_()
    proj.to(dev)
    boost = ensemble is not None
    stack = config.method != "boost" and config.w_stack > 0 and config.student_layers > 1
    logit_space = config.space == "logits"
    head = model.heads[k] if logit_space else model.head
    model.embeddings.eval()
    head.eval()
    torch.manual_seed(config.train.seed + k)
    # Post-LN students emit unit-scale states while later residuals are small: a learned
    # scalar c lets student k fit r_k as c * s_k (alpha_k replaces c once it is trained).
    c = nn.Parameter(torch.tensor(_initial_scale(model, k, enc, cache, ensemble, pad), device=dev))

    def step(b: dict[str, torch.Tensor]) -> torch.Tensor:
        b = to_device(b, dev)
        idx, mask = b["index"].tolist(), b["attention_mask"]
        with torch.no_grad():
            x, amask = model.embed(b["input_ids"], mask, b["token_type_ids"])
        states = student(x, amask)
        teacher_states = cache.final.gather(idx, device=dev)
        t_logits = cache.logits[b["index"]].to(dev)
        prev = (
            ensemble.hidden.gather(idx, device=dev)
            if ensemble is not None and k > 0
            else torch.zeros_like(teacher_states)
        )
        if logit_space:  # own head: the residual is in logits
            z = c * head(states[-1][:, 0])
            prev_logits = (
                ensemble.logits[b["index"]].to(dev)
                if ensemble is not None and k > 0
                else torch.zeros_like(z)
            )
            loss = config.w_res * losses.residual_loss(
                z[:, None], (t_logits - prev_logits)[:, None], mask[:, :1]
            )
            if not (boost and k > 0):
                # A student that fits the whole teacher also imitates its states; a boosting
                # student's states are free to encode whatever predicts the residual.
                loss = loss + config.w_res * losses.masked_mse(states[-1], teacher_states, mask)
            logits = prev_logits + z
        else:
            s = c * states[-1]
            target = boosting.residual(teacher_states, prev)
            loss = config.w_res * losses.residual_loss(s, target, mask)
            if config.w_cls > 0:
                loss = loss + config.w_cls * losses.masked_mse(s[:, :1], target[:, :1], mask[:, :1])
            logits = head(prev[:, 0] + s[:, 0])
        if stack:
            imitate = prev if boost and k > 0 else cache.middle.gather(idx, device=dev)
            loss = loss + config.w_stack * losses.stacking_loss(proj(states[-2]), imitate, mask)
        if config.w_kd > 0 or config.w_ce > 0:
            if config.w_kd > 0:
                loss = loss + config.w_kd * losses.kd_loss(logits, t_logits, config.temperature)
            if config.w_ce > 0:
                loss = loss + config.w_ce * losses.label_loss(logits, b["labels"])
        return loss

    named = [(f"student.{n}", p) for n, p in student.named_parameters()]
    named += [(f"proj.{n}", p) for n, p in proj.named_parameters()] if stack else []
    named += [("scale", c)] if boost else []
    named += [(f"head.{n}", p) for n, p in head.named_parameters()] if logit_space else []
    train(
        named,
        step,
        _shuffled(enc, config, pad, 1000 * k),
        config.train,
        set_train=student.train,
        desc=f"student {k + 1}/{config.n_students}",
        checkpoint=_step_checkpoint(out, f"student-{k + 1}", config, len(enc)),
        resume=True,
    )


def _step_checkpoint(out: Path, name: str, config: DistillConfig, examples: int) -> Checkpoint:
    """The mid-training checkpoint of one student (or of the joint stage)."""
    settings = asdict(config)
    for key in ("n_students", "threads", "device", "out", "cache_dir", "min_gain"):
        settings.pop(key, None)
    settings["train"].pop("checkpoint_every")
    return Checkpoint(out / "checkpoints" / f"{name}.pt", {**settings, "examples": examples})


def _shuffled(enc: Encoded, config: DistillConfig, pad: int, offset: int):
    """``batches(epoch)`` for the trainer: a fresh seeded shuffle per epoch."""
    size, seed = config.train.batch_size, config.train.seed + offset
    return lambda e: list(iterate(enc, size, shuffle=True, seed=seed + e, pad_id=pad))


def _train_jointly(
    model: ShoalModel,
    enc: Encoded,
    cache: TeacherCache,
    pad: int,
    config: DistillConfig,
    out: Path,
) -> None:
    """Train every student at once on the mean over k of prefix k's loss.

    Prefix k's loss is the boosting loss of ``b_k`` against the teacher's states (or logits,
    with a head per student) plus the KD / label terms through the head; alphas, embeddings
    and the shared head stay fixed, so each prefix remains the model the server runs.
    """
    n = model.n_students
    logit_space = model.config.head_per_student
    model.embeddings.eval()
    for head in model.heads if logit_space else [model.head]:
        head.eval()  # no dropout on the states the prefixes are scored on
    weights = [model.weights(k).detach().clone() for k in range(1, n + 1)]
    dev = model_device(model)

    def step(b: dict[str, torch.Tensor]) -> torch.Tensor:
        b = to_device(b, dev)
        idx, mask = b["index"].tolist(), b["attention_mask"]
        with torch.no_grad():
            x, amask = model.embed(b["input_ids"], mask, b["token_type_ids"])
        outs = [model.students[i](x, amask)[-1] for i in range(n)]
        t_logits = cache.logits[b["index"]].to(dev)
        teacher_states = None if logit_space else cache.final.gather(idx, device=dev)
        own = [model.heads[i](o[:, 0]) for i, o in enumerate(outs)] if logit_space else []
        loss = torch.zeros((), device=dev)
        for k in range(1, n + 1):
            w = weights[k - 1]
            if logit_space:
                logits = sum(w[i] * own[i] for i in range(k))
                assert isinstance(logits, torch.Tensor)
                term = config.w_res * losses.residual_loss(
                    logits[:, None], t_logits[:, None], mask[:, :1]
                )
            else:
                b_k = sum(w[i] * outs[i] for i in range(k))
                assert isinstance(b_k, torch.Tensor) and teacher_states is not None
                term = config.w_res * losses.residual_loss(b_k, teacher_states, mask)
                logits = model.head(b_k[:, 0])
            if config.w_kd > 0:
                term = term + config.w_kd * losses.kd_loss(logits, t_logits, config.temperature)
            if config.w_ce > 0:
                term = term + config.w_ce * losses.label_loss(logits, b["labels"])
            loss = loss + term / n
        return loss

    named = [(f"students.{n_}", p) for n_, p in model.students.named_parameters()]
    if logit_space:
        named += [(f"heads.{n_}", p) for n_, p in model.heads.named_parameters()]
    train(
        named,
        step,
        _shuffled(enc, config, pad, 7919),
        replace(config.train, epochs=config.joint_epochs, lr=config.joint_lr or config.train.lr),
        set_train=model.students.train,
        desc="joint",
        checkpoint=_step_checkpoint(out, "joint", config, len(enc)),
        resume=True,
    )


@torch.inference_mode()
def _initial_scale(
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


def _with_config(model: ShoalModel, state: dict | None = None, **changes) -> ShoalModel:
    """A copy of the model with some config fields changed, loading ``state`` (default: the
    model's own weights)."""
    new = ShoalModel(replace(model.config, **changes))
    new.load_state_dict(model.state_dict() if state is None else state)
    new.meta = dict(model.meta)
    return new


def _truncate(model: ShoalModel, k: int) -> ShoalModel:
    """Keep the first k students."""
    state = {
        n: v
        for n, v in model.state_dict().items()
        if not n.startswith(("students.", "heads.")) or int(n.split(".")[1]) < k
    }
    state["alpha"] = model.alpha[:k].clone()
    return _with_config(model, state, n_students=k)


def _print_table(table: list[dict]) -> None:
    keys = [c for c in ("dev_accuracy", "test_accuracy", "test_f1") if c in table[0]]
    tqdm.write("  k  " + "  ".join(f"{c:>14}" for c in keys))
    for row in table:
        tqdm.write(f"{row['k']:>3}  " + "  ".join(f"{100 * row[c]:>14.2f}" for c in keys))
