"""What the command lines share: progress bars only when asked (`--progress`) or on a terminal, so a script, a pipe
or a log file gets no bar text; output files checked before a run; parsed options handed on as keyword arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def show_progress(args: argparse.Namespace) -> bool:
    """True with `--progress`, else whether stderr is a terminal (a replaced or closed stderr is not)."""
    if getattr(args, "progress", False):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def output_file(name: str, flag: str = "--out") -> Path:
    """An output file given as `flag`: its folder must exist and it must not be a folder (a ValueError before the
    run starts, not found out after it)."""
    out = Path(name).expanduser()
    if not out.resolve().parent.is_dir():
        raise ValueError(f"{flag} {name}: folder {out.resolve().parent} does not exist")
    if out.is_dir():
        raise ValueError(f"{flag} {name} is a directory")
    return out


def arguments(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The parsed values of `names`, as keyword arguments of the function a command hands them to."""
    return {name: getattr(args, name) for name in names}
