"""Request text to token ids: the cohort's tokenizer, with the server's length limits.

Truncation (on by default, either side) or refusal of inputs longer than ``max_length`` tokens,
a character limit checked before the tokenizer runs, and blank-text refusal. The result,
``TokenizedInput``, is what the engine queues: plain lists, no torch.
"""

from __future__ import annotations

import asyncio
import copy
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from shoal.serve.errors import InputError, InputTooLong


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
    (its truncation settings are mutable state), so long texts never stall the loop.
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
        return await asyncio.get_running_loop().run_in_executor(
            self._thread,
            self._encode_all,
            self._thread_tokenizer,
            inputs,
            truncate,
            direction,
        )

    def _encode_all(
        self,
        tok: Any,
        inputs: Sequence[tuple[str, str | None]],
        truncate: bool | None,
        direction: Literal["left", "right"],
    ) -> list[TokenizedInput]:
        return [self._encode(tok, t, p, i, truncate, direction) for i, (t, p) in enumerate(inputs)]

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
        out = tok(text, pair, truncation=False, return_attention_mask=False)
        truncated = len(out["input_ids"]) > self.max_length
        if truncated:
            if not (self.truncate if truncate is None else truncate):
                raise InputTooLong(
                    f"{where} has {len(out['input_ids'])} tokens, above max_length="
                    f"{self.max_length}; shorten it or send truncate=true"
                )
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


def is_blank(text: str) -> bool:
    """True when the text shows nothing: only whitespace, control or format characters (NUL,
    zero-width spaces, joiners, byte-order marks)."""
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in text)
