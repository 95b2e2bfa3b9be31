"""Bounding what a JSON body costs the event loop: its values counted before it is parsed, and
a large body parsed in slices.

Parsing a body and validating it into pydantic models runs on the event loop, and its cost
grows with the number of JSON values: a body of a few MiB of ``["a"],`` items holds hundreds of
thousands of them and takes about a second to parse and validate, while every other request
waits. A thread does not help: ``json.loads`` and pydantic's validators hold the GIL
throughout, so the loop stalls just as long. A request the API can accept holds few values
(a list and at most two texts per input, a handful of options), so the routes count values
first, stop counting past what such a request can hold, and refuse the body (413) if it has
more. The count costs microseconds per value and skips each string's contents at ``memchr``
speed, so a refused body costs the loop well under a millisecond however large it is.

What is left of a body's cost lies in its long strings: a valid batch of long texts, escaped as
``json.dumps`` sends them, is several MiB, and ``json.loads`` holds the loop for tens of
milliseconds decoding them. ``loads_in_slices`` decodes each long string on its own (with
json's own string scanner), lets the loop run between them once a slice of time is used, and
parses what remains, the body's structure with a short placeholder for each long string, with
``json.loads``: the result and what is refused are those of ``json.loads``.
"""

from __future__ import annotations

import asyncio
import json
import json.decoder
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

# One value's start, after any separators and closing brackets: a string's opening quote
# (group 1), an array or object, a literal (true, false, null, NaN, -Infinity) or a number.
# The possessive ``*+`` keeps a long run of separators from being retried position by position.
_VALUE = re.compile(r'[\s,:\]}]*+(?:(")|[\[{]|-?[A-Za-z]+|[-+.0-9eE]+)')
_VALUE_BYTES = re.compile(_VALUE.pattern.encode())
_BACKSLASH = ord("\\")
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def values_allowed(max_inputs: int) -> int:
    """Most JSON values a body of a request of up to ``max_inputs`` inputs may hold.

    A ``/predict`` batch holds one list and two strings per input (``[text, pair]``), a
    ``/v1/classify`` body two strings per input; the object, its keys and the options add about
    20. The allowance is twice that margin above the 3 values per input.
    """
    return 4 * max_inputs + 64


def count_json_values(body: bytes, stop_after: int) -> int:
    """The JSON values in ``body`` (strings, object keys among them, numbers, literals, arrays
    and objects), counting no further than ``stop_after + 1``.

    Exact for valid JSON. In a body that is not, it counts at least the values ``json.loads``
    builds before it fails, and stops at a character no value starts with (a string left open,
    or bytes that do not decode), where ``json.loads`` fails as well. The body is read as
    ``json.loads`` reads bytes (UTF-8, or UTF-16/32 by their byte patterns).
    """
    try:
        encoding = json.detect_encoding(body)
        if encoding != "utf-8":
            return _count_text(body.decode(encoding, "surrogatepass"), 0, 0, stop_after)
    except UnicodeError:
        return 0
    # UTF-8 is scanned as bytes, not decoded (a quote or backslash byte is never part of a
    # longer character), until a string has a quote right after a backslash: then the scan
    # goes on in the decoded text, where json's own scanner finds the string's end.
    count, pending = _count_bytes(body, stop_after)
    if pending < 0:
        return count
    try:
        text = body.decode("utf-8", "surrogatepass")
    except UnicodeError:
        return count
    if not body.isascii():
        pending = len(body[:pending].decode("utf-8", "surrogatepass"))
    pos = _string_end(text, pending)
    return count if pos < 0 else _count_text(text, pos, count, stop_after)


def _count_bytes(body: bytes, stop_after: int) -> tuple[int, int]:
    """Values counted in ``body``, and -1; or, stopping early, where the contents of a string
    begin whose first quote candidate follows a backslash."""
    pos = count = 0
    while count <= stop_after:
        token = _VALUE_BYTES.match(body, pos)
        if token is None:
            return count, -1
        count += 1
        pos = token.end()
        if token.group(1) is not None:
            close = body.find(b'"', pos)
            if close < 0:
                return count, -1
            if body[close - 1] == _BACKSLASH:
                return count, pos
            pos = close + 1
    return count, -1


def _count_text(text: str, pos: int, count: int, stop_after: int) -> int:
    """``count`` plus the values in ``text`` from ``pos``, counting no further than
    ``stop_after + 1``."""
    while count <= stop_after:
        token = _VALUE.match(text, pos)
        if token is None:
            return count
        count += 1
        pos = token.end()
        if token.group(1) is not None:
            pos = _string_end(text, pos)
            if pos < 0:
                return count
    return count


