"""AttentionRetriever: score the units of long documents by the attention a causal LM's query pays them.

A facade over four steps, each in its own module: analyse a document once (units, embeddings, entities, BM25
index), compute each view's per-unit scores (`attention_engine` for the attention view, `dense`, `lexical`), rank
(`ranking`: fusion, entity expansion, reasons) and return hits. Every call goes through the many-query path
(`score_all_many`): one read of each document serves all the queries of a call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from shared_core.config import RetrieverConfig
from shared_core.document import Document, Hit, Unit, default_id
from shared_core.engine import scoring
from shared_core.engine.attention_engine import CALIBRATION_QUERY, PREFILL_CHUNK, AttentionEngine
from shared_core.engine.heads import HeadSelection
from shared_core.engine.prompt import DocumentTokens
from shared_core.models.loading import LoadedModel
from shared_core.tasks.explain import Explanation, build_explanation
from shared_core.text.segmentation import is_heading, units_from_spans
from shared_core.validation import check_queries, check_query, check_top_k, coerce_document, coerce_documents
from shared_core.views import ViewContext, ranking, read_ahead, score_views
from shared_core.views.analysis import Analyser, Analysis
from shared_core.views.builtin import build_views
from shared_core.views.dense import DenseScorer
from shared_core.views.entities import EntityIndex
from shared_core.views.model_fusion import ModelFusion, model_fusion

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["CALIBRATION_QUERY", "PREFILL_CHUNK", "AttentionRetriever"]


class AttentionRetriever:
    """Retrieve the sentences/paragraphs of long documents that a query needs, by reading the model's attention.

    Thread-safe: the document caches are never mutated by a query, so concurrent calls on one instance
    give the same results as serial ones.
    """

    def __init__(
        self,
        config: RetrieverConfig | dict[str, Any] | str | Path | None = None,
        *,
        trust_remote_code: bool = False,
    ) -> None:
        """`trust_remote_code=True` lets transformers run a hub model's own Python files; only code can grant it
        (or the environment variable ATTNRET_TRUST_REMOTE_CODE=1), never a config, which is shared data."""
        self.config = RetrieverConfig.coerce(config)
        if not isinstance(trust_remote_code, bool):
            raise TypeError(f"trust_remote_code must be a bool, got {type(trust_remote_code).__name__}")
        self.trust_remote_code = trust_remote_code
        self.engine = self._build_engine()
        # the fusion in use for documents and candidate sets, and the candidates' calibration: under
        # `fusion.weights: auto` the model's shipped ones (`views.model_fusion`)
        self.fusion: ModelFusion = model_fusion(self.config)
        self._dense = DenseScorer(self.config.dense)
        self.views = build_views(ViewContext(self.config, self.engine, self._dense))
        self.analyser = Analyser(self.config, self.views)

    # ----------------------------------------------------------------- setup
    def warm_up(self) -> None:
        """Load the model, prompt layout and head selection (idempotent, thread-safe)."""
        self.engine.warm_up()

    @property
    def stats(self) -> dict[str, int]:
        """Work counters (documents prefilled, query passes, cascade passes and replays, tokens run)."""
        return self.engine.stats

    @property
    def model(self) -> LoadedModel:
        """The loaded model (loads it on first use)."""
        return self.engine.model

    @property
    def head_selection(self) -> HeadSelection:
        """The (layer, head) pairs this retriever reads."""
        return self.engine.head_selection

    @property
    def prompt_key(self) -> str:
        """Identifies the prompt template (head sets and caches depend on it)."""
        return self.engine.prompt.key

    @property
    def dense(self) -> DenseScorer:
        """The dense (sentence-embedding) scorer of this retriever's `dense` config section."""
        return self._dense

    @property
    def window(self) -> int:
        """Longest prompt (document + query part) in tokens."""
        return self.engine.window

    # ----------------------------------------------------------------- public API
    def units(self, document: str | Document) -> list[Unit]:
        """The units (sentences or paragraphs, per config) of a document, with exact char offsets."""
        return list(self.analyser.analyse(coerce_document(document, 0)).units)

    def retrieve(self, query: str, documents: Sequence[str | Document], top_k: int = 10) -> list[Hit]:
        """The `top_k` best units across `documents`, each document scored in its own context.

        With several documents, a unit's score is its within-document score scaled by its document's
        score relative to the others (0.5 + 0.5·doc score), so the best document's hits come first among equals.
        """
        return self.retrieve_many([check_query(query)], documents, top_k)[0]

    def retrieve_many(
        self, queries: Sequence[str], documents: Sequence[str | Document], top_k: int = 10
    ) -> list[list[Hit]]:
        """For each query, what `retrieve(query, documents, top_k)` returns; each document is read once for all."""
        check_top_k(top_k)
        return [ranking.top_hits(self._slotted(per_doc), top_k) for per_doc in self.score_all_many(queries, documents)]

    def explain(self, query: str, documents: Sequence[str | Document], top_k: int = 10) -> Explanation:
        """Every unit's per-view scores, the top hits and the entity links: the data of `attnret explain`."""
        check_top_k(top_k)
        per_doc = self.score_all(query, documents)
        docs = coerce_documents(documents)
        indexes = [self.analyser.analyse(d).entities for d in docs]
        return build_explanation(query, docs, per_doc, ranking.top_hits(self._slotted(per_doc), top_k), indexes)

    def _slotted(self, per_doc: list[list[Hit]]) -> list[list[Hit]]:
        """The hits that compete for result slots: with `units.merge_headings`, a document's heading-only units
        (`is_heading`: a heading paragraph) leave the race, unless the document has nothing else."""
        if not self.config.units.merge_headings:
            return per_doc
        return [[h for h in hits if not is_heading(h.text)] or hits for hits in per_doc]

    def score_units(self, query: str, document: str | Document) -> list[Hit]:
        """Every unit of `document` with its scores, in document order (for explanation and benchmarks)."""
        return self.score_units_many([check_query(query)], document)[0]

    def score_units_many(self, queries: Sequence[str], document: str | Document) -> list[list[Hit]]:
        """For each query, what `score_units(query, document)` returns; the document is read once for all."""
        queries = check_queries(queries)
        doc = coerce_document(document, 0)
        return [hits for hits, _ in self._score_many(queries, doc, 0)]

    def score_all(self, query: str, documents: Sequence[str | Document]) -> list[list[Hit]]:
        """Every unit of every document (document order), scored as `retrieve` scores them."""
        return self.score_all_many([check_query(query)], documents)[0]

    def score_all_many(self, queries: Sequence[str], documents: Sequence[str | Document]) -> list[list[list[Hit]]]:
        """The batch entry point: per query, every unit of every document, each document read once for all queries.

        With several documents each query's hits are scaled by its document's score relative to the others.
        """
        queries = check_queries(queries)
        docs = coerce_documents(documents)
        per_query: list[list[list[Hit]]] = [[] for _ in queries]
        views: list[list[dict[str, np.ndarray]]] = [[] for _ in queries]
        bar = tqdm(docs, desc="documents", disable=not self.config.show_progress or len(docs) < 2)
        for i, doc in enumerate(bar):
            for j, (hits, doc_views) in enumerate(self._score_many(queries, doc, i)):
                per_query[j].append(hits)
                views[j].append(doc_views)
        for per_doc, query_views in zip(per_query, views, strict=True):
            ranking.scale_by_document(per_doc, query_views, self.fusion.documents)
        return per_query

    def score_spans(self, query: str, document: str | Document, spans: Sequence[tuple[int, int]]) -> list[float]:
        """Fused score (attention, and dense and lexical when enabled) of caller-given char spans of `document`."""
        check_query(query)
        doc = coerce_document(document, 0)
        units = units_from_spans(doc.text, spans)
        states, reads = self._read_alongside([query], doc, lambda: self._prepare(doc, units), fresh=True)
        scored = score_views(self.views, [query], doc, units, states, reads)[0]
        return [float(x) for x in ranking.fuse_views(scored, self.fusion.documents)]

    def prune(self, query: str, documents: Sequence[str | Document], budget_tokens: int, **options: Any) -> list[Any]:
        """Each document cut to `budget_tokens` reader tokens, order kept: see `shared_core.tasks.pruning.prune`."""
        from shared_core.tasks.pruning import prune

        return prune(self, query, documents, budget_tokens, **options)

    def score_candidates(self, query: str, candidates: Sequence[Any], **options: Any) -> list[Hit]:
        """Every candidate of one query read in one prompt, scored on absolute [0, 1] scales, in input order:
        see `shared_core.tasks.candidates.score_candidates` (what a reranker needs)."""
        from shared_core.tasks.candidates import score_candidates

        return score_candidates(self, query, candidates, **options)

    def score_documents(self, query: str, documents: Sequence[str | Document]) -> list[float]:
        """One score per document for reranking whole documents, relative to the documents given together."""
        check_query(query)
        docs = coerce_documents(documents)
        views = [self._views([query], d)[1][0] for d in docs]
        return ranking.document_scores(views, self.fusion.documents)

    def entity_index(self, document: str | Document) -> EntityIndex | None:
        """The document's entity index (None when entities are disabled)."""
        return self.analyser.analyse(coerce_document(document, 0)).entities

    def token_scores(
        self, query: str, document: str | Document, candidates: bool = False
    ) -> tuple[DocumentTokens, np.ndarray]:
        """Aggregated (and calibrated) attention score of each document token, aligned to `tokens.offsets`;
        `candidates`: the document is a candidate set (read without a query adapter kept to documents)."""
        selection = self.engine.head_selection
        if candidates:
            selection = selection.for_candidates()
        doc = coerce_document(document, 0)
        tokens, per_query = self.engine.head_token_scores([check_query(query)], doc, selection)
        return tokens, scoring.aggregate_heads(per_query[0], self.config.attention.head_aggregation, selection.weights)

    def head_token_scores(
        self, query: str, document: str | Document, selection: HeadSelection
    ) -> tuple[DocumentTokens, dict[int, torch.Tensor]]:
        """Per layer, the (calibrated) score of every document token for each selected head: {layer: [H_sel, n]}.

        `selection` may name any heads up to this retriever's deepest layer (head detection reads all of them).
        Documents past the window (or the memory budget) go through the cascading KV cache.
        """
        tokens, per_query = self.engine.head_token_scores([check_query(query)], coerce_document(document, 0), selection)
        return tokens, per_query[0]

    def share_caches(self, other: AttentionRetriever) -> None:
        """Use `other`'s document caches, e.g. to compare configs without prefilling twice.

        Safe because cache keys hold everything the cached state depends on (model, device, template,
        deepest layer, unit and view settings, text).
        """
        self.engine.share(other.engine)
        self.analyser.share(other.analyser)

    def sibling(self, config: RetrieverConfig) -> AttentionRetriever:
        """A retriever with `config` (e.g. another unit granularity) that shares this one's caches and remote-code
        grant: the prefilled documents are reused wherever the new config reads the same state."""
        other = AttentionRetriever(config, trust_remote_code=self.trust_remote_code)
        other.share_caches(self)
        return other

    def clear_cache(self) -> None:
        """Drop every prefilled and analysed document and every kept cascade pass held in memory."""
        self.engine.clear()
        self.analyser.clear()

    # ----------------------------------------------------------------- internals
    def _build_engine(self) -> AttentionEngine:
        """The attention engine the views read through (a subclass may read attention another way)."""
        return AttentionEngine(self.config, self.trust_remote_code)

    def _views(self, queries: list[str], doc: Document) -> tuple[Analysis, list[dict[str, np.ndarray]]]:
        """The document's analysis and, per query, each view's unit scores; a new document is analysed while the
        model reads it."""
        fresh = not self.analyser.cached(doc)
        if fresh and self.config.overlap_analysis:
            self.analyser.warm_up()  # a missing spaCy pipeline is reported before the model reads anything
        analysis, reads = self._read_alongside(queries, doc, lambda: self.analyser.analyse(doc), fresh)
        return analysis, score_views(self.views, queries, doc, list(analysis.units), analysis.states, reads)

    def _read_alongside(
        self, queries: list[str], doc: Document, work: Callable[[], T], fresh: bool
    ) -> tuple[T, dict[str, Any]]:
        """`work()` (views' `prepare`, with or without an analysis) and, when it is new work and `overlap_analysis`
        is on, the views' reads beside it (`views.read_ahead`); otherwise `work()` alone and no reads (each view
        reads when it scores). The dense encoder is loaded first, so a missing one is reported before any read."""
        if fresh and self.config.overlap_analysis:
            if self.config.dense.enabled:
                self.dense.warm_up()
            return read_ahead(self.views, queries, doc, work)
        return work(), {}

    def _prepare(self, doc: Document, units: Sequence[Unit]) -> dict[str, Any]:
        return {name: view.prepare(doc, units) for name, view in self.views.items()}

    def _score_many(
        self, queries: list[str], doc: Document, index: int
    ) -> list[tuple[list[Hit], dict[str, np.ndarray]]]:
        """Per query, every unit of `doc` as a hit (document order) and the views it was ranked from."""
        analysis, per_query = self._views(queries, doc)
        doc_id = doc.id if doc.id is not None else default_id(doc.text)
        cfg = self.config
        out = []
        for query, views in zip(queries, per_query, strict=True):
            ranked = ranking.rank_units(
                views, analysis.units, analysis.entities, self.fusion.documents, cfg.entities, query
            )
            out.append((ranked.hits(analysis.units, doc_id, index), views))
        return out
