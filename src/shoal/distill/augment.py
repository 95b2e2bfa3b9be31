"""Training-data augmentation for distillation: word replacement, as in TinyBERT, offline.

A 2-layer student is short of data long before it is short of capacity (``distill.md``), and
the teacher can label any text, so distillation may train on more text than the labelled set.
Each augmented copy of an example replaces every word, with probability ``p``, by one of its
``k`` nearest neighbours in the teacher's own word-embedding table (cosine similarity). That
table stands in for TinyBERT's GloVe and masked-LM candidates and needs nothing beyond the
teacher. Neighbours are often antonyms ("good" -> "bad"): the copies have no gold label, and
distillation reads only the teacher's outputs on them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import replace

import torch

from shoal.types import TextDataset

_WORD = re.compile(r"[a-z]{2,}")
_LETTERS = re.compile(r"[A-Za-z]+")


def _is_word(token: str) -> bool:
    return bool(_WORD.fullmatch(token))


@torch.no_grad()
def word_neighbours(
    vocab: dict[str, int], embeddings: torch.Tensor, words: Iterable[str], k: int = 15
) -> dict[str, list[str]]:
    """The ``k`` nearest whole-word vocabulary entries of each word, by embedding cosine.

    Args:
        vocab: token -> row of ``embeddings`` (a WordPiece vocabulary).
        embeddings: (V, H) input word embeddings of the teacher.
        words: the words to find neighbours for; words that are not a single lowercase
            vocabulary entry of two or more letters get none.
    Returns:
        word -> neighbours, nearest first (the word itself excluded).
    """
    candidates = sorted(t for t in vocab if _is_word(t))
    rows = torch.tensor([vocab[t] for t in candidates])
    table = torch.nn.functional.normalize(embeddings.detach().float()[rows], dim=-1)
    wanted = sorted({w for w in words if _is_word(w) and w in vocab})
    where = {t: i for i, t in enumerate(candidates)}
    out: dict[str, list[str]] = {}
    for start in range(0, len(wanted), 1024):
        chunk = wanted[start : start + 1024]
        sims = table[[where[w] for w in chunk]] @ table.T
        sims[torch.arange(len(chunk)), [where[w] for w in chunk]] = -2.0  # not the word itself
        top = sims.topk(min(k, len(candidates) - 1), dim=-1).indices.tolist()
        out.update({w: [candidates[j] for j in row] for w, row in zip(chunk, top, strict=True)})
    return out


def replace_words(text: str, neighbours: dict[str, list[str]], p: float, rng: random.Random) -> str:
    """``text`` with each known word replaced, with probability ``p``, by a random neighbour.

    Words are runs of letters, so punctuation, numbers and spacing stay as they are; a word
    keeps its capitalisation style (Title or UPPER); words without neighbours are kept.
    """

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        near = neighbours.get(word.lower())
        if not near or rng.random() >= p:
            return word
        new = rng.choice(near)
        return new.title() if word.istitle() else new.upper() if word.isupper() else new

    return _LETTERS.sub(swap, text)


WEIGHTINGS = ("uniform", "length")


def copies_per_example(
    data: TextDataset, copies: int, weighting: str = "uniform", rng: random.Random | None = None
) -> list[int]:
    """How many variants each example gets: ``copies`` each, or in proportion to its words.

    ``'length'`` keeps the total near ``copies * len(data)`` but gives an example
    ``copies * words / mean words`` variants (rounded at random, at most ``4 * copies``), so
    the copies go to long texts. Meant for training sets of short phrases scored on whole
    sentences (SST-2: 9 against 20 words on average); there it measured no gain over uniform
    copies (``docs/results/distill.md``).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r} must be one of {WEIGHTINGS}")
    if weighting == "uniform" or not len(data):
        return [copies] * len(data)
    rng = rng or random.Random(0)
    sources = data.text_pairs if data.text_pairs is not None else [""] * len(data)
    words = [
        max(1, len(_LETTERS.findall(t)) + len(_LETTERS.findall(q)))
        for t, q in zip(data.texts, sources, strict=True)
    ]
    mean = sum(words) / len(words)
    out = []
    for w in words:
        share = copies * w / mean
        n = int(share) + (rng.random() < share - int(share))
        out.append(min(n, 4 * copies))
    return out


