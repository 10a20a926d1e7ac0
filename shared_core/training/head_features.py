"""Training features: every head's calibrated per-unit score on each labelled example, captured once and cached.

One capture per example reads the document with a selection naming every head of a layer band (the engine's own
path: query rows only, calibration, no n×n matrix) and pools each head's token scores over the units by the
configured rule, times the document's token count as the attention view does. With mean pooling and mean head
aggregation (the defaults) a weighted head set's view is exactly ``weights @ features``, so training and inference
cannot disagree. Features are cached on disk per (model, prompt, scoring rule, units, band, example) so that training
runs never read a document again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from shared_core.engine import scoring
from shared_core.engine.heads import HeadSelection
from shared_core.evaluation import LabelledExample, gold_units
from shared_core.models.loading import cache_root, model_id
from shared_core.retriever import AttentionRetriever

logger = logging.getLogger(__name__)

FEATURE_FORMAT = 1
"""Bumped when the cached features change meaning (part of every cache key)."""


class TrainingInputError(ValueError):
    """A labelled example cannot be used for training; the message names it (file and line for example files)."""


@dataclass(frozen=True)
class SourcedExample:
    """A labelled example and where it came from (``file.jsonl:12`` for example files, else the set's name)."""

    example: LabelledExample
    origin: str
    from_file: bool = False

    @property
    def name(self) -> str:
        """How errors and logs name the example."""
        return f"example {self.example.id!r} ({self.origin})"

    @property
    def group(self) -> str:
        """The document the example asks about: train/validation splits never share one."""
        if self.example.document_id is not None:
            return f"{self.example.task}:{self.example.document_id}"
        digest = hashlib.sha256("\x00".join(self.example.documents).encode("utf-8")).hexdigest()[:16]
        return f"{self.example.task}:{digest}"


@dataclass(frozen=True)
class ExampleFeatures:
    """One example's features: ``x[head, unit]`` (heads in band order, units of all documents) and gold units."""

    id: str
    group: str
    x: np.ndarray
    gold: np.ndarray


def check_example(item: SourcedExample) -> None:
    """Refuse an example with no document text or a gold span outside its document (the message names it)."""
    ex = item.example
    if not ex.documents or any(not d.strip() for d in ex.documents):
        raise TrainingInputError(f"{item.name}: a document has no text")
    if not ex.gold:
        raise TrainingInputError(f"{item.name}: no gold span")
    for g in ex.gold:
        if not 0 <= g.document_index < len(ex.documents):
            raise TrainingInputError(f"{item.name}: gold span names document {g.document_index}, out of range")
        n = len(ex.documents[g.document_index])
        if not 0 <= g.start < g.end <= n:
            raise TrainingInputError(
                f"{item.name}: gold span [{g.start}, {g.end}) is outside document {g.document_index} (length {n})"
            )


def skip_without_gold(item: SourcedExample) -> None:
    """An example with no gold unit after segmentation: an error naming its line for an example file (its span is
    likely whitespace), a logged skip for a built or real set (the caller skips it)."""
    if item.from_file:
        raise TrainingInputError(f"{item.name}: no unit overlaps a gold span (is the span only whitespace?)")
    logger.warning("%s has no gold unit after segmentation; skipped", item.name)


def band_selection(num_layers: int, num_heads: int, deepest: int) -> HeadSelection:
    """Every head of layers 0..`deepest`: the capture's selection."""
    return HeadSelection(dict.fromkeys(range(deepest + 1)), source="training")


def head_names(num_heads: int, deepest: int) -> list[str]:
    """The ``layer-head`` name of every feature row, in band order."""
    return [f"{layer}-{h}" for layer in range(deepest + 1) for h in range(num_heads)]


def capture_features(
    retriever: AttentionRetriever,
    items: Sequence[SourcedExample],
    deepest: int,
    *,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
) -> tuple[list[ExampleFeatures], list[SourcedExample]]:
    """Features of every usable example (cached on disk), and the examples skipped for having no gold unit.

    An example from a file with no gold unit after segmentation is an error naming its line; one of a built or real
    set is skipped with a warning. Bad examples are refused before any model runs."""
    for item in items:
        check_example(item)
    folder = feature_dir(retriever, cache_dir)
    selection = band_selection(retriever.model.shape.num_layers, retriever.model.shape.num_heads, deepest)
    used: list[ExampleFeatures] = []
    skipped: list[SourcedExample] = []
    for item in tqdm(items, desc="capture", disable=not show_progress):
        path = folder / f"{feature_key(retriever, item.example, deepest)}.npz"
        feats = _read_cached(path)
        if feats is None:
            feats = _capture_one(retriever, item.example, selection)
            _write_cached(path, feats)
        x, gold = feats
        if not gold.any():
            skip_without_gold(item)
            skipped.append(item)
            continue
        used.append(ExampleFeatures(item.example.id, item.group, x, gold))
    return used, skipped


def feature_dir(retriever: AttentionRetriever, cache_dir: str | Path | None = None) -> Path:
    """The cache folder of captured features (``<cache>/train-features/<model>``)."""
    root = Path(cache_dir).expanduser() if cache_dir else cache_root(retriever.config.model) / "train-features"
    slug = "".join(c if c.isalnum() or c in "-._" else "_" for c in model_id(retriever.config.model))
    return root / slug


def feature_key(retriever: AttentionRetriever, ex: LabelledExample, deepest: int) -> str:
    """Hash of everything a cached feature file depends on: model, prompt, scoring rule, units, band and example."""
    cfg = retriever.config
    loaded = retriever.model
    parts: dict[str, Any] = {
        "format": FEATURE_FORMAT,
        "model": [model_id(cfg.model), loaded.name, loaded.precision],
        "prompt": retriever.prompt_key,
        "rule": cfg.attention.model_dump(mode="json", include={"calibration", "pooling", "topk", "threshold_std"})
        | {"query_rows": cfg.attention.query_rows},
        "units": cfg.units.model_dump(mode="json"),
        "deepest": deepest,
        "query": ex.query,
        "documents": [hashlib.sha256(d.encode("utf-8")).hexdigest() for d in ex.documents],
        "gold": [[g.document_index, g.start, g.end] for g in ex.gold],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def _capture_one(
    retriever: AttentionRetriever, ex: LabelledExample, selection: HeadSelection
) -> tuple[np.ndarray, np.ndarray]:
    """Per head, the pooled view score of every unit (``x[head, unit]``), and the gold mask over the units."""
    att = retriever.config.attention
    blocks, gold_mask = [], []
    for d, text in enumerate(ex.documents):
        spans = [(u.start, u.end) for u in retriever.units(text)]
        gold = gold_units(spans, ex.gold, d)
        tokens, per_layer = retriever.head_token_scores(ex.query, text, selection)
        rows = np.concatenate([per_layer[layer].double().cpu().numpy() for layer in sorted(per_layer)], axis=0)
        lo, hi = scoring.unit_token_ranges(tokens.offsets, spans)
        pooled = scoring.pool(rows, lo, hi, att.pooling, att.topk, att.threshold_std) * tokens.n_doc_tokens
        blocks.append(pooled)
        gold_mask.append(np.isin(np.arange(len(spans)), sorted(gold)))
    return np.concatenate(blocks, axis=1).astype(np.float32), np.concatenate(gold_mask)


def _read_cached(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return data["x"], data["gold"].astype(bool)
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("cached features %s unreadable (%s); captured again", path, exc)
        return None


def _write_cached(path: Path, feats: tuple[np.ndarray, np.ndarray]) -> None:
    """Write one example's features atomically (a temp file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, x=feats[0], gold=feats[1])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