def _string_end(text: str, start: int) -> int:
    """Index after the closing quote of the string whose contents begin at ``start``; -1 when
    the string does not close (or has an escape ``json.loads`` refuses)."""
    close = text.find('"', start)
    if close < 0:
        return -1
    if text[close - 1] != "\\":  # the common case: no escaped quote in the string
        return close + 1
    try:  # json's own C scanner tells an escaped quote from an escaped backslash
        return _scanstring(text, start)[1]
    except ValueError:
        return -1


SMALL_BODY = 1 << 16
"""Bodies up to this size are parsed in one ``json.loads`` (well under a millisecond)."""

LONG_STRING = 1 << 12
"""Strings of more bytes than this are decoded one at a time, the loop let run between them."""

SLICE_S = 0.002
"""The loop is let run once this much time has gone on the body since it last ran."""


class StringTooLong(ValueError):
    """A string in the body is longer than any string a valid request holds."""


async def loads_in_slices(body: bytes, *, longest_string: int, slice_s: float = SLICE_S) -> Any:
    """``json.loads(body)`` for a UTF-8 body, with the event loop let run between its long
    strings; raises what ``json.loads`` raises, or ``StringTooLong`` for a string of more than
    ``longest_string`` bytes, before decoding it.

    The body's values should have been counted first (``count_json_values``): the walk here
    costs a regex match per value. A body in another encoding, or a small one, is parsed in
    one ``json.loads``.
    """
    if len(body) <= SMALL_BODY or json.detect_encoding(body) != "utf-8":
        return json.loads(body)
    marker = "\ue000shoal-" + secrets.token_hex(8) + "-"
    pieces: list[bytes] = []
    strings: dict[str, str] = {}
    start = pos = 0
    clock = _Slices(slice_s)
    while (token := _VALUE_BYTES.match(body, pos)) is not None:
        pos = token.end()
        if token.group(1) is None:
            continue
        close = await _closing_quote(body, pos, longest_string, clock)
        if close < 0:  # left open: json.loads fails on it below
            break
        if close - pos > LONG_STRING:
            literal = body[pos - 1 : close + 1].decode("utf-8", "surrogatepass")
            value, _ = _scanstring(literal, 1)  # json.JSONDecodeError on a bad escape
            key = f"{marker}{len(strings)}"
            strings[key] = value
            pieces += (body[start : pos - 1], json.dumps(key).encode())
            start = close + 1
            await clock.tick()
        pos = close + 1
    if not strings:
        return json.loads(body)
    pieces.append(body[start:])
    return _restore(json.loads(b"".join(pieces)), strings)


class _Slices:
    """Lets the event loop run once ``slice_s`` has gone since it last ran."""

    def __init__(self, slice_s: float) -> None:
        self.slice_s = slice_s
        self.ran = time.perf_counter()

    async def tick(self) -> None:
        if time.perf_counter() - self.ran > self.slice_s:
            await asyncio.sleep(0)
            self.ran = time.perf_counter()


async def _closing_quote(body: bytes, start: int, longest: int, clock: _Slices) -> int:
    """Index of the quote that closes the string whose contents begin at ``start`` (UTF-8
    bytes: a quote or backslash byte is never part of a longer character); -1 if it does not
    close. Raises ``StringTooLong`` past ``longest`` bytes of contents."""
    close = body.find(b'"', start)
    seen = 0
    while close >= 0:
        if close - start > longest:
            raise StringTooLong(close - start)
        before = close - 1
        while before >= start and body[before] == _BACKSLASH:
            before -= 1
        if (close - 1 - before) % 2 == 0:  # an even run of backslashes escapes nothing
            return close
        seen += close - before
        if seen > 1024:  # escaped quotes cost a step each: let the loop run now and then
            seen = 0
            await clock.tick()
        close = body.find(b'"', close + 1)
    return -1


def _restore(value: Any, strings: dict[str, str]) -> Any:
    """``value`` with every placeholder (a value or an object key) replaced by its string."""
    if isinstance(value, str):
        return strings.get(value, value)
    if isinstance(value, list):
        return [_restore(v, strings) for v in value]
    if isinstance(value, dict):
        return {strings.get(k, k): _restore(v, strings) for k, v in value.items()}
    return value
