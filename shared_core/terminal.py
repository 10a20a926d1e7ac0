"""What the command lines share: progress bars only when asked (`--progress`) or on a terminal, so a script, a pipe
or a log file gets no bar text; parsed options handed on as keyword arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def show_progress(args: argparse.Namespace) -> bool:
    """True with `--progress`, else whether stderr is a terminal (a replaced or closed stderr is not)."""
    if getattr(args, "progress", False):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def arguments(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The parsed values of `names`, as keyword arguments of the function a command hands them to."""
    return {name: getattr(args, name) for name in names}
