"""The body's value count against an obviously correct reference: a serializer that records
where each value starts, on generated documents (escapes, quotes, backslashes, astral text,
both JSON encodings), whole and cut at every kind of place; and a large body parsed in slices
against ``json.loads``."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from shoal.serve.api.bodyscan import (
    SMALL_BODY,
    StringTooLong,
    count_json_values,
    loads_in_slices,
    values_allowed,
)

ALPHABET = ['"', "\\", "a", " ", ",", "[", "]", "{", "}", ":", "\n", "\x01", "汉", "😀", "\\u"]


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))


def random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randint(0, 7 if depth < 4 else 3)
    if kind == 0:
        return random_text(rng)
    if kind == 1:
        return rng.choice([0, -12, 3.5, -1e-7, 12345678901234567890])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return float(rng.choice(["nan", "inf", "-inf"]))
    if kind < 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {random_text(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def dump(value: object, ascii_only: bool, starts: list[int], out: list[str]) -> None:
    """``json.dumps`` by hand, recording each value's (and key's) start in ``starts``."""
    starts.append(sum(map(len, out)))
    if isinstance(value, list):
        out.append("[ ")
        for i, item in enumerate(value):
            out.append(",\n" if i else "")
            dump(item, ascii_only, starts, out)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            out.append(", " if i else "")
            dump(key, ascii_only, starts, out)
            out.append(" : ")
            dump(item, ascii_only, starts, out)
        out.append(" }")
    else:
        out.append(json.dumps(value, ensure_ascii=ascii_only))


def documents(n: int) -> list[tuple[str, list[int]]]:
    rng = random.Random(7)
    docs = []
    for i in range(n):
        starts: list[int] = []
        out: list[str] = []
        dump(random_value(rng), ascii_only=i % 2 == 0, starts=starts, out=out)
        docs.append(("".join(out), starts))
    return docs


def reference_count(value: object) -> int:
    if isinstance(value, list):
        return 1 + sum(reference_count(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(1 + reference_count(v) for v in value.values())
    return 1


def test_counts_every_value_of_valid_json():
    for text, starts in documents(400):
        assert len(starts) == reference_count(json.loads(text)), text
        assert count_json_values(text.encode(), stop_after=10_000) == len(starts), text
        for encoding in ("utf-8-sig", "utf-16", "utf-32-be"):  # what json.loads also reads
            assert count_json_values(text.encode(encoding), stop_after=10_000) == len(starts)


def test_a_cut_body_counts_the_values_begun_before_the_cut():
    rng = random.Random(3)
    for text, starts in documents(200):
        for cut in {rng.randrange(len(text) + 1) for _ in range(8)}:
            begun = sum(1 for s in starts if s < cut)
            assert count_json_values(text[:cut].encode(), stop_after=10_000) == begun, text[:cut]


def test_counting_stops_past_the_bound():
    body = json.dumps({"inputs": [["a"]] * 100_000}).encode()
    assert count_json_values(body, stop_after=50) == 51
    assert count_json_values(b"[" * 1_000_000, stop_after=10) == 11
    assert count_json_values(b'{"inputs": [' + b"]" * 1_000_000, stop_after=10) == 3


@pytest.mark.parametrize(
    ("body", "count"),
    [
        (b"", 0),
        (b"not json", 2),  # 'not', 'json': json.loads fails at the first
        (b'{"inputs": "unclosed', 3),
        (b'{"a": "\\"', 3),  # an escaped quote does not close the string
        (b'{"a": "\\\\", "b": 1}', 5),  # an escaped backslash before the quote does
        (b'["\\q", 1]', 3),  # escapes are not checked: counting on only counts more
        (b"\xff\xfe\xfd", 0),  # bytes json.loads cannot decode
    ],
)
def test_bodies_that_are_not_json(body, count):
    assert count_json_values(body, stop_after=100) == count


def test_the_allowance_fits_the_largest_valid_requests():
    n = 32
    text = "a"
    predict = {
        "inputs": [[text, text]] * n,
        "raw_scores": False,
        "parameters": {"top_k": 1, "function_to_apply": "softmax"},
        "truncate": True,
        "truncation_direction": "right",
        "min_k": 1,
        "deadline_ms": 100.0,
    }
    classify = {
        "texts": [text] * n,
        "text_pairs": [text] * n,
        "min_k": 1,
        "deadline_ms": 100.0,
        "truncate": True,
        "truncation_direction": "left",
    }
    for body in (predict, classify):
        assert reference_count(body) <= values_allowed(n)
    assert values_allowed(n) < 10 * n  # and far from what a few MiB of items hold


# ------------------------------------------------------------------------------ parsing in slices


def long_documents() -> list[bytes]:
    """Bodies over ``SMALL_BODY`` with long strings of every awkward kind, as values and keys."""
    rng = random.Random(11)
    tricky = ['\\"', "\\\\", '\\\\"', "😀", "汉", "\n", "\\u", "a"]
    texts = ["".join(rng.choice(tricky) for _ in range(rng.randint(800, 3000))) for _ in range(24)]
    docs = [
        {"inputs": [[t, t[::-1]] for t in texts[:8]], "truncate": True},
        {"texts": texts[8:16], "text_pairs": texts[16:24], "min_k": 2},
        {texts[0]: [texts[1], {texts[2]: texts[3]}], "short": "a", texts[0][:5]: None},
        [texts[4]] * 40 + [1.5, -2, True, None],
    ]
    out = []
    for i, doc in enumerate(docs):
        for ascii_only in (True, False):
            out.append(json.dumps(doc, ensure_ascii=ascii_only, indent=i % 2 or None).encode())
    return [b for b in out if len(b) > SMALL_BODY]


def test_parsing_in_slices_gives_what_json_loads_gives():
    bodies = long_documents()
    assert len(bodies) >= 6
    for body in bodies:
        assert asyncio.run(loads_in_slices(body, longest_string=1 << 20)) == json.loads(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": "' + b"a" * 70_000 + b'\\q"}',  # a bad escape inside a long string
        b'{"inputs": "' + b"a" * 70_000,  # a long string left open
        b'{"inputs": "' + b"a" * 70_000 + b'" "b"}',  # structure broken after it
        b'{"inputs": "' + b"a" * 70_000 + b'\xff"}',  # bytes that are not UTF-8
        b'{"inputs": "' + b"a" * 70_000 + b'\x01"}',  # a raw control character
        b'{"inputs": [' + b"1" * 70_000 + b"]}",  # past int's digit limit
    ],
)
def test_what_json_loads_refuses_is_refused(body):
    with pytest.raises(ValueError) as expected:
        json.loads(body)
    with pytest.raises(type(expected.value)):
        asyncio.run(loads_in_slices(body, longest_string=1 << 20))


def test_a_string_longer_than_any_valid_one_is_refused_before_it_is_decoded():
    body = json.dumps({"inputs": ["a" * 200_000, "😀" * 10]}).encode()
    with pytest.raises(StringTooLong) as refused:
        asyncio.run(loads_in_slices(body, longest_string=100_000))
    assert refused.value.args[0] > 100_000
    assert asyncio.run(loads_in_slices(body, longest_string=200_000)) == json.loads(body)


def test_other_tasks_run_while_a_large_body_is_parsed():
    body = json.dumps({"inputs": [["😀" * 20_000, "汉" * 20_000]] * 16}).encode()
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    async def main() -> object:
        task = asyncio.create_task(other())
        await asyncio.sleep(0)
        started = turns
        parsed = await loads_in_slices(body, longest_string=1 << 20, slice_s=0.0)
        task.cancel()
        return parsed, turns - started

    parsed, ran = asyncio.run(main())
    assert parsed == json.loads(body)
    assert ran >= 32  # a turn after every long string at least


def test_small_bodies_and_other_encodings_are_parsed_whole():
    body = json.dumps({"inputs": ["😀" * 20_000]}).encode("utf-16")
    assert asyncio.run(loads_in_slices(body, longest_string=10)) == json.loads(body)
    assert asyncio.run(loads_in_slices(b'{"a": "bc"}', longest_string=1)) == {"a": "bc"}
