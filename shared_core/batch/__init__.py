"""Batch retrieval over many (query, document) jobs on Ray Data: `run_batch`, the `attnret batch` command.

Needs the `ray` extra (`pip install "attnret[ray]"`); nothing here imports Ray or pyarrow until a run starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared_core.batch.runner import BatchSummary, run_batch
    from shared_core.batch.storage import read_output

__all__ = ["BatchSummary", "read_output", "run_batch"]


def __getattr__(name: str) -> Any:
    if name in ("BatchSummary", "run_batch"):
        from shared_core.batch import runner

        return getattr(runner, name)
    if name == "read_output":
        from shared_core.batch.storage import read_output

        return read_output
    raise AttributeError(f"module 'shared_core.batch' has no attribute {name!r}")
