"""AttentionRetriever: score the units of long documents by the attention a causal LM's query pays them."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import capture, ranking, scoring
from .cascade import ModelShape, cascade_needed
from .cascade_scoring import cascade_token_scores
from .config import RetrieverConfig
from .dense import DenseScorer
from .document import Document, Hit, Unit
from .entities import EntityIndex, load_nlp
from .explain import Explanation, build_explanation
from .heads import HeadSelection, select_heads
from .kv_store import KVStore
from .lexical import LexicalIndex
from .model_loading import LoadedModel, forward_with_cache, load_model, model_id
from .prompt import DocumentTokens, PromptLayout
from .segmentation import segment, units_from_spans
from .validation import check_queries, check_query, check_top_k, coerce_document, coerce_documents

logger = logging.getLogger(__name__)

CALIBRATION_QUERY = "N/A"
PREFILL_CHUNK = 8192
"""Tokens per prefill step: bounds activation memory on long windows. A document within one step goes in one causal
pass (SDPA's fast path; 2,048-token steps against the cache were ~10 % slower at 7k tokens on CPU)."""


@dataclass(frozen=True)
class _Analysis:
    """What is computed once per document text, whatever the query: units, embeddings, entities."""

    units: tuple[Unit, ...]
    embeddings: np.ndarray | None
    entities: EntityIndex | None
    lexical: LexicalIndex | None


@dataclass(frozen=True)
class _Prefilled:
    """A document read once by the model: its KV cache (up to the deepest layer used) and token alignment."""

    cache: Any
    tokens: DocumentTokens


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
        self._loaded: LoadedModel | None = None
        self._layout: PromptLayout | None = None
        self._selection: HeadSelection | None = None
        self._store: KVStore[_Prefilled] = KVStore(self.config.attention.kv_cache_size)
        self._analyses: KVStore[_Analysis] = KVStore(max(self.config.attention.kv_cache_size, 32))
        self._tokens: KVStore[DocumentTokens] = KVStore(max(self.config.attention.kv_cache_size, 32))
        # scores of documents past the window, per (document, query, heads): a cascade pass cannot be reused for
        # another query, but the same query on the same document (another top_k, another view mix) needs no new pass
        self._cascade_results: KVStore[dict[int, torch.Tensor]] = KVStore(max(self.config.attention.kv_cache_size, 8))
        self._dense = DenseScorer(self.config.dense)
        self._init_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.stats: dict[str, int] = dict.fromkeys(
            ("prefills", "prefill_tokens", "query_passes", "query_tokens", "cascade_passes", "cascade_tokens"), 0
        )

    # ----------------------------------------------------------------- setup
    def warm_up(self) -> None:
        """Load the model, prompt layout and head selection (idempotent, thread-safe)."""
        if self._loaded is not None:
            return
        with self._init_lock:
            if self._loaded is not None:
                return
            loaded = load_model(self.config.model, trust_remote_code=self.trust_remote_code)
            self._layout = PromptLayout(loaded.tokenizer, self.config.model.prompt, self.config.model.instruction)
            self._selection = select_heads(
                self.config.attention, loaded.num_layers, loaded.num_heads, model_id(self.config.model)
            )
            self._loaded = loaded

    @property
    def model(self) -> LoadedModel:
        """The loaded model (loads it on first use)."""
        self.warm_up()
        assert self._loaded is not None
        return self._loaded

    @property
    def head_selection(self) -> HeadSelection:
        """The (layer, head) pairs this retriever reads."""
        self.warm_up()
        assert self._selection is not None
        return self._selection

    @property
    def prompt_key(self) -> str:
        """Identifies the prompt template (head sets and caches depend on it)."""
        self.warm_up()
        assert self._layout is not None
        return self._layout.key

    @property
    def dense(self) -> DenseScorer:
        """The dense (sentence-embedding) scorer of this retriever's `dense` config section."""
        return self._dense

    @property
    def window(self) -> int:
        """Longest prompt (document + query part) in tokens."""
        return self.config.model.max_tokens or self.model.max_positions

    # ----------------------------------------------------------------- public API
    def units(self, document: str | Document) -> list[Unit]:
        """The units (sentences or paragraphs, per config) of a document, with exact char offsets."""
        return list(self._analysis(coerce_document(document, 0)).units)

    def retrieve(self, query: str, documents: Sequence[str | Document], top_k: int = 10) -> list[Hit]:
        """The `top_k` best units across `documents`, each document scored in its own context.

        With several documents, a unit's score is its within-document score scaled by its document's
        score relative to the others (0.5 + 0.5·doc score), so the best document's hits come first among equals.
        """
        check_query(query)
        check_top_k(top_k)
        hits = [h for per_doc in self.score_all(query, documents) for h in per_doc]
        hits.sort(key=lambda h: (-h.score, h.document_index, h.start))
        return hits[:top_k]

    def retrieve_many(
        self, queries: Sequence[str], documents: Sequence[str | Document], top_k: int = 10
    ) -> list[list[Hit]]:
        """For each query, what `retrieve(query, documents, top_k)` returns; each document is read once for all."""
        check_top_k(top_k)
        return [self.retrieve(q, documents, top_k) for q in check_queries(queries)]

    def explain(self, query: str, documents: Sequence[str | Document], top_k: int = 10) -> Explanation:
        """Every unit's per-view scores, the top hits and the entity links: the data of `attnret explain`."""
        check_top_k(top_k)
        per_doc = self.score_all(query, documents)
        hits = sorted((h for d in per_doc for h in d), key=lambda h: (-h.score, h.document_index, h.start))[:top_k]
        docs = coerce_documents(documents)
        indexes = [self._analysis(d).entities for d in docs]
        named = [d if d.id is not None else Document(text=d.text, id=str(i), meta=d.meta) for i, d in enumerate(docs)]
        return build_explanation(query, named, per_doc, hits, indexes)

    def score_units(self, query: str, document: str | Document) -> list[Hit]:
        """Every unit of `document` with its scores, in document order (for explanation and benchmarks)."""
        check_query(query)
        return self._score_document(query, coerce_document(document, 0), 0)[0]

    def score_units_many(self, queries: Sequence[str], document: str | Document) -> list[list[Hit]]:
        """For each query, what `score_units(query, document)` returns; the document is read once for all."""
        return [self.score_units(q, document) for q in check_queries(queries)]

    def score_all(self, query: str, documents: Sequence[str | Document]) -> list[list[Hit]]:
        """Every unit of every document (document order), scored as `retrieve` scores them."""
        check_query(query)
        docs = coerce_documents(documents)
        per_doc, views = [], []
        for i, doc in enumerate(tqdm(docs, desc="documents", disable=not self.config.show_progress or len(docs) < 2)):
            hits, doc_views = self._score_document(query, doc, i)
            per_doc.append(hits)
            views.append(doc_views)
        if len(docs) > 1:
            for hits, weight in zip(per_doc, ranking.document_scores(views, self.config.fusion), strict=True):
                for h in hits:
                    h.scores["document"] = weight
                    h.score *= 0.5 + 0.5 * weight
        return per_doc

    def score_spans(self, query: str, document: str | Document, spans: Sequence[tuple[int, int]]) -> list[float]:
        """Fused score (attention, and dense and lexical when enabled) of caller-given char spans of `document`."""
        check_query(query)
        doc = coerce_document(document, 0)
        units = units_from_spans(doc.text, [tuple(s) for s in spans])  # type: ignore[misc]
        lex = self.config.lexical
        lexical = LexicalIndex.build([u.text for u in units], lex) if lex.enabled else None
        views = self._views(query, doc, _Analysis(tuple(units), None, None, lexical))
        return [float(x) for x in ranking.fuse_views(views, self.config.fusion)]

    def prune(self, query: str, documents: Sequence[str | Document], budget_tokens: int, **options: Any) -> list[Any]:
        """Each document cut to `budget_tokens` reader tokens, order kept: see `shared_core.pruning.prune`."""
        from .pruning import prune

        return prune(self, query, documents, budget_tokens, **options)

    def score_documents(self, query: str, documents: Sequence[str | Document]) -> list[float]:
        """One score per document for reranking whole documents, relative to the documents given together."""
        check_query(query)
        docs = coerce_documents(documents)
        views = []
        for d in docs:
            views.append(self._views(query, d, self._analysis(d)))
        return ranking.document_scores(views, self.config.fusion)

    def entity_index(self, document: str | Document) -> EntityIndex | None:
        """The document's entity index (None when entities are disabled)."""
        return self._analysis(coerce_document(document, 0)).entities

    def share_caches(self, other: AttentionRetriever) -> None:
        """Use `other`'s document caches, e.g. to compare configs without prefilling twice.

        Safe because cache keys hold everything the cached state depends on (model, device, template,
        deepest layer, unit and view settings, text).
        """
        self._store = other._store
        self._analyses = other._analyses
        self._tokens = other._tokens
        self._cascade_results = other._cascade_results

    def clear_cache(self) -> None:
        """Drop every prefilled and analysed document."""
        self._store.clear()
        self._analyses.clear()
        self._tokens.clear()
        self._cascade_results.clear()

    # ----------------------------------------------------------------- internals
    def _analysis(self, doc: Document) -> _Analysis:
        """Units, unit embeddings and entity index of a document, computed once and cached with it."""
        cfg = self.config
        entity_key = (cfg.entities.spacy_model, cfg.entities.labels, cfg.entities.match_names)
        key = (
            doc.content_hash,
            cfg.units.model_dump_json(),
            cfg.dense.model_dump_json(),
            cfg.lexical.model_dump_json(),
            str(entity_key),
        )

        def build() -> _Analysis:
            u = cfg.units
            units = segment(doc.text, u.granularity, u.spacy_model, u.min_chars)
            embeddings = self._dense.embed([x.text for x in units]) if cfg.dense.enabled else None
            entities = None
            if cfg.entities.enabled:
                nlp = load_nlp(cfg.entities.spacy_model)
                entities = EntityIndex.build(
                    doc.text, units, nlp, labels=cfg.entities.labels, match_names=cfg.entities.match_names
                )
            lexical = LexicalIndex.build([x.text for x in units], cfg.lexical) if cfg.lexical.enabled else None
            return _Analysis(units=tuple(units), embeddings=embeddings, entities=entities, lexical=lexical)

        return self._analyses.get_or_create(key, build)

    def _views(self, query: str, doc: Document, analysis: _Analysis) -> dict[str, np.ndarray]:
        """Raw per-unit score of each enabled view."""
        units, embeddings = analysis.units, analysis.embeddings
        views = {"attention": self._attention_view(query, doc, list(units))}
        if self.config.dense.enabled:
            views["dense"] = self._dense.score(query, embeddings if embeddings is not None else [u.text for u in units])
        if analysis.lexical is not None:
            views["lexical"] = analysis.lexical.score(query)
        return views

    def _score_document(self, query: str, doc: Document, index: int) -> tuple[list[Hit], dict[str, np.ndarray]]:
        analysis = self._analysis(doc)
        units = analysis.units
        views = self._views(query, doc, analysis)
        ranked = ranking.rank_units(views, units, analysis.entities, self.config.fusion, self.config.entities, query)
        doc_id = doc.id if doc.id is not None else str(index)
        hits = []
        for k, u in enumerate(units):
            scores = {name: float(v[k]) for name, v in views.items()}
            scores["fused"] = float(ranked.fused[k])
            if k in ranked.expansions:
                scores["entity"] = ranked.expansions[k].entity_score
            hits.append(
                Hit(
                    document_id=doc_id,
                    document_index=index,
                    start=u.start,
                    end=u.end,
                    text=u.text,
                    score=float(ranked.final[k]),
                    scores=scores,
                    reasons=ranked.reasons[k],
                    unit_index=u.index,
                )
            )
        return hits, views

    def _attention_view(self, query: str, doc: Document, units: list[Unit]) -> np.ndarray:
        """Calibrated, pooled attention per unit, in multiples of a uniform share (1/n per token).

        Scaling by the document's token count makes the view comparable across documents of any length.
        """
        att = self.config.attention
        tokens, token_scores = self.token_scores(query, doc)
        token_scores = token_scores * tokens.n_doc_tokens
        lo, hi = scoring.unit_token_ranges(tokens.offsets, [(u.start, u.end) for u in units])
        return scoring.pool(token_scores, lo, hi, att.pooling, att.topk, att.threshold_std)

    def token_scores(self, query: str, document: str | Document) -> tuple[DocumentTokens, np.ndarray]:
        """Aggregated (and calibrated) attention score of each document token, aligned to `tokens.offsets`."""
        tokens, per_layer = self.head_token_scores(query, document, self.head_selection)
        return tokens, scoring.aggregate_heads(per_layer, self.config.attention.head_aggregation)

    def head_token_scores(
        self, query: str, document: str | Document, selection: HeadSelection
    ) -> tuple[DocumentTokens, dict[int, torch.Tensor]]:
        """Per layer, the (calibrated) score of every document token for each selected head: {layer: [H_sel, n]}.

        `selection` may name any heads up to this retriever's deepest layer (head detection reads all of them).
        Documents past the window (or the memory budget) go through the cascading KV cache.
        """
        doc = coerce_document(document, 0)
        if selection.deepest > self.head_selection.deepest:
            raise ValueError("selection reaches past the deepest layer this retriever's cache holds")
        tokens = self._document_tokens(doc)
        if self._needs_cascade(tokens, query):
            return tokens, self._cascade_scores(doc, tokens, query, selection)
        prefilled = self._prefilled(doc)
        per_layer = self._query_pass(prefilled, query, selection)
        if self.config.attention.calibration:
            baseline = self._query_pass(prefilled, CALIBRATION_QUERY, selection)
            per_layer = {k: v - baseline[k] for k, v in per_layer.items()}
        return prefilled.tokens, per_layer

    def _document_tokens(self, doc: Document) -> DocumentTokens:
        """The document part of the prompt, tokenized once per text (cached)."""
        key = ("tokens", self.model.name, self.prompt_key, doc.content_hash)
        return self._tokens.get_or_create(key, lambda: self._layout.document(doc.text))  # type: ignore[union-attr]

    def _needs_cascade(self, tokens: DocumentTokens, query: str) -> bool:
        """Whether this document + query must be read through the cascading cache (config, window, budget)."""
        q = self._layout.query(query, self.config.attention.query_rows)  # type: ignore[union-attr]
        n = len(tokens.ids) + len(q.ids)
        m = self.model
        return cascade_needed(
            n,
            self.config.cascade,
            ModelShape.of(m.model),
            max_tokens=self.window,
            layers_used=self.head_selection.deepest + 1,
            dtype_bytes=torch.finfo(m.dtype).bits // 8,
        )

    def _cascade_scores(
        self, doc: Document, tokens: DocumentTokens, query: str, selection: HeadSelection
    ) -> dict[int, torch.Tensor]:
        """Resident scoring through the cascading cache: the query (and "N/A") run against every chunk.

        One document pass per new query: the KV store cannot hold a document longer than the window. The result is
        kept per (document, query, heads, cascade and attention settings); callers get their own copy.
        """
        m, att = self.model, self.config.attention
        key = (
            m.name,
            str(m.device),
            str(m.dtype),
            self.prompt_key,
            doc.content_hash,
            query,
            tuple(selection.per_layer.items()),
            att.calibration,
            att.query_rows,
            self.config.cascade.model_dump_json(),
        )
        kept = self._cascade_results.get_or_create(key, lambda: self._cascade_pass(tokens, query, selection))
        return {layer: scores.clone() for layer, scores in kept.items()}

    def _cascade_pass(self, tokens: DocumentTokens, query: str, selection: HeadSelection) -> dict[int, torch.Tensor]:
        """One strided pass of the document through the cascading cache for `query` (see `_cascade_scores`)."""
        layout, att, loaded = self._layout, self.config.attention, self.model
        queries = [query, CALIBRATION_QUERY] if att.calibration else [query]
        suffixes = [layout.query(q, att.query_rows) for q in queries]  # type: ignore[union-attr]
        n_doc = tokens.n_doc_tokens
        bar = tqdm(total=len(tokens.ids), desc="cascade", unit="tok", disable=not self.config.show_progress)

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        try:
            res = cascade_token_scores(
                loaded.model,
                torch.tensor(tokens.ids, dtype=torch.long),
                [(torch.tensor(q.ids, dtype=torch.long), torch.tensor(q.rows, dtype=torch.long)) for q in suffixes],
                selection.layers,
                self.config.cascade,
                progress=progress,
            )
        finally:
            bar.close()
        self._count(cascade_passes=1, cascade_tokens=len(tokens.ids))
        out: dict[int, torch.Tensor] = {}
        for i in range(len(queries)):
            for layer, probs in res.per_layer(i).items():
                heads = selection.per_layer[layer]
                part = probs[:, tokens.doc_start : tokens.doc_start + n_doc]
                if heads is not None:
                    part = part[list(heads)]
                out[layer] = part if i == 0 else out[layer] - part
        return out

    def _prefilled(self, doc: Document) -> _Prefilled:
        self.warm_up()
        m = self.model
        key = (m.name, str(m.device), str(m.dtype), self.prompt_key, self.head_selection.deepest, doc.content_hash)
        return self._store.get_or_create(key, lambda: self._prefill(doc))

    def _count(self, **increments: int) -> None:
        """Add to the work counters in `stats` (tokens run through the model), which tests and benchmarks read."""
        with self._stats_lock:
            for k, v in increments.items():
                self.stats[k] += v

    @torch.inference_mode()
    def _prefill(self, doc: Document) -> _Prefilled:
        """Run the document part once, up to the deepest layer used, keeping its KV cache."""
        from transformers import DynamicCache

        loaded = self.model
        tokens = self._document_tokens(doc)
        if len(tokens.ids) >= self.window:  # the query part is checked exactly when it runs (`_query_pass`)
            name = f"document {doc.id!r}" if doc.id else "the document"
            raise ValueError(
                f"{name} is {len(tokens.ids)} tokens; with the query it exceeds the model window "
                f"of {self.window} tokens ({loaded.name}). Split it, raise model.max_tokens if the model allows, "
                "or set cascade.enabled to 'auto' or true to read it through the cascading KV cache."
            )
        cache = DynamicCache(config=loaded.model.config)
        ids = torch.tensor([tokens.ids], device=loaded.device)
        observer = scoring.StopAtObserver(self.head_selection.deepest)
        steps = range(0, ids.shape[1], PREFILL_CHUNK)
        with capture.observing(observer):
            for s in tqdm(steps, desc="prefill", disable=not self.config.show_progress or len(steps) < 2):
                _run(loaded, ids[:, s : s + PREFILL_CHUNK], cache)
        self._count(prefills=1, prefill_tokens=len(tokens.ids))
        return _Prefilled(cache=cache, tokens=tokens)

    @torch.inference_mode()
    def _query_pass(self, prefilled: _Prefilled, query: str, selection: HeadSelection) -> dict[int, torch.Tensor]:
        """Run only the query part against a copy-on-write view of the cached document."""
        loaded = self.model
        q = self._layout.query(query, self.config.attention.query_rows)  # type: ignore[union-attr]
        n_prefix = len(prefilled.tokens.ids)
        if n_prefix + len(q.ids) > self.window:
            raise ValueError(
                f"document ({n_prefix} tokens) plus query ({len(q.ids)} tokens) exceed the model window of "
                f"{self.window} tokens; shorten the query or the document"
            )
        observer = scoring.RowObserver(selection, torch.tensor(q.rows, dtype=torch.long))
        with capture.observing(observer):
            _run(loaded, torch.tensor([q.ids], device=loaded.device), _fork(prefilled.cache))
        self._count(query_passes=1, query_tokens=len(q.ids))
        return scoring.document_token_scores(
            observer.captured, n_prefix + len(q.ids), prefilled.tokens.doc_start, prefilled.tokens.n_doc_tokens
        )


def _run(loaded: LoadedModel, input_ids: torch.Tensor, cache: Any) -> None:
    """Forward through the decoder (no LM head) until the active observer stops it."""
    try:
        forward_with_cache(loaded.decoder, cache, input_ids=input_ids)
    except capture.StopForward:
        return


def _fork(cache: Any) -> Any:
    """A view of `cache` whose updates (concatenations) never touch the original tensors."""
    forked = copy.copy(cache)
    forked.layers = [copy.copy(layer) for layer in cache.layers]
    return forked
