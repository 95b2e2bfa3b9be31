"""Files written whole or not at all: a reader, or a run stopped mid-write, never sees half."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(file: Path, value: Any, **dumps: Any) -> None:
    """Write ``value`` as JSON to ``file`` through a temporary file of this process renamed
    into place, so a stop mid-write leaves the previous file and writers never collide."""
    tmp = file.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, **dumps))
    os.replace(tmp, file)
