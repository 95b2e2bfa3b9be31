"""Where a number came from: the command line and the commit that produced it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path


def command_line() -> str:
    """This process's command, as a user would type it (``shoal ...`` for the CLI)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "shoal":
        argv[0] = "shoal"
    return shlex.join(argv)


def git_commit() -> str | None:
    """$SHOAL_GIT_COMMIT when set (a copy of the tree on another machine, whose own .git may
    be stale), else HEAD with '-dirty' for uncommitted changes to tracked files; None outside
    a git checkout."""
    if os.environ.get("SHOAL_GIT_COMMIT"):
        return os.environ["SHOAL_GIT_COMMIT"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
