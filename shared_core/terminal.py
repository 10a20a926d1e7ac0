"""What the command lines share about the terminal: progress bars only when asked (`--progress`) or on a terminal,
so a script, a pipe or a log file gets no bar text."""

from __future__ import annotations

import argparse
import sys


def show_progress(args: argparse.Namespace) -> bool:
    """True with `--progress`, else whether stderr is a terminal (a replaced or closed stderr is not)."""
    if getattr(args, "progress", False):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
