"""One entry point from a task name or an example file to labelled examples (head detection and the CLI)."""

from __future__ import annotations

import re
from pathlib import Path

from shared_core.evaluation.data import REAL_TASKS, resolve_task_path
from shared_core.evaluation.examples import LabelledExample, load_jsonl
from shared_core.evaluation.hotpot import hotpot_examples
from shared_core.evaluation.synthetic import babilong_examples


def load_examples(
    path_or_name: str | Path, *, n: int, target_words: int, seed: int, offset: int = 0
) -> list[LabelledExample]:
    """Examples from a task name (``babi-qa2``, ``hotpotqa``) or a file: bAbI ``.txt``, HotpotQA ``.json``, ``.jsonl``.

    ``target_words`` and ``seed`` apply to built documents; a JSONL file is returned as is. ``offset`` skips that many
    questions (of the seeded order for bAbI, of the file order otherwise), so head detection (``offset=0``) and
    evaluation (a larger offset) use disjoint questions.
    """
    if isinstance(path_or_name, str) and path_or_name in REAL_TASKS:
        raise ValueError(
            f"{path_or_name!r} is a real-document set (several questions per document, split by document): "
            "load it with load_real(name, split=...)"
        )
    path = Path(path_or_name)
    if not path.exists() and isinstance(path_or_name, str) and re.fullmatch(r"babi-qa\d+|hotpotqa", path_or_name):
        path = resolve_task_path(path_or_name)
    if not path.is_file():
        raise FileNotFoundError(f"no such example file or task: {path_or_name}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return babilong_examples(path, n=n, target_words=target_words, seed=seed, offset=offset)
    if suffix == ".json":
        return hotpot_examples(path, n=n, target_words=target_words, seed=seed, offset=offset)
    if suffix == ".jsonl":
        return load_jsonl(path)[offset : offset + n]
    raise ValueError(f"unsupported example file {path}: expected a bAbI .txt, the HotpotQA .json or a .jsonl")
