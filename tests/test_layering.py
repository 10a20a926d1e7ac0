"""Import layering: the config loads without torch, and the retrieval path never loads the evaluation code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _loaded_after(statement: str) -> set[str]:
    """The module names loaded by a fresh interpreter after running ``statement``."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_config_imports_without_torch() -> None:
    loaded = _loaded_after("import shared_core.config, shared_core.cascade_config, shared_core")
    assert "torch" not in loaded


@pytest.mark.parametrize(
    "statement",
    [
        "import shared_core.retriever",
        "import haystack_attnret",
        "import llamaindex_attnret",
    ],
)
def test_retrieval_path_does_not_import_evaluation(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert "shared_core.retriever" in loaded or "shared_core.retriever" not in statement
    assert not {m for m in loaded if m.startswith("shared_core.evaluation")}, "the core imported the evaluation code"
    assert "shared_core.head_detection" not in loaded
