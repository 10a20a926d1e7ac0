"""Head training (`attnret train-heads`): capture every head's per-unit score once per labelled example, learn one
non-negative weight per kept head (`weights`), and write a weighted head-set file atomically.

Examples are split into train and validation **by document**, so no document is on both sides; bad examples are
refused with their origin (``file.jsonl:LINE``) before any model runs. The file loads as ``attention.heads: FILE``:
the attention view then combines the heads by their weights, and the read stops at the deepest weighted layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared_core.atomic_file import write_atomic
from shared_core.config import RetrieverConfig
from shared_core.evaluation import REAL_TASKS
from shared_core.retriever import AttentionRetriever
from shared_core.training.head_detection import detection_examples
from shared_core.training.head_features import SourcedExample, TrainingInputError, capture_features, head_names
from shared_core.training.head_set_file import HeadSetRecord, provenance
from shared_core.training.weights import TrainSettings, fit_weights, split_by_document, train_weights

__all__ = [
    "TrainSettings",
    "TrainingResult",
    "capture_retriever",
    "fit_weights",
    "split_by_document",
    "train_heads",
    "training_examples",
    "write_atomic",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- examples


def training_examples(sources: Sequence[str | Path], *, offset: int = 0, **options: Any) -> list[SourcedExample]:
    """`detection_examples(sources, offset=offset, **options)`, each with its origin: ``path:line`` for a JSONL
    file (the line an error message names), else the source's name."""
    out: list[SourcedExample] = []
    for source in sources:
        examples = detection_examples([source], offset=offset, **options)
        path = Path(source)
        if str(source) not in REAL_TASKS and path.suffix.lower() == ".jsonl" and path.is_file():
            lines = [i for i, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if raw.strip()]
            lines = lines[offset:]
            out += [SourcedExample(ex, f"{path}:{lines[i]}", from_file=True) for i, ex in enumerate(examples)]
        else:
            out += [SourcedExample(ex, str(source)) for ex in examples]
    return out


# ----------------------------------------------------------------------------------------------- the command


@dataclass(kw_only=True)
class TrainingResult(HeadSetRecord):
    """A trained head set (heads by weight, best first), its weights and how they were trained."""

    weights: dict[str, float]
    skipped: list[str]
    training: dict[str, Any]
    seconds: float = 0.0

    def chosen_by(self) -> dict[str, Any]:
        """The weights (the attention view combines the heads by them), skipped examples, training summary, time."""
        return {
            "weights": self.weights,
            "skipped_examples": self.skipped,
            "training": self.training,
            "seconds": round(self.seconds, 1),
        }


def capture_retriever(
    config: RetrieverConfig | dict[str, Any] | str | Path | None, max_layer: int | None
) -> AttentionRetriever:
    """A retriever reading every head of layers up to `max_layer` (its prefill stops there)."""
    base = RetrieverConfig.coerce(config)
    att = base.attention.model_copy(update={"heads": "all", "layers": [-1 if max_layer is None else max_layer]})
    retriever = AttentionRetriever(base.model_copy(update={"attention": att}))
    try:
        retriever.warm_up()
    except ValueError as exc:
        if "attention.layers" in str(exc):
            raise ValueError(f"max_layer (--max-layer) {max_layer} is outside this model's layers: {exc}") from None
        raise
    return retriever


def train_heads(
    examples: Sequence[SourcedExample],
    config: RetrieverConfig | dict[str, Any] | str | Path | None = None,
    settings: TrainSettings | None = None,
    *,
    max_layer: int | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
    sources: Sequence[str] = (),
    command: str | None = None,
) -> TrainingResult:
    """Capture (or read cached) features of `examples`, learn a weight per kept head, and return the head set."""
    settings = settings or TrainSettings()
    settings.check()
    start = time.perf_counter()
    retriever = capture_retriever(config, max_layer)
    deepest = retriever.head_selection.deepest
    att = retriever.config.attention
    if att.pooling != "mean" or att.head_aggregation == "max_then_mean":
        logger.warning(
            "pooling %s / head_aggregation %s: weights are fitted on each head's pooled unit scores, which the view "
            "reproduces exactly only with mean pooling and mean (or sum) aggregation",
            att.pooling,
            att.head_aggregation,
        )
    features, skipped = capture_features(retriever, examples, deepest, cache_dir=cache_dir, show_progress=show_progress)
    if not features:
        raise TrainingInputError(f"no usable example: all {len(examples)} had no gold unit")
    names = head_names(retriever.model.shape.num_heads, deepest)
    fit, summary = train_weights(features, names, settings)
    order = np.argsort(-fit.weights, kind="stable")
    weights = {names[fit.heads[i]]: float(f"{fit.weights[i]:.6g}") for i in order if fit.weights[i] > 0}
    weights = {h: w for h, w in weights.items() if w > 0}
    return TrainingResult(
        **provenance(retriever),
        heads=list(weights),
        weights=weights,
        n_examples=len(features),
        skipped=[item.name for item in skipped],
        training=summary,
        sources=list(sources),
        command=command,
        max_layer=deepest,
        seconds=time.perf_counter() - start,
    )
