"""The attention engine: read a document once, then score any number of queries against what was kept.

Within the window a document is prefilled once (its KV cache up to the deepest layer used, in a bounded LRU) and
each query runs only its own tokens against a copy-on-write view of it. A document that starts like a cached one
(the same header, a conversation grown by a turn) prefills only the tokens after the shared prefix. Past the window
(or the memory budget) the document goes through the cascading KV cache once for all the queries at hand; the pass
is kept (`cascade_state`) so that later queries are replayed chunk by chunk without reading the document again,
and a grown document resumes the pass inside its last shared chunk. The "N/A" calibration pass depends only on the
document, so it runs once per document and head selection.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from shared_core.config import RetrieverConfig
from shared_core.document import Document
from shared_core.engine import capture, scoring
from shared_core.engine.cascade_budget import cascade_needed
from shared_core.engine.cascade_state import supports_replay
from shared_core.engine.heads import ADAPTER_DIR, HeadSelection, select_heads
from shared_core.engine.past_window import PastWindow
from shared_core.engine.prompt import DocumentTokens, PromptLayout, QueryTokens
from shared_core.engine.query_batch import SharedPrefixCache, batched_scores
from shared_core.engine.scoring import PerLayer
from shared_core.lru import LRUCache
from shared_core.models.family import full_attention_layers
from shared_core.models.loading import LoadedModel, cache_root, model_id

logger = logging.getLogger(__name__)

CALIBRATION_QUERY = "N/A"
PREFILL_CHUNK = 8192
"""Tokens per prefill step: bounds activation memory on long windows. A document within one step goes in one causal
pass (SDPA's fast path; 2,048-token steps against the cache were ~10 % slower at 7k tokens on CPU)."""
QUANTIZED_PREFILL_CHUNK = 512
"""Tokens per prefill step with int8 linear layers: each step quantizes its activations into fresh temporaries, whose
page faults outweigh int8's gain on long steps (the 1.5B on a 5.3k-token paper, 2 cores: 17.5 s first query in
512-token steps against 46 s in one; float32 reads gain nothing from short steps; docs/models.md)."""
MIN_SHARED_PREFIX = 64
"""Shortest shared token prefix worth reusing from another cached document (below it a prefill is as cheap)."""
EXTENSION_LIMIT = 512
"""Most new tokens after a cached prefix that run in the same forward as the first query batch (a grown turn);
a longer extension is prefilled on its own, as a document is."""

STAT_KEYS = (
    "forwards",
    "prefills",
    "prefill_tokens",
    "prefix_tokens_reused",
    "query_passes",
    "query_batches",
    "query_tokens",
    "calibration_passes",
    "cascade_passes",
    "cascade_tokens",
    "cascade_replays",
    "cascade_replayed_queries",
)


@dataclass(frozen=True)
class _Prefilled:
    """A document read once by the model: its KV cache (up to the deepest layer used) and token alignment."""

    cache: Any
    tokens: DocumentTokens
    reader: tuple[Any, ...]  # `_reader_key` of the engine that wrote it: only a same reader may reuse its prefix


class AttentionEngine:
    """Owns the model, the prompt layout, the head selection and every per-document model state."""

    def __init__(self, config: RetrieverConfig, trust_remote_code: bool = False) -> None:
        self.config = config
        self.trust_remote_code = trust_remote_code
        self.loaded: LoadedModel | None = None  # set last by warm_up, with the layout and selection
        self._layout: PromptLayout | None = None
        self._selection: HeadSelection | None = None
        size = config.attention.kv_cache_size
        self.prefills: LRUCache[_Prefilled] = LRUCache(size)
        self.tokens: LRUCache[DocumentTokens] = LRUCache(max(size, 32))
        self.calibrations: LRUCache[PerLayer] = LRUCache(max(size, 32))
        self.query_results: LRUCache[PerLayer] = LRUCache(64)  # raw scores per (document, heads, query)
        self.past = PastWindow(config, self._count)  # documents past the window: cascade passes, kept passes
        self._init_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)

    # ----------------------------------------------------------------- setup
    def warm_up(self) -> None:
        """Load the model, prompt layout and head selection (idempotent, thread-safe)."""
        if self.loaded is not None:
            return
        with self._init_lock:
            if self.loaded is not None:
                return
            cfg = self.config
            loaded = capture.load_model(
                cfg.model, trust_remote_code=self.trust_remote_code, show_progress=cfg.show_progress
            )
            self._layout = PromptLayout(loaded.tokenizer, cfg.model.prompt, cfg.model.instruction)
            full = full_attention_layers(loaded.model)
            self._selection = select_heads(
                cfg.attention,
                loaded.shape.num_layers,
                loaded.shape.num_heads,
                model_id(cfg.model),
                full,
                adapter_dir=cache_root(cfg.model) / ADAPTER_DIR,
            )
            if cfg.cascade.reuse and cfg.cascade.reuse_disk:
                folder = cfg.cascade.reuse_dir
                self.past.states.folder = Path(folder).expanduser() if folder else cache_root(cfg.model) / "cascade"
            self.loaded = loaded

    @property
    def model(self) -> LoadedModel:
        """The loaded model (loads it on first use)."""
        return self._warm()[0]

    @property
    def head_selection(self) -> HeadSelection:
        """The (layer, head) pairs this engine reads by default."""
        return self._warm()[2]

    @property
    def prompt(self) -> PromptLayout:
        """The prompt layout (template head, instruction, tail) of the loaded tokenizer."""
        return self._warm()[1]

    def _warm(self) -> tuple[LoadedModel, PromptLayout, HeadSelection]:
        self.warm_up()
        assert self.loaded is not None and self._layout is not None and self._selection is not None
        return self.loaded, self._layout, self._selection

    @property
    def window(self) -> int:
        """Longest prompt (document + query part) in tokens."""
        return self.config.model.max_tokens or self.model.shape.max_positions

    def share(self, other: AttentionEngine) -> None:
        """Use `other`'s document states (their keys hold everything the states depend on)."""
        self.prefills, self.tokens, self.calibrations = other.prefills, other.tokens, other.calibrations
        self.query_results = other.query_results
        self.past.share(other.past)

    def clear(self) -> None:
        """Drop every prefilled document, kept pass and cached score held in memory."""
        for store in (self.prefills, self.tokens, self.calibrations, self.query_results):
            store.clear()
        self.past.clear()

    def _count(self, **increments: int) -> None:
        """Add to the work counters in `stats` (tokens run through the model), which tests and benchmarks read."""
        with self._stats_lock:
            for k, v in increments.items():
                self.stats[k] += v

    # ----------------------------------------------------------------- scoring
    def document_tokens(self, doc: Document) -> DocumentTokens:
        """The document part of the prompt, tokenized once per text (cached)."""
        key = ("tokens", self.model.name, self.prompt.key, doc.content_hash)
        return self.tokens.get_or_create(key, lambda: self.prompt.document(doc.text))

    def head_token_scores(
        self, queries: Sequence[str], doc: Document, selection: HeadSelection | None = None
    ) -> tuple[DocumentTokens, list[PerLayer]]:
        """Per query, per layer the (calibrated) score of every document token for each selected head.

        One read of the document serves every query: a prefill within the window, one cascade pass (or a replay
        of a kept one) past it.
        """
        selection = selection or self.head_selection
        if selection.deepest > self.head_selection.deepest:
            raise ValueError("selection reaches past the deepest layer this retriever's cache holds")
        tokens = self.document_tokens(doc)
        rows = self.config.attention.query_rows
        parts = {q: self.prompt.query(q, rows) for q in dict.fromkeys(queries)}
        calibrate = self.config.attention.calibration
        calibration = {CALIBRATION_QUERY: self.prompt.query(CALIBRATION_QUERY, rows)} if calibrate else {}
        past = {q: part for q, part in parts.items() if self._needs_cascade(tokens, part)}
        scored: dict[str, PerLayer] = {}
        if past:
            raw = self.past.raw(self.model, self.prompt.key, doc, tokens, {**past, **calibration}, selection)
            scored.update({q: _calibrated(raw[q], raw.get(CALIBRATION_QUERY)) for q in past})
        inside = [q for q in parts if q not in past]
        if inside:
            key = self._calibration_key(doc, selection)
            baseline = self.calibrations.get(key) if calibrate else None
            raw = {q: hit for q in inside if (hit := self.query_results.get((*key, q))) is not None}
            todo = [q for q in inside if q not in raw]
            if calibrate and baseline is None and CALIBRATION_QUERY not in todo:
                todo.append(CALIBRATION_QUERY)  # a new document: its "N/A" pass rides in the same batch
            passes = self._document_passes(doc, tokens, [{**calibration, **parts}[q] for q in todo], selection)
            raw.update(zip(todo, passes, strict=True))
            for q in todo:
                if q in parts:
                    self.query_results.put((*key, q), raw[q])  # a repeated query (or a duplicate text) is free
            if calibrate and baseline is None:
                baseline = raw[CALIBRATION_QUERY]
                self.calibrations.put(key, baseline)
                self._count(calibration_passes=1)
            scored.update({q: _calibrated(raw[q], baseline) for q in inside})
        return tokens, [scored[q] for q in queries]

    def document_cache(self, doc: Document) -> tuple[DocumentTokens, Any]:
        """The document's prompt tokens and its prefilled KV cache (layers up to the deepest read), prefilling it
        unless cached: what query-side training runs its query parts on. A document past the window is a
        ValueError (the cascade keeps no whole cache to train on)."""
        tokens = self.document_tokens(doc)
        key = self._prefill_key(doc)
        prefilled = self.prefills.get_or_create(key, lambda: self._prefill(doc, tokens, self._shared_prefix(tokens)))
        return tokens, prefilled.cache

    def _needs_cascade(self, tokens: DocumentTokens, part: QueryTokens) -> bool:
        """Whether this document + query must be read through the cascading cache (config, window, budget)."""
        m = self.model
        return cascade_needed(
            len(tokens.ids) + len(part.ids),
            self.config.cascade,
            m.shape,
            max_tokens=self.window,
            layers_used=self.head_selection.deepest + 1,
            dtype_bytes=torch.finfo(m.dtype).bits // 8,
        )

    # ----------------------------------------------------------------- within the window
    def _reader_key(self) -> tuple[Any, ...]:
        """What a document's KV cache depends on besides its text: model, device, precision, template, depth."""
        m = self.model
        return (m.name, str(m.device), m.precision, self.prompt.key, self.head_selection.deepest)

    def _prefill_key(self, doc: Document) -> tuple[Any, ...]:
        return (*self._reader_key(), doc.content_hash)

    def _calibration_key(self, doc: Document, selection: HeadSelection) -> tuple[Any, ...]:
        """The "N/A" pass depends on the document and the heads read, never on the query: once per document."""
        return (*self._prefill_key(doc), selection.key, self.config.attention.query_rows)

    def _document_passes(
        self, doc: Document, tokens: DocumentTokens, parts: list[QueryTokens], selection: HeadSelection
    ) -> list[PerLayer]:
        """The query parts' scores on the document, prefilling it first unless its prefill is cached. A document
        that extends a cached one by at most `EXTENSION_LIMIT` tokens (a conversation grown by a turn) runs them in
        the same forward as its first query batch (`_extend_with_queries`)."""
        key = self._prefill_key(doc)
        prefilled = self.prefills.get(key)
        if prefilled is None:
            shared = self._shared_prefix(tokens)
            size = self.config.attention.query_batch
            if shared is not None and parts and self._extendable(shared[1], tokens, selection):
                prefilled, first = self._extend_with_queries(doc, tokens, shared, parts[:size], selection)
                rest = parts[len(first) :]
                return first + (self._query_passes(prefilled, rest, selection) if rest else [])
            prefilled = self.prefills.get_or_create(key, lambda: self._prefill(doc, tokens, shared))
        return self._query_passes(prefilled, parts, selection)

    def _extendable(self, start: int, tokens: DocumentTokens, selection: HeadSelection) -> bool:
        """Whether the tokens after a shared prefix of `start` can ride with the query parts: few enough, and the
        default head selection (the forward fills the document's cache up to its deepest layer). A shared prefix is
        only found for models whose parts can be packed (`_shared_prefix`)."""
        return len(tokens.ids) - start <= EXTENSION_LIMIT and selection.deepest == self.head_selection.deepest

    @torch.inference_mode()
    def _prefill(self, doc: Document, tokens: DocumentTokens, shared: tuple[_Prefilled, int] | None) -> _Prefilled:
        """Run the document part once, up to the deepest layer used, keeping its KV cache.

        When another cached document shares a long token prefix (`shared`: it and the prefix length), its cache up
        to there is reused and only the rest is run (exact: a causal model's states of a prefix do not depend on
        what follows).
        """
        from transformers import DynamicCache

        loaded = self.model
        if len(tokens.ids) >= self.window:  # the query part is checked exactly when it runs (`_query_passes`)
            name = f"document {doc.id!r}" if doc.id else "the document"
            raise ValueError(
                f"{name} is {len(tokens.ids)} tokens; with the query it exceeds the model window "
                f"of {self.window} tokens ({loaded.name}). Split it, raise model.max_tokens if the model allows, "
                "or set cascade.enabled to 'auto' or true to read it through the cascading KV cache."
            )
        start = shared[1] if shared is not None else 0
        cache = _cropped(shared[0].cache, start) if shared is not None else DynamicCache(config=loaded.model.config)
        ids = torch.tensor([tokens.ids], device=loaded.device)
        observer = scoring.StopAtObserver(self.head_selection.deepest)
        step = PREFILL_CHUNK if loaded.quantize == "none" else QUANTIZED_PREFILL_CHUNK
        steps = range(start, ids.shape[1], step)
        for s in tqdm(steps, desc="prefill", disable=not self.config.show_progress or len(steps) < 2):
            capture.run_observed(loaded.decoder, cache, observer, input_ids=ids[:, s : s + step])
        self._count(prefills=1, prefill_tokens=len(tokens.ids) - start, prefix_tokens_reused=start, forwards=len(steps))
        return _Prefilled(cache=cache, tokens=tokens, reader=self._reader_key())

    @torch.inference_mode()
    def _extend_with_queries(
        self,
        doc: Document,
        tokens: DocumentTokens,
        shared: tuple[_Prefilled, int],
        parts: list[QueryTokens],
        selection: HeadSelection,
    ) -> tuple[_Prefilled, list[PerLayer]]:
        """The document's tokens after the `shared` prefix and the query parts as one packed forward on the
        prefix's cache, the new tokens first and seen by every part: one forward instead of a prefill and a query
        pass. The new tokens' keys and values stay in the document's cache, which is kept as its prefill."""
        loaded = self.model
        entry, start = shared
        tail = tokens.ids[start:]
        led = [QueryTokens(ids=tail + p.ids, rows=[len(tail) + r for r in p.rows]) for p in parts]
        self._check_window(len(tokens.ids), parts)
        cache = _cropped(entry.cache, start)
        scored = batched_scores(loaded.decoder, cache, start, led, selection, loaded.device, len(led), len(tail))
        cache = _cropped(cache, len(tokens.ids))  # drop the query parts' keys: the document's own cache
        prefilled = _Prefilled(cache=cache, tokens=tokens, reader=self._reader_key())
        self.prefills.put(self._prefill_key(doc), prefilled)
        self._count(prefills=1, prefill_tokens=len(tail), prefix_tokens_reused=start, forwards=1)
        self._count(query_passes=len(parts), query_batches=1, query_tokens=sum(len(p.ids) for p in parts))
        return prefilled, _document_scores(tokens, scored)

    def _shared_prefix(self, tokens: DocumentTokens) -> tuple[_Prefilled, int] | None:
        """The cached document sharing the longest token prefix (at least `MIN_SHARED_PREFIX`) with `tokens`, and
        that prefix's length, leaving at least one token to run; None if there is none. Only documents this engine's
        reader wrote qualify (shared caches may hold another model's, precision's or depth's)."""
        if not supports_replay(self.model.model):  # sliding-window layers keep a window, not a prefix
            return None
        best, best_len = None, 0
        new = torch.tensor(tokens.ids)
        reader = self._reader_key()
        for entry in self.prefills.values():
            if entry.reader != reader:
                continue
            old = torch.tensor(entry.tokens.ids)
            n = min(len(old), len(new)) - 1  # leave at least one token to run
            if n <= best_len:
                continue
            differs = (old[:n] != new[:n]).nonzero()
            common = int(differs[0, 0]) if len(differs) else n
            if common > best_len:
                best, best_len = entry, common
        if best is None or best_len < MIN_SHARED_PREFIX:
            return None
        return best, best_len

    def _check_window(self, n_prefix: int, parts: Sequence[QueryTokens]) -> None:
        """A clear error where a query part would not fit after the document in the model window."""
        for part in parts:
            if n_prefix + len(part.ids) > self.window:
                raise ValueError(
                    f"document ({n_prefix} tokens) plus query ({len(part.ids)} tokens) exceed the model window of "
                    f"{self.window} tokens; shorten the query or the document"
                )

    @torch.inference_mode()
    def _query_passes(
        self, prefilled: _Prefilled, parts: list[QueryTokens], selection: HeadSelection
    ) -> list[PerLayer]:
        """Every query part against the cached document, `attention.query_batch` parts packed per forward (one per
        forward, each against its own copy-on-write view of the cache, for models with sliding-window layers)."""
        loaded, tokens = self.model, prefilled.tokens
        n_prefix = len(tokens.ids)
        self._check_window(n_prefix, parts)
        size, device = self.config.attention.query_batch, loaded.device
        if supports_replay(loaded.model):
            layers = prefilled.cache.layers[: selection.deepest + 1]
            prefix = SharedPrefixCache([(layer.keys, layer.values) for layer in layers], n_prefix)
            scored = batched_scores(loaded.decoder, prefix, n_prefix, parts, selection, device, size)
            batches = -(-len(parts) // max(1, size))
        else:
            scored = [
                batched_scores(loaded.decoder, fork_cache(prefilled.cache), n_prefix, [p], selection, device, 1)[0]
                for p in parts
            ]
            batches = len(parts)
        query_tokens = sum(len(p.ids) for p in parts)
        self._count(query_passes=len(parts), query_batches=batches, query_tokens=query_tokens, forwards=batches)
        return _document_scores(tokens, scored)


def _document_scores(tokens: DocumentTokens, scored: list[PerLayer]) -> list[PerLayer]:
    """Each query part's captured rows sliced to the document's own tokens (the prompt head left out)."""
    n = len(tokens.ids)
    return [scoring.document_token_scores(captured, n, tokens.doc_start, tokens.n_doc_tokens) for captured in scored]


def _cropped(cache: Any, length: int) -> Any:
    """A fork of `cache` holding only its first `length` positions (views: nothing is copied)."""
    cropped = fork_cache(cache)
    for layer in cropped.layers:
        if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
            layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]
    return cropped


def fork_cache(cache: Any) -> Any:
    """A view of a transformers cache whose updates (concatenations) never touch the original tensors."""
    forked = copy.copy(cache)
    forked.layers = [copy.copy(layer) for layer in cache.layers]
    return forked


def _calibrated(raw: PerLayer, baseline: PerLayer | None) -> PerLayer:
    """QRHead calibration: the query's scores minus the same prompt's with the query "N/A" (None: uncalibrated)."""
    return raw if baseline is None else {layer: raw[layer] - baseline[layer] for layer in raw}
