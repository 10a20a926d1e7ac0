"""Where the evaluation data lives: one resolver of the shared data folder and of task names to files,
used by the loaders, the benchmarks and the tests."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)


def shared_data_dir() -> Path | None:
    """The evaluation data folder: ``$ATTNRET_DATA`` if set, else ``<repo>/../shared/data``; None when absent."""
    env = os.environ.get("ATTNRET_DATA")
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            return path
        logger.warning("ATTNRET_DATA=%s is not a folder", env)
        return None
    path = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return path if path.is_dir() else None


_BABI_TASK_RE = re.compile(r"^qa(\d+)_")
REAL_FILES = {"covidqa": "covidqa/covidqa_dev.json", "qmsum": "qmsum/qmsum_val.jsonl"}
REAL_TASKS = tuple(REAL_FILES)
"""Real-document sets: questions grouped by document, loaded with ``load_real``."""


def babi_task_name(path: str | Path) -> str:
    """Task name of a bAbI file, e.g. ``qa2_two-supporting-facts_test.txt`` -> ``babi-qa2``."""
    m = _BABI_TASK_RE.match(Path(path).name)
    return f"babi-qa{m.group(1)}" if m else f"babi-{Path(path).stem}"


def resolve_task_path(name: str, data_dir: Path | None = None) -> Path:
    """Map a task name (``babi-qa2``, ``hotpotqa``) to its file in the shared data folder; error if missing."""
    root = data_dir or shared_data_dir()
    if root is None:
        raise FileNotFoundError(
            "shared data folder not found: set ATTNRET_DATA to the folder holding babi/ and hotpotqa/"
        )
    if name == "hotpotqa":
        path = root / "hotpotqa" / "hotpot_dev_distractor_100.json"
        if not path.is_file():
            raise FileNotFoundError(f"HotpotQA file missing: {path}")
        return path
    if name in REAL_FILES:
        path = root / REAL_FILES[name]
        if not path.is_file():
            raise FileNotFoundError(f"{name} file missing: {path}")
        return path
    m = re.fullmatch(r"babi-qa(\d+)", name)
    if m:
        matches = sorted((root / "babi").glob(f"qa{m.group(1)}_*test.txt"))
        if not matches:
            raise FileNotFoundError(f"no bAbI file for task {name!r} under {root / 'babi'}")
        return matches[0]
    raise ValueError(f"unknown task name {name!r}: expected 'babi-qaN', 'hotpotqa', 'covidqa' or 'qmsum'")
