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

from . import capture, scoring
from .config import RetrieverConfig
from .document import Document, Hit, Unit
from .heads import HeadSelection, select_heads
from .kv_store import KVStore
from .model_loading import LoadedModel, load_model, model_id
from .prompt import DocumentTokens, PromptLayout
from .segmentation import segment, units_from_spans

logger = logging.getLogger(__name__)

CALIBRATION_QUERY = "N/A"
PREFILL_CHUNK = 2048  # tokens per prefill step: bounds activation memory and drives the progress bar


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

    def __init__(self, config: RetrieverConfig | dict[str, Any] | str | Path | None = None) -> None:
        self.config = RetrieverConfig.coerce(config)
        self._loaded: LoadedModel | None = None
        self._layout: PromptLayout | None = None
        self._selection: HeadSelection | None = None
        self._store: KVStore[_Prefilled] = KVStore(self.config.attention.kv_cache_size)
        self._init_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.stats: dict[str, int] = {"prefills": 0, "prefill_tokens": 0, "query_passes": 0, "query_tokens": 0}

    # ----------------------------------------------------------------- setup
    def warm_up(self) -> None:
        """Load the model, prompt layout and head selection (idempotent, thread-safe)."""
        if self._loaded is not None:
            return
        with self._init_lock:
            if self._loaded is not None:
                return
            loaded = load_model(self.config.model)
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
    def window(self) -> int:
        """Longest prompt (document + query part) in tokens."""
        return self.config.model.max_tokens or self.model.max_positions

    # ----------------------------------------------------------------- public API
    def units(self, document: str | Document) -> list[Unit]:
        """The units (sentences or paragraphs, per config) of a document, with exact char offsets."""
        doc = _coerce_document(document, 0)
        u = self.config.units
        return segment(doc.text, u.granularity, u.spacy_model, u.min_chars)

    def retrieve(self, query: str, documents: Sequence[str | Document], top_k: int = 10) -> list[Hit]:
        """The `top_k` best units across `documents`, each document scored in its own context."""
        _check_query(query)
        _check_top_k(top_k)
        docs = _coerce_documents(documents)
        hits: list[Hit] = []
        for i, doc in enumerate(tqdm(docs, desc="documents", disable=not self.config.show_progress or len(docs) < 2)):
            hits.extend(self._score_document(query, doc, i))
        hits.sort(key=lambda h: (-h.score, h.document_index, h.start))
        return hits[:top_k]

    def score_units(self, query: str, document: str | Document) -> list[Hit]:
        """Every unit of `document` with its scores, in document order (for explanation and benchmarks)."""
        _check_query(query)
        return self._score_document(query, _coerce_document(document, 0), 0)

    def score_spans(self, query: str, document: str | Document, spans: Sequence[tuple[int, int]]) -> list[float]:
        """Attention score of caller-given char spans of `document` (e.g. the nodes of a source document)."""
        _check_query(query)
        doc = _coerce_document(document, 0)
        units = units_from_spans(doc.text, [tuple(s) for s in spans])  # type: ignore[misc]
        return [float(x) for x in self._attention_view(query, doc, units)]

    def score_documents(self, query: str, documents: Sequence[str | Document]) -> list[float]:
        """Document-level score for reranking whole documents: the best raw unit score of each."""
        _check_query(query)
        docs = _coerce_documents(documents)
        return [float(self._attention_view(query, d, self.units(d)).max(initial=0.0)) for d in docs]

    def clear_cache(self) -> None:
        """Drop every prefilled document."""
        self._store.clear()

    # ----------------------------------------------------------------- internals
    def _score_document(self, query: str, doc: Document, index: int) -> list[Hit]:
        units = self.units(doc)
        raw = self._attention_view(query, doc, units)
        normalised = _minmax(raw)
        doc_id = doc.id if doc.id is not None else str(index)
        return [
            Hit(
                document_id=doc_id,
                document_index=index,
                start=u.start,
                end=u.end,
                text=u.text,
                score=float(normalised[k]),
                scores={"attention": float(raw[k])},
                reasons=["attention"],
                unit_index=u.index,
            )
            for k, u in enumerate(units)
        ]

    def _attention_view(self, query: str, doc: Document, units: list[Unit]) -> np.ndarray:
        """Raw (calibrated, pooled) attention score per unit."""
        att = self.config.attention
        tokens, token_scores = self._token_scores(query, doc)
        lo, hi = scoring.unit_token_ranges(tokens.offsets, [(u.start, u.end) for u in units])
        return scoring.pool(token_scores, lo, hi, att.pooling, att.topk, att.threshold_std)

    def _token_scores(self, query: str, doc: Document) -> tuple[DocumentTokens, np.ndarray]:
        """Aggregated (and calibrated) attention score of each document token."""
        tokens, per_layer = self.head_token_scores(query, doc, self.head_selection)
        return tokens, scoring.aggregate_heads(per_layer, self.config.attention.head_aggregation)

    def head_token_scores(
        self, query: str, document: str | Document, selection: HeadSelection
    ) -> tuple[DocumentTokens, dict[int, torch.Tensor]]:
        """Per layer, the (calibrated) score of every document token for each selected head: {layer: [H_sel, n]}.

        `selection` may name any heads up to this retriever's deepest layer (head detection reads all of them).
        """
        doc = _coerce_document(document, 0)
        if selection.deepest > self.head_selection.deepest:
            raise ValueError("selection reaches past the deepest layer this retriever's cache holds")
        prefilled = self._prefilled(doc)
        per_layer = self._query_pass(prefilled, query, selection)
        if self.config.attention.calibration:
            baseline = self._query_pass(prefilled, CALIBRATION_QUERY, selection)
            per_layer = {k: v - baseline[k] for k, v in per_layer.items()}
        return prefilled.tokens, per_layer

    def _prefilled(self, doc: Document) -> _Prefilled:
        self.warm_up()
        key = (self.model.name, str(self.model.device), self._layout.key, self.head_selection.deepest, doc.content_hash)  # type: ignore[union-attr]
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
        tokens = self._layout.document(doc.text)  # type: ignore[union-attr]
        longest_query = 64  # room the query part needs; checked exactly at query time
        if len(tokens.ids) + longest_query > self.window:
            raise ValueError(
                f"document {doc.id or ''} is {len(tokens.ids)} tokens; with the query it exceeds the model window "
                f"of {self.window} tokens ({loaded.name}). Split it, raise model.max_tokens if the model allows, "
                "or use a model with a longer window; the cascading KV cache (cascade.enabled) will lift this limit."
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
        loaded.decoder(input_ids=input_ids, past_key_values=cache, use_cache=True)
    except capture.StopForward:
        return


def _fork(cache: Any) -> Any:
    """A view of `cache` whose updates (concatenations) never touch the original tensors."""
    forked = copy.copy(cache)
    forked.layers = [copy.copy(layer) for layer in cache.layers]
    return forked


def _minmax(x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return x
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def _check_query(query: Any) -> None:
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    if not query.strip():
        raise ValueError("query is empty or whitespace")


def _check_top_k(top_k: Any) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int, got {type(top_k).__name__}")
    if top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")


def _coerce_document(document: Any, index: int) -> Document:
    if isinstance(document, Document):
        doc = document
    elif isinstance(document, str):
        doc = Document(text=document)
    else:
        raise TypeError(f"document {index} must be a str or shared_core.Document, got {type(document).__name__}")
    if not isinstance(doc.text, str):
        raise TypeError(f"document {index} text must be a str, got {type(doc.text).__name__}")
    if not doc.text.strip():
        raise ValueError(f"document {index} is empty or whitespace")
    return doc


def _coerce_documents(documents: Any) -> list[Document]:
    if isinstance(documents, str | Document):
        raise TypeError("documents must be a sequence of str/Document (wrap a single document in a list)")
    if not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a sequence, got {type(documents).__name__}")
    if not documents:
        raise ValueError("documents is empty")
    return [_coerce_document(d, i) for i, d in enumerate(documents)]
