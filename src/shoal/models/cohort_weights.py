"""The tensors a cohort config describes, checked against ``model.safetensors``' header before
any weight is allocated (no torch here).

A safetensors file starts with an 8-byte little-endian header length and a JSON header naming
every tensor's dtype, shape and byte span; reading it costs microseconds whatever the file's
size. :func:`expected_shapes` mirrors the parameter layout of ``ShoalModel`` (``models/cohort.py``
and ``models/layers.py``; a test keeps the two equal), so a config whose shapes disagree with
the file (a ``hidden_size`` edited to 16384) is refused in one line, not after allocating its
gigabytes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shoal.models.cohort_schema import CONFIG_FIX, CohortFileError

MAX_HEADER_BYTES = 100_000_000
"""The safetensors format's own limit on the JSON header."""
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2,
    "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip

Shapes = dict[str, tuple[int, ...]]


def expected_shapes(config: Mapping[str, Any]) -> Shapes:
    """Every tensor ``ShoalModel(ShoalConfig(**config)).state_dict()`` holds, with its shape.

    Args:
        config: a checked ``config.json`` (``cohort_schema.check_config``: every field present).
    """
    c = config
    h, i, n = c["hidden_size"], c["intermediate_size"], c["n_students"]
    w = c["embedding_size"] or h
    out: Shapes = {
        "embeddings.word_embeddings.weight": (c["vocab_size"], w),
        "embeddings.position_embeddings.weight": (c["max_position_embeddings"], w),
    }
    if c["type_vocab_size"]:
        out["embeddings.token_type_embeddings.weight"] = (c["type_vocab_size"], w)
    out["embeddings.LayerNorm.weight"] = out["embeddings.LayerNorm.bias"] = (w,)
    if w != h:
        out["embeddings.project.weight"], out["embeddings.project.bias"] = (h, w), (h,)
    if c["relative_attention_num_buckets"]:
        out["relative_attention_bias.weight"] = (
            c["relative_attention_num_buckets"],
            c["num_attention_heads"],
        )
    layer: Shapes = {}
    for name in ("query", "key", "value", "attn_out"):
        layer[f"{name}.weight"], layer[f"{name}.bias"] = (h, h), (h,)
    layer["ffn_in.weight"], layer["ffn_in.bias"] = (i, h), (i,)
    layer["ffn_out.weight"], layer["ffn_out.bias"] = (h, i), (h,)
    for name in ("attn_norm", "ffn_norm"):
        layer[f"{name}.weight"] = layer[f"{name}.bias"] = (h,)
    for s in range(n):
        for j in range(c["student_layers"]):
            out.update({f"students.{s}.layers.{j}.{k}": v for k, v in layer.items()})
    head: Shapes = {
        "pooler.weight": (h, h),
        "pooler.bias": (h,),
        "classifier.weight": (c["num_labels"], h),
        "classifier.bias": (c["num_labels"],),
    }
    prefixes = [f"heads.{s}." for s in range(n)] if c["head_per_student"] else ["head."]
    for p in prefixes:
        out.update({p + k: v for k, v in head.items()})
    out["alpha"] = (n,)
    return out


def header_shapes(path: Path) -> Shapes:
    """The tensors of a safetensors file and their shapes, from its header alone.

    Raises:
        CohortFileError: the file is unreadable, its header damaged, or its size disagrees
            with the header (a truncated copy).
    """

    def damaged(why: str) -> CohortFileError:
        return CohortFileError(
            path,
            "header",
            f"the weights file is damaged ({why}); copy it again or distil the cohort again",
        )

    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise damaged(f"{size} bytes, shorter than a header")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise damaged(f"a header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
    except OSError as e:
        raise damaged(f"cannot read it: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise damaged(f"its header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise damaged("its header is not a JSON object")
    shapes: Shapes = {}
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(entry["shape"])
            start, stop = entry["data_offsets"]
            width = DTYPE_BYTES[entry["dtype"]]
            ok = all(type(d) is int and d >= 0 for d in (*shape, start, stop))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok or stop - start != math.prod(shape) * width:
            raise damaged(f"tensor {name!r} has the header entry {json.dumps(entry)[:80]}")
        shapes[name] = shape
        end = max(end, stop)
    if 8 + n + end != size:
        raise damaged(f"the header spans {8 + n + end} bytes but the file has {size}")
    return shapes


def _count(shapes: Shapes) -> int:
    return sum(math.prod(s) for s in shapes.values())


def check_weights(weights: Path, config: Mapping[str, Any], config_file: Path) -> None:
    """Refuse a weights file whose tensors are not those the checked ``config`` (read from
    ``config_file``) describes, naming the first difference.

    Raises:
        CohortFileError: the header is damaged, or the tensors' names or shapes differ.
    """
    found = header_shapes(weights)
    wanted = expected_shapes(config)
    if found == wanted:
        return
    differ = [name for name in wanted if found.get(name) != wanted[name]]
    first = differ[0] if differ else next(name for name in found if name not in wanted)
    if first not in found:
        what = f"{first} is missing from the weights"
    elif first not in wanted:
        what = f"{first} is in the weights but not in the config"
    else:
        what = f"{first} is {list(found[first])} in the weights, {list(wanted[first])} by config"
    c = config
    shape = ", ".join(
        f"{k} {c[k]}"
        for k in ("hidden_size", "intermediate_size", "vocab_size", "n_students", "student_layers")
    )
    raise CohortFileError(
        config_file,
        "shapes",
        f"the config and {weights.name} disagree: the config describes {_count(wanted):,} "
        f"weights ({shape}) but the file holds {_count(found):,}; {what}: {CONFIG_FIX}",
    )
