"""Prune long documents to a reader's token budget: the units a query needs, their context, in document order.

A LongRAG-style reader gets long retrieval units (sections, whole documents) but has a smaller budget. `prune` scores
every unit once with the retriever (`AttentionRetriever.score_units`) and keeps, within `budget_tokens` counted
under the reader's tokenizer:

1. *direct* units, best fused score first, up to the budget minus the entity share;
2. *entity* background: the units the retriever pulled in through the query's top entities (the `entity:NAME`
   reasons of its hits), in the retriever's order, up to the whole budget;
3. more direct units with whatever is left (an unused entity share is not wasted).

Each kept unit brings its `neighbours` (that many units on each side; within the paragraph for sentences) or is not
kept at all. Kept units are rendered in document order; contiguous ones keep the original text between them, and
`marker` stands wherever text was cut between two kept pieces (not before the first or after the last). The budget
counts the markers too and is never exceeded: the selection runs on per-unit token estimates, then the final text
is counted exactly and units are dropped (last chosen first) or added (next candidates) until it fits.

Edge cases (see docs/pruning.md): a budget that is not a positive int raises; a document whose whole text fits the
budget comes back unchanged (status "whole"); a blank document has no units and gives an empty text (status
"no_units"); when no unit fits, the best unit is cut at the last word boundary that fits (status "truncated"), and
if not even its first word fits the result is empty (status "nothing_fits").
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared_core.document import Document, default_id
from shared_core.tasks.pruned import (
    Granularity,
    KeptSpan,
    PrunedDocument,
    PruneOptions,
    TokenCounter,
    check_budget,
    trivial_result,
)
from shared_core.tasks.pruning_selection import prune_hits, prune_scores
from shared_core.text.segmentation import is_heading
from shared_core.validation import check_query, coerce_documents

if TYPE_CHECKING:
    from shared_core.tasks.scorer import Scorer

logger = logging.getLogger(__name__)

__all__ = [
    "KeptSpan",
    "PruneOptions",
    "PrunedDocument",
    "TokenCounter",
    "check_budget",
    "prune",
    "prune_hits",
    "prune_scores",
    "reader_counter",
]


@functools.lru_cache(maxsize=8)
def load_reader_tokenizer(name: str) -> Any:
    """A reader's tokenizer by hub id or local folder (`AutoTokenizer.from_pretrained`; offline hubs need it cached)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"cannot load reader tokenizer {name!r}: {exc}. Give a local folder, a hub id in the local Hugging Face "
            "cache, a tokenizer object, or None for the scoring model's tokenizer."
        ) from exc


def reader_counter(retriever: Scorer, reader_tokenizer: Any = None) -> TokenCounter:
    """The counter for `reader_tokenizer` (None = the scoring model's tokenizer, a str = a name to load)."""
    if reader_tokenizer is None:
        return TokenCounter(retriever.model.tokenizer)
    if isinstance(reader_tokenizer, str):
        return TokenCounter(load_reader_tokenizer(reader_tokenizer))
    return TokenCounter(reader_tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# The retriever-facing entry point

_derived: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_derived_lock = threading.Lock()


def scoring_retriever(retriever: Scorer, unit: Granularity | None) -> Scorer:
    """`retriever` itself, or (once per retriever and unit) a sibling whose units are `unit`, sharing its caches."""
    if unit is None or retriever.config.units.granularity == unit:
        return retriever
    with _derived_lock:
        per = _derived.setdefault(retriever, {})
        other = per.get(unit)
        if other is None:
            config = retriever.config
            other = retriever.sibling(
                config.model_copy(update={"units": config.units.model_copy(update={"granularity": unit})})
            )
            per[unit] = other
        return other


def prune(
    retriever: Scorer,
    query: str,
    documents: Sequence[str | Document],
    budget_tokens: int,
    options: PruneOptions | None = None,
    **given: Any,
) -> list[PrunedDocument]:
    """Prune each of `documents` to `budget_tokens` reader tokens for `query` (one result per document, in order).

    How to prune is `options`, or its fields given as keywords (`unit=`, `neighbours=`, `marker=`, `entity_share=`,
    `reader_tokenizer=`). Each document is scored on its own (`score_units`); see the module docstring.
    """
    check_query(query)
    budget = check_budget(budget_tokens)
    if options is None:
        unknown = set(given) - {f.name for f in dataclasses.fields(PruneOptions)}
        if unknown:
            raise TypeError(f"unknown pruning option(s) {sorted(unknown)}; see shared_core.tasks.pruning.PruneOptions")
        options = PruneOptions(**given)
    elif given:
        raise TypeError("give pruning options either as `options=PruneOptions(...)` or as keywords, not both")
    elif not isinstance(options, PruneOptions):
        raise TypeError(f"options must be a PruneOptions, got {type(options).__name__}")
    docs = coerce_documents(documents, allow_blank=True)
    scorer = scoring_retriever(retriever, options.unit)
    counter = reader_counter(retriever, options.reader_tokenizer)
    granularity = scorer.config.units.granularity
    out = []
    for index, doc in enumerate(docs):
        doc_id = doc.id if doc.id is not None else default_id(doc.text)
        early = trivial_result(doc.text, budget, counter, doc_id, index)
        if early is not None:
            out.append(early)
            continue
        units = scorer.units(doc)
        hits = scorer.score_units(query, doc)
        merge = scorer.config.units.merge_headings
        headings = {k for k, unit in enumerate(units) if merge and is_heading(unit.text)}
        out.append(
            prune_hits(
                doc.text,
                units,
                hits,
                budget,
                counter,
                last=headings if len(headings) < len(units) else (),
                neighbours=options.neighbours,
                marker=options.marker,
                entity_share=options.entity_share,
                granularity=granularity,
                document_id=doc_id,
                document_index=index,
            )
        )
    return out
