"""What a head-set file records, whether its heads were detected or trained: the heads, the model, template and
scoring rule they were found with, the data and command, and the versions; written atomically."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from shared_core.atomic_file import write_atomic
from shared_core.models.loading import model_id

if TYPE_CHECKING:
    from shared_core.retriever import AttentionRetriever

SCORING_RULE = ("calibration", "pooling", "topk", "threshold_std", "query_rows", "head_aggregation")
"""The attention settings a head set is only valid with (recorded so a later reader can tell)."""


@dataclass(kw_only=True)
class HeadSetRecord:
    """A head set (best first) and everything needed to reproduce it; subclasses add how its heads were chosen."""

    heads: list[str]
    model: str
    n_examples: int
    template: str
    scoring_rule: dict[str, Any]
    versions: dict[str, str]
    sources: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    command: str | None = None
    max_layer: int | None = None
    """The deepest layer the heads were taken from (None: every layer)."""

    def chosen_by(self) -> dict[str, Any]:
        """How the heads were chosen (scores, weights, training summary): the file's part after `heads`."""
        return {}

    def to_yaml(self) -> str:
        """The head-set file format read by `attention.heads: <path>`."""
        data = {
            "model": self.model,
            "aliases": self.aliases,
            "heads": self.heads,
            **self.chosen_by(),
            "n_examples": self.n_examples,
            "sources": self.sources,
            "template": self.template,
            "scoring_rule": self.scoring_rule,
            "versions": self.versions,
            "command": self.command,
        }
        if self.max_layer is not None:  # absent: heads from every layer
            data["max_layer"] = self.max_layer
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path) -> None:
        """Write the head-set file atomically: a temp file beside it, renamed over it (never half written)."""
        write_atomic(path, self.to_yaml())


def provenance(retriever: AttentionRetriever) -> dict[str, Any]:
    """The `model`, `template`, `scoring_rule` and `versions` of a head set found with `retriever`."""
    return {
        "model": model_id(retriever.config.model),
        "template": retriever.prompt_key,
        "scoring_rule": retriever.config.attention.model_dump(mode="json", include=set(SCORING_RULE)),
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    """The versions of attnret, transformers, torch and Python."""
    import torch
    import transformers

    from shared_core import __version__

    return {
        "attnret": __version__,
        "transformers": str(transformers.__version__),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }
