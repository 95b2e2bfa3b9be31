"""Request text to token ids: the cohort's tokenizer, with the server's length limits.

Truncation (on by default, either side) or refusal of inputs longer than ``max_length`` tokens,
a character limit checked before the tokenizer runs, and blank-text refusal. The result,
``TokenizedInput``, is what the engine queues: plain lists, no torch.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import re
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from shoal.serve.errors import InputError, InputTooLong

_SURROGATE = re.compile("[\ud800-\udfff]")
"""A UTF-16 surrogate on its own: JSON's ``\\ud800`` escapes decode to one, but it is not
Unicode text (it has no UTF-8 form, and the tokenizer refuses it)."""


@dataclass(frozen=True)
class TokenizedInput:
    """One tokenised input. Invariant: the two lists have the same length, at least 1."""

    input_ids: list[int]
    token_type_ids: list[int]
    truncated: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


class TextEncoder:
    """Tokenises texts (and pairs) with the cohort's tokenizer, truncating or refusing inputs
    longer than ``max_length`` tokens.

    Small requests are tokenised on the event loop: a hop to a thread costs more than the
    ~0.1 ms of work, and under load it also waits for the GIL. Requests above
    ``inline_chars`` characters go to a dedicated thread with its own copy of the tokenizer
    (its truncation settings are mutable state), so long texts never stall the loop: there a
    fast tokenizer's Rust backend encodes the whole request in one ``encode_batch``, which
    releases the GIL (one text at a time it holds the GIL for the whole text, tens of
    milliseconds for a 20,000-character one).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        *,
        truncate: bool = True,
        max_chars: int = 20_000,
        inline_chars: int = 4096,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncate = truncate
        self.max_chars = max_chars
        self.inline_chars = inline_chars
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self._thread_tokenizer = copy.deepcopy(tokenizer)
        backend = getattr(self._thread_tokenizer, "backend_tokenizer", None)
        self._thread_backend = backend if hasattr(backend, "encode_batch") else None
        self._type_ids = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="shoal-tokenize")

    async def encode_all(
        self,
        inputs: Sequence[tuple[str, str | None]],
        *,
        truncate: bool | None = None,
        direction: Literal["left", "right"] = "right",
    ) -> list[TokenizedInput]:
        """Tokenise a request's ``(text, pair)`` inputs (raises as ``encode`` does)."""
        size = sum(len(t) + len(p or "") for t, p in inputs)
        if size <= self.inline_chars:
            return self._encode_all(self.tokenizer, inputs, truncate, direction)
        if self._thread_backend is not None:
            job = functools.partial(self._encode_batch, inputs, truncate, direction)
        else:
            job = functools.partial(
                self._encode_all, self._thread_tokenizer, inputs, truncate, direction
            )
        return await asyncio.get_running_loop().run_in_executor(self._thread, job)

    def _encode_all(
        self,
        tok: Any,
        inputs: Sequence[tuple[str, str | None]],
        truncate: bool | None,
        direction: Literal["left", "right"],
    ) -> list[TokenizedInput]:
        return [self._encode(tok, t, p, i, truncate, direction) for i, (t, p) in enumerate(inputs)]

    def _encode_batch(
        self,
        inputs: Sequence[tuple[str, str | None]],
        truncate: bool | None,
        direction: Literal["left", "right"],
    ) -> list[TokenizedInput]:
        """``_encode_all`` on the tokenizer thread's Rust backend, a whole request per call:
        the same ids, type ids and truncation as the tokenizer's own call."""
        for i, (text, pair) in enumerate(inputs):
            self._check(f"input {i}", text, pair)
        backend = self._thread_backend
        batch = [text if pair is None else (text, pair) for text, pair in inputs]
        backend.no_truncation()
        backend.no_padding()
        encodings = _encode_in_groups(backend, batch)
        long = [i for i, e in enumerate(encodings) if self._cut(f"input {i}", len(e.ids), truncate)]
        if long:
            backend.enable_truncation(
                self.max_length, strategy="longest_first", direction=direction
            )
            cut = _encode_in_groups(backend, [batch[i] for i in long])
            for i, encoding in zip(long, cut, strict=True):
                encodings[i] = encoding
        return [
            TokenizedInput(
                list(e.ids),
                list(e.type_ids) if self._type_ids else [0] * len(e.ids),
                truncated=i in long,
            )
            for i, e in enumerate(encodings)
        ]

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    def encode(
        self,
        text: str,
        pair: str | None = None,
        *,
        index: int = 0,
        truncate: bool | None = None,
        direction: Literal["left", "right"] = "right",
    ) -> TokenizedInput:
        """Tokenise one input; ``truncate=None`` uses the server default. Event-loop thread
        (or any single thread) only.

        Raises ``InputError`` for empty or oversize text, ``InputTooLong`` when the input needs
        more than ``max_length`` tokens and truncation is off.
        """
        return self._encode(self.tokenizer, text, pair, index, truncate, direction)

    def _encode(
        self,
        tok: Any,
        text: str,
        pair: str | None,
        index: int,
        truncate: bool | None,
        direction: Literal["left", "right"],
    ) -> TokenizedInput:
        where = f"input {index}"
        self._check(where, text, pair)
        out = tok(text, pair, truncation=False, return_attention_mask=False)
        truncated = self._cut(where, len(out["input_ids"]), truncate)
        if truncated:
            side = tok.truncation_side
            tok.truncation_side = direction  # safe: each tokenizer is used by one thread
            try:
                out = tok(
                    text,
                    pair,
                    truncation=True,
                    max_length=self.max_length,
                    return_attention_mask=False,
                )
            finally:
                tok.truncation_side = side
        ids = list(out["input_ids"])
        types = list(out.get("token_type_ids") or [0] * len(ids))
        return TokenizedInput(ids, types, truncated=truncated)

    def tokens(self, text: str, *, add_special_tokens: bool = True) -> list[dict[str, Any]]:
        """TEI's ``/tokenize`` answer for one text, untruncated: each token's id, text, whether
        it is special, and its character offsets (None for a special token). Event-loop thread
        only; raises ``InputError`` as ``encode`` does for blank or oversize text."""
        self._check("input", text, None)
        out = self.tokenizer(
            text,
            add_special_tokens=add_special_tokens,
            truncation=False,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_attention_mask=False,
        )
        pieces = self.tokenizer.convert_ids_to_tokens(out["input_ids"])
        return [
            {
                "id": int(i),
                "text": piece if special else text[start:stop],
                "special": bool(special),
                "start": None if special else int(start),
                "stop": None if special else int(stop),
            }
            for i, piece, special, (start, stop) in zip(
                out["input_ids"],
                pieces,
                out["special_tokens_mask"],
                out["offset_mapping"],
                strict=True,
            )
        ]

    def _cut(self, where: str, n_tokens: int, truncate: bool | None) -> bool:
        """Whether an input of ``n_tokens`` is cut to ``max_length``; raises ``InputTooLong``
        when it is longer and truncation is off (``truncate=None``: the server default)."""
        if n_tokens <= self.max_length:
            return False
        if not (self.truncate if truncate is None else truncate):
            raise InputTooLong(
                f"{where} has {n_tokens} tokens, above max_length={self.max_length}; "
                "shorten it or send truncate=true"
            )
        return True

    def _check(self, where: str, text: str, pair: str | None) -> None:
        """Refuse a blank text or pair, or one over ``max_chars``, before tokenising."""
        for name, t in (("text", text), ("pair", pair)):
            if t is None:
                continue
            if is_blank(t):
                raise InputError(f"{where}: the {name} is empty; send non-empty text")
            if len(t) > self.max_chars:
                raise InputTooLong(
                    f"{where}: the {name} has {len(t)} characters, above the "
                    f"limit of {self.max_chars}; shorten it"
                )
            if not t.isascii() and (lone := _SURROGATE.search(t)) is not None:
                raise InputError(
                    f"{where}: the {name} holds a lone UTF-16 surrogate "
                    f"(\\u{ord(lone.group()):04x}) at character {lone.start()}, which is not "
                    "text; send valid Unicode (a character outside the BMP escaped as one "
                    "\\uXXXX\\uXXXX pair, as json.dumps writes it)"
                )


GROUP_CHARS = 1 << 17
"""Characters handed to the Rust backend in one ``encode_batch``: it copies every text to UTF-8
before it releases the GIL, a few milliseconds for a request of a million characters."""


def _encode_in_groups(backend: Any, batch: list[Any]) -> list[Any]:
    """``backend.encode_batch(batch)`` in groups of about ``GROUP_CHARS`` characters (one
    input at least), so the GIL is never held long for the copies."""
    out: list[Any] = []
    group: list[Any] = []
    size = 0
    for item in batch:
        chars = len(item) if isinstance(item, str) else len(item[0]) + len(item[1])
        if group and size + chars > GROUP_CHARS:
            out += backend.encode_batch(group, add_special_tokens=True)
            group, size = [], 0
        group.append(item)
        size += chars
    if group:
        out += backend.encode_batch(group, add_special_tokens=True)
    return out


def is_blank(text: str) -> bool:
    """True when the text shows nothing: only whitespace, control or format characters (NUL,
    zero-width spaces, joiners, byte-order marks)."""
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in text)
