"""QR-head detection: score every attention head alone on labelled examples and keep the best.

Each head ranks the units of each example's documents by the same rule the retriever uses at
inference (calibration, pooling, threshold), so detection and scoring can never disagree. A head's
score is its mean nDCG@k over the examples, or the reference's summed score on gold units.

Examples come from built tasks (bAbI stories, HotpotQA paragraphs among others), example files, and the real-document
sets (``covidqa``, ``qmsum``): of those only the held-in documents are ever read (``detection_examples``), so a head
set detected on them can be judged on the held-out documents the quality table uses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from shared_core.config import RetrieverConfig
from shared_core.engine import scoring
from shared_core.engine.heads import HeadSelection
from shared_core.evaluation import REAL_TASKS, LabelledExample, gold_units, load_examples, load_real
from shared_core.retriever import AttentionRetriever
from shared_core.training.head_set_file import HeadSetRecord, provenance

logger = logging.getLogger(__name__)

Metric = Literal["ndcg", "gold_score"]

REAL_MAX_WORDS = 4000
"""Real documents are cut after the paragraph (paper) or turn (meeting) reaching this many words for detection, so
that they fit the default model's 8,192-token window: every example then costs one query pass, not a cascade pass."""
REAL_PER_DOCUMENT = 4
"""Questions asked of each real held-in document (its prefill is shared by them)."""


def detection_examples(
    sources: Sequence[str | Path],
    *,
    n: int,
    target_words: int,
    seed: int = 0,
    offset: int = 0,
    per_document: int = REAL_PER_DOCUMENT,
    real_max_words: int | None = REAL_MAX_WORDS,
) -> list[LabelledExample]:
    """Up to ``n`` labelled examples of every source, in order.

    A built task (``babi-qaN``, ``hotpotqa``) or an example file goes through ``load_examples`` (``offset`` skips
    questions, ``target_words`` sets the built length). A real-document set (``covidqa``, ``qmsum``) gives
    up to ``per_document`` questions of each of its held-in documents in order (never the held-out ones: those are
    the quality table's) until it has ``n``; documents are cut after ``real_max_words`` words (None: whole) and only
    the questions whose gold lies in the kept part are asked. ``offset`` and ``target_words`` do not apply to it.
    """
    if n <= 0 or per_document <= 0:
        raise ValueError(f"n and per_document must be positive, got {n} and {per_document}")
    out: list[LabelledExample] = []
    for source in sources:
        if isinstance(source, str) and source in REAL_TASKS:
            examples = load_real(
                source,
                split="held-in",
                n_documents=None,  # as many held-in documents as it takes: a cut one may keep fewer questions
                per_document=per_document,
                seed=seed,
                max_words=real_max_words,
            )
            if not examples:
                raise ValueError(f"no held-in question of {source!r} fits in {real_max_words} words")
            out.extend(examples[:n])
        else:
            out.extend(load_examples(source, n=n, target_words=target_words, seed=seed, offset=offset))
    return out


@dataclass(kw_only=True)
class DetectionResult(HeadSetRecord):
    """Detected heads (best first) with every candidate head's score, the metric and its cut-off."""

    scores: dict[str, float]
    metric: str
    k: int

    def chosen_by(self) -> dict[str, Any]:
        """The kept heads' scores (mean nDCG@k or summed gold score over the examples), the metric and k."""
        return {"scores": {h: round(self.scores[h], 6) for h in self.heads}, "metric": self.metric, "k": self.k}