def augment(
    data: TextDataset,
    neighbours: dict[str, list[str]],
    copies: int,
    p: float = 0.4,
    seed: int = 0,
    weighting: str = "uniform",
) -> TextDataset:
    """``data`` followed by word-replaced variants of its examples.

    ``copies`` variants of every example with ``weighting='uniform'``; with ``'length'`` the
    same total, shared in proportion to each example's words (:func:`copies_per_example`).
    Variants identical to their source (no word replaced) are dropped. A variant keeps its
    source's label, which is not a gold label: train on the teacher's outputs, not on it.
    Deterministic for a given ``seed``.
    """
    rng = random.Random(seed)
    texts, labels = list(data.texts), list(data.labels)
    sources = data.text_pairs if data.text_pairs is not None else [None] * len(data)
    pairs: list[str | None] = list(sources)
    counts = copies_per_example(data, copies, weighting, rng)
    for text, pair, label, n in zip(data.texts, sources, data.labels, counts, strict=True):
        seen = {(text, pair)}
        for _ in range(n):
            new = replace_words(text, neighbours, p, rng)
            new_pair = None if pair is None else replace_words(pair, neighbours, p, rng)
            if (new, new_pair) in seen:
                continue
            seen.add((new, new_pair))
            texts.append(new)
            labels.append(label)
            pairs.append(new_pair)
    kept = None if data.text_pairs is None else [x or "" for x in pairs]
    return replace(data, texts=texts, labels=labels, text_pairs=kept)


JOINS = (" , ", " and ", " but ", " ; ", " . ")
"""What :func:`compose` puts between its two parts (WordPiece splits punctuation, so the
spaces around it do not change the tokens)."""


def compose(
    data: TextDataset, n: int, seed: int = 0, max_words: int = 60, pool: int | None = None
) -> TextDataset:
    """``data`` followed by ``n`` texts, each two of its first ``pool`` examples joined.

    Word replacement keeps each example's length and structure; a training set of short
    phrases (SST-2: 9 words on average) scored on whole sentences (20) then never shows the
    teacher a sentence that joins two opinions. Each new text is two different examples
    joined by a connective from :data:`JOINS` ("the acting is fine but the plot drags"),
    the first one's closing full stop dropped; a pair of more than ``max_words`` words is
    drawn again, up to 20 times (then the last draw is kept). The new texts keep the first
    part's label, which is not a gold label: train on the teacher's outputs, not on it.
    ``pool`` (default: all) keeps the joins to the labelled examples when ``data`` already
    ends with augmented copies. Single-text tasks only. Deterministic for a given ``seed``;
    duplicates are dropped.
    """
    if data.text_pairs is not None:
        raise ValueError("compose joins single texts; sentence-pair data has text_pairs")
    if n < 0 or max_words < 2:
        raise ValueError(f"n={n} and max_words={max_words} must be >= 0 and >= 2")
    pool = len(data) if pool is None else min(pool, len(data))
    if n and pool < 2:
        raise ValueError(f"compose needs at least 2 examples to join, got {pool}")
    rng = random.Random(seed)
    words = [len(t.split()) for t in data.texts[:pool]]
    texts, labels = list(data.texts), list(data.labels)
    seen = set(texts)
    for _ in range(n):
        for _attempt in range(20):
            i, j = rng.sample(range(pool), 2)
            if words[i] + words[j] <= max_words:
                break
        first = data.texts[i].rstrip()
        first = first[:-1].rstrip() if first.endswith(".") else first
        text = f"{first}{rng.choice(JOINS)}{data.texts[j].strip()}"
        if text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(data.labels[i])
    return replace(data, texts=texts, labels=labels)


def swap_pairs(data: TextDataset) -> TextDataset:
    """``data`` followed by each of its sentence pairs in the other order (second, first).

    Label-preserving where the relation is symmetric (paraphrase, duplicate questions,
    similarity), so a reversed pair keeps its gold label; for asymmetric relations (entailment)
    it is not, and the caller must not ask for it. Doubles a small pair training set without
    changing a word, unlike word replacement, which can turn a paraphrase into a
    non-paraphrase.
    """
    if data.text_pairs is None:
        raise ValueError("swap_pairs needs sentence pairs (text_pairs is None)")
    return replace(
        data,
        texts=data.texts + data.text_pairs,
        labels=data.labels + data.labels,
        text_pairs=data.text_pairs + data.texts,
    )


def corpus_words(data: TextDataset) -> set[str]:
    """Every lowercased word (run of letters) of a split, both sides of pairs."""
    words: set[str] = set()
    for texts in (data.texts, data.text_pairs or []):
        for text in texts:
            words.update(w.lower() for w in _LETTERS.findall(text))
    return words


def augment_with_teacher(
    data: TextDataset,
    tokenizer,
    teacher: torch.nn.Module,
    copies: int,
    p: float = 0.4,
    candidates: int = 15,
    seed: int = 0,
    weighting: str = "uniform",
) -> TextDataset:
    """:func:`augment` with neighbours from the teacher's word-embedding table.

    The same arguments give the same copies, so a distillation and a fine-tuning run that ask
    for the same augmentation train on the same text (and can share the teacher's outputs).
    """
    table = teacher.get_input_embeddings().weight
    near = word_neighbours(tokenizer.get_vocab(), table, corpus_words(data), candidates)
    return augment(data, near, copies, p, seed=seed, weighting=weighting)


def augment_key(
    copies: int, p: float, candidates: int, seed: int, weighting: str = "uniform"
) -> list:
    """What identifies an augmented training set in a teacher-output cache key."""
    return [copies, p, candidates, seed, *([weighting] if weighting != "uniform" else [])]
