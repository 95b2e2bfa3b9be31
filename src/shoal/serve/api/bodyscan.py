"""Counting a JSON body's values before it is parsed, so that parsing has a bound.

Parsing a body and validating it into pydantic models runs on the event loop, and its cost
grows with the number of JSON values: a body of a few MiB of ``["a"],`` items holds hundreds of
thousands of them and takes about a second to parse and validate, while every other request
waits. A thread does not help: ``json.loads`` and pydantic's validators hold the GIL
throughout, so the loop stalls just as long. A request the API can accept holds few values
(a list and at most two texts per input, a handful of options), so the routes count values
first, stop counting past what such a request can hold, and refuse the body (413) if it has
more. The count costs microseconds per value and skips each string's contents at ``memchr``
speed, so a refused body costs the loop well under a millisecond however large it is.
"""

from __future__ import annotations

import json
import json.decoder
import re
from collections.abc import Callable

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