def detect_heads(
    examples: Sequence[LabelledExample],
    config: RetrieverConfig | dict[str, Any] | str | Path | None = None,
    *,
    top: int = 16,
    metric: Metric = "ndcg",
    k: int = 10,
    show_progress: bool = False,
    sources: Sequence[str] = (),
    command: str | None = None,
    max_layer: int | None = None,
) -> DetectionResult:
    """Score every (layer, head) of the model alone on `examples` and return the `top` best.

    `max_layer` (0-indexed, negative from the end) keeps the candidates in layers up to it: every query's forward
    stops at the deepest layer of the head set, so a shallower set reads fewer layers (a faster first query)."""
    if top <= 0:
        raise ValueError(f"top must be positive, got {top}")
    if metric not in ("ndcg", "gold_score"):
        raise ValueError(f"metric must be 'ndcg' or 'gold_score', got {metric!r}")
    base = RetrieverConfig.coerce(config)
    att = base.attention.model_copy(update={"heads": "all", "layers": [-1]})
    retriever = AttentionRetriever(base.model_copy(update={"attention": att}))
    loaded = retriever.model
    layers = _candidate_layers(loaded.shape.num_layers, max_layer)
    everything = HeadSelection(dict.fromkeys(range(layers)), source="detection")
    totals = np.zeros(layers * loaded.shape.num_heads)
    used = 0
    for ex in tqdm(examples, desc="detect heads", disable=not show_progress):
        per_head = _example_scores(retriever, ex, everything, metric, k)
        if per_head is None:
            logger.warning("example %s has no gold unit after segmentation; skipped", ex.id)
            continue
        totals += per_head
        used += 1
    if used == 0:
        raise ValueError("no usable example: none had a gold span that maps to a unit")
    mean = totals / used
    order = np.argsort(-mean, kind="stable")  # ties keep (layer, head) order: deterministic
    names = [f"{i // loaded.shape.num_heads}-{i % loaded.shape.num_heads}" for i in range(len(mean))]
    best = [names[i] for i in order[: min(top, len(names))]]
    return DetectionResult(
        **provenance(retriever),
        heads=best,
        scores={names[i]: float(mean[i]) for i in order},
        metric=metric,
        k=k,
        n_examples=used,
        sources=list(sources),
        command=command,
        max_layer=None if max_layer is None else layers - 1,
    )


def _candidate_layers(num_layers: int, max_layer: int | None) -> int:
    """How many layers, from the first, hold candidate heads (`max_layer` checked against the model)."""
    if max_layer is None:
        return num_layers
    last = max_layer + num_layers if max_layer < 0 else max_layer
    if not 0 <= last < num_layers:
        raise ValueError(
            f"max_layer (--max-layer) {max_layer} is outside this model's {num_layers} layers (0-{num_layers - 1}, "
            "or negative from the end)"
        )
    return last + 1


def _example_scores(
    retriever: AttentionRetriever, ex: LabelledExample, selection: HeadSelection, metric: Metric, k: int
) -> np.ndarray | None:
    """Per-head quality on one example (units of all its documents ranked together)."""
    att = retriever.config.attention
    unit_scores, gold_mask = [], []
    for d, text in enumerate(ex.documents):
        units = retriever.units(text)
        gold = gold_units([(u.start, u.end) for u in units], ex.gold, d)
        tokens, per_layer = retriever.head_token_scores(ex.query, text, selection)
        rows = np.concatenate([per_layer[layer].double().cpu().numpy() for layer in sorted(per_layer)], axis=0)
        lo, hi = scoring.unit_token_ranges(tokens.offsets, [(u.start, u.end) for u in units])
        unit_scores.append(scoring.pool(rows, lo, hi, att.pooling, att.topk, att.threshold_std))
        gold_mask.append(np.isin(np.arange(len(units)), sorted(gold)))
    scores = np.concatenate(unit_scores, axis=1)  # [heads, units]
    relevant = np.concatenate(gold_mask)
    if not relevant.any():
        return None
    if metric == "gold_score":
        return scores[:, relevant].sum(axis=1)
    return _ndcg_rows(scores, relevant, k)


def _ndcg_rows(scores: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """nDCG@k of every row's ranking (binary gains), vectorised over heads."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    dcg = (relevant[top] * discounts).sum(axis=1)
    ideal = discounts[: min(int(relevant.sum()), k)].sum()
    return dcg / ideal
