"""Strided prefill through the cascading KV cache, and query scoring beyond the window.

Decision (measured with ``benchmarks/cascade_needle.py --quick``: SmolLM2-135M, CPU, S=16, N=4, W=64,
stride 256, bAbI qa2 story in HotpotQA filler at 1.7k and 3.2k tokens): **resident scoring**. The
document is read in chunks of ``stride`` tokens; after each chunk's forward, and before the chunk is committed
to the cascade, every query suffix (instruction + query + template tail; e.g. the query and its "N/A"
calibration) is run as a short second forward against sinks + cascade + that chunk, and each chunk token keeps
the attention its query rows gave it there. This is exactly "append the query to every chunk" (option a) but
the chunk's KV is computed once and shared by all queries. Every token gets a score from the one pass in which
it was new, so nothing depends on what the cache kept. The baseline, ``scoring="end"`` (option c), runs the
query once after the last chunk: tokens evicted before then score 0, so a needle early in a long document is
lost whenever the cache dropped it.

Measured: resident scoring gives every token a score (scored fraction 1.00) where query-at-end scores 0.27-0.51
of the tokens (0.08-0.16 for StreamingLLM and truncation to the same 272 slots); its best-gold unit rank was
comparable to full attention over the whole prompt (better in 4 of 6 documents, worse in 2), and
its wall time was 1.0-1.5x the end-only pass (the query passes) and about equal to full attention at these
sizes. With all heads of SmolLM2 averaged, no method (full attention included) put a supporting fact in the top
5 on these documents: the hit rate is bounded by the scorer (heads), not by the cache.

Cost: one document pass per *batch of queries* (the queries must be known before the document is read), plus
per chunk one query pass of q tokens over ``capacity + stride`` keys, about ``q / stride`` of the chunk's cost
per query. A query arriving after the pass needs the document read again; scores are not comparable with a
full-attention prefill's (each chunk's query rows also spread mass over the sinks and the cascade), but they
are comparable across chunks once the cascade has filled.

Memory is bounded by the cache and one chunk, except the returned scores: ``queries x layers x heads x n``
float32 (e.g. 2 x 15 x 9 x 100k = 108 MB), kept on the CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import capture
from .cascade import CascadeConfig, CascadingCache, check_budget
from .cascade_state import CascadeState, StateRecorder, as_part, replay_scores, resume_cache, supports_replay
from .heads import HeadSelection
from .model_family import ModelShape
from .prompt import QueryTokens
from .query_batch import LeadRecorder, batched_scores, common_prefix

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
"""progress(tokens_done, tokens_total), called after every chunk."""


class EmaObserver:
    """Reduces a few sampled rows of each chunk to the attention every cached key received (per key head)."""

    def __init__(self, cache: CascadingCache, deepest: int, rows: int) -> None:
        self.cache = cache
        self.layers = frozenset(range(deepest + 1))
        self.deepest = deepest
        self.n_rows = rows
        self._row_cache: dict[tuple[int, str], torch.Tensor] = {}

    def _rows(self, q_len: int, device: torch.device) -> torch.Tensor:
        """Evenly spaced rows of the chunk, built on the host once per chunk length (no device sync)."""
        key = (q_len, str(device))
        rows = self._row_cache.get(key)
        if rows is None:
            r = min(self.n_rows, q_len)
            picked = sorted({round(i * (q_len - 1) / max(1, r - 1)) for i in range(r)})
            rows = self._row_cache[key] = torch.tensor(picked, dtype=torch.long, device=device)
        return rows

    def observe(self, inputs: capture.AttentionInputs) -> None:
        """Sampled rows -> mean softmax -> summed over the query heads of each key head -> the layer's EMA input."""
        layer = self.cache.layer(inputs.layer_idx)
        if layer.is_sliding:  # sliding layers keep a plain window: no EMA needed
            return
        probs = inputs.row_probs(self._rows(inputs.query.shape[2], inputs.query.device)).mean(dim=2)
        b, hq, kv = probs.shape
        hkv = inputs.key.shape[1]
        layer.record_received(probs.view(b, hkv, hq // hkv, kv).sum(dim=2))


@dataclass
class CascadeScores:
    """Per-token attention scores of a cascade pass.

    ``scores[j, i, h, t]`` = attention that query j's rows (mean over rows) gave document-prompt token t in layer
    ``layers[i]``, query head h; float32 on the CPU.
    """

    scores: torch.Tensor
    layers: list[int]
    n_chunks: int
    kept_tokens: int
    estimated_bytes: int
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)
    state: CascadeState | None = None  # what later queries replay (when the pass was asked to keep it)

    def per_layer(self, query: int = 0) -> dict[int, torch.Tensor]:
        """{layer: [Hq, n]} for one query, the shape the core's head/layer aggregation takes."""
        return {layer: self.scores[query, i] for i, layer in enumerate(self.layers)}


def _forward(model: Any, ids: torch.Tensor, positions: torch.Tensor, cache: CascadingCache, observer: Any) -> None:
    capture.run_observed(getattr(model, "base_model", model), cache, observer, input_ids=ids, position_ids=positions)


def _check_inputs(
    model: Any, doc_ids: torch.Tensor, queries: Sequence[tuple[torch.Tensor, torch.Tensor]], layers: Iterable[int]
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], list[int]]:
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != capture.ATTN_IMPLEMENTATION:
        raise ValueError(
            f"the model must use attn_implementation={capture.ATTN_IMPLEMENTATION!r} (got {impl!r}); call "
            "shared_core.capture.register() and load it with that implementation"
        )
    if not isinstance(doc_ids, torch.Tensor) or doc_ids.dtype != torch.long:
        raise TypeError("doc_ids must be a LongTensor")
    doc_ids = doc_ids.reshape(-1)
    if doc_ids.numel() == 0:
        raise ValueError("doc_ids is empty")
    if not queries:
        raise ValueError("at least one query is needed")
    checked = []
    for ids, rows in queries:
        ids, rows = ids.reshape(-1), rows.reshape(-1).long()
        if ids.numel() == 0 or rows.numel() == 0:
            raise ValueError("every query needs token ids and at least one query row")
        if int(rows.min()) < 0 or int(rows.max()) >= ids.numel():
            raise ValueError(f"query rows must index the query ids (0..{ids.numel() - 1})")
        checked.append((ids, rows))
    n_layers = ModelShape.of(model).num_layers
    picked = sorted({(x + n_layers) if x < 0 else x for x in layers})
    if not picked or picked[0] < 0 or picked[-1] >= n_layers:
        raise ValueError(f"layers must be a non-empty set within 0..{n_layers - 1} (negatives from the end)")
    return doc_ids, checked, picked


def cascade_token_scores(
    model: Any,
    doc_ids: torch.Tensor,
    queries: Sequence[tuple[torch.Tensor, torch.Tensor]],
    layers: Iterable[int],
    config: CascadeConfig,
    *,
    progress: ProgressFn | None = None,
    keep: bool = False,
    resume: tuple[CascadeState, int] | None = None,
    batch_size: int = 1,
) -> CascadeScores:
    """Read `doc_ids` (the prompt part before the query: template head + document) through a cascading cache and
    score every token for each ``(query_ids, query_rows)`` suffix; rows index `query_ids` (the query's own tokens).

    Returns per query, layer and query head the attention each token received (see `CascadeScores`), aligned to
    `doc_ids`, so the core's unit pooling applies unchanged. Raises ValueError when the memory budget cannot hold
    one stride, or when the model is not loaded with the capture attention.

    `keep=True` records a `CascadeState` (returned as `.state`) from which `replay_scores` scores later queries
    without reading the document again. `resume=(state, r)` takes the first `r` chunks from an earlier state of a
    document sharing their tokens (replayed for these queries) and reads only the rest. With `batch_size` > 1 the
    queries run against each chunk packed in batches of that many (`query_batch`); 1 = one forward per query.
    """
    t0 = time.perf_counter()
    doc_ids, checked, picked = _check_inputs(model, doc_ids, queries, layers)
    shape = ModelShape.of(model)
    device = next(model.parameters()).device
    dtype_bytes = next(model.parameters()).element_size()
    deepest = picked[-1]
    longest_query = max(int(ids.numel()) for ids, _ in checked)
    need = check_budget(shape, config, deepest + 1, longest_query, dtype_bytes)
    cache = CascadingCache.for_model(model, config, num_layers=deepest + 1)
    n = int(doc_ids.numel())
    out = torch.zeros(len(checked), len(picked), shape.num_heads, n, dtype=torch.float32)
    selection = HeadSelection(dict.fromkeys(picked), "cascade")
    ema = EmaObserver(cache, deepest, config.ema_rows)
    keep = keep and config.scoring == "resident" and supports_replay(model)
    recorder = StateRecorder(doc_ids, cache) if keep or resume is not None else None
    first = 0
    if resume is not None and recorder is not None:
        state, shared = resume
        replay_scores(model, state, checked, picked, chunks=shared, out=out, batch_size=batch_size)
        first = resume_cache(model, cache, state, shared, device)
        recorder.resume_from(state, shared)
    doc_ids = doc_ids.to(device)
    parts = [as_part(ids, rows) for ids, rows in checked]
    lead = _lead(parts) if recorder is not None and config.scoring == "resident" else 0
    n_chunks = 0
    for start in range(first, n, config.stride):
        end = min(n, start + config.stride)
        if recorder is not None:
            recorder.before_chunk(cache, start, end)
        kept = cache.get_seq_length()
        positions = torch.arange(kept, kept + (end - start), device=device)[None]
        _forward(model, doc_ids[None, start:end], positions, cache, ema)
        if config.scoring == "resident":
            c = end - start
            recorded = LeadRecorder(lead, deepest) if lead else None
            with cache.frozen_view():
                base = getattr(model, "base_model", model)
                scored = batched_scores(base, cache, kept + c, parts, selection, device, batch_size, lead=recorded)
            if recorded is not None and recorder is not None:
                recorder.record_lead(parts[0].ids[:lead], recorded.kept)
            for j, captured in enumerate(scored):
                chunk = [captured[layer][:, kept : kept + c] for layer in picked]
                out[j, :, :, start:end] = torch.stack(chunk).float().cpu()  # one transfer per chunk
        cache.commit()
        n_chunks += 1
        if progress is not None:
            progress(end, n)
    if config.scoring == "end":
        _score_end(model, cache, parts, picked, out, shape)
    seconds = time.perf_counter() - t0
    logger.debug("cascade pass: %d tokens, %d chunks, %.2fs, kept %d", n, n_chunks, seconds, cache.kept)
    kept_state = recorder.state() if recorder is not None else None
    return CascadeScores(out, picked, n_chunks, cache.kept, need, seconds, state=kept_state)


def _lead(parts: Sequence[QueryTokens]) -> int:
    """Leading tokens every query part shares before its first row (the instruction): a kept pass keeps their keys
    and values per chunk, so a replay runs only each query's own tokens. 0 for a single part (nothing is known
    to be shared)."""
    if len(parts) < 2:
        return 0
    return min(common_prefix([p.ids for p in parts]), *(min(p.rows) for p in parts))


def _score_end(
    model: Any,
    cache: CascadingCache,
    parts: list[QueryTokens],
    picked: list[int],
    out: torch.Tensor,
    shape: ModelShape,
) -> None:
    """Baseline: one query pass over what the cache kept; scores go back to each kept slot's source token."""
    rep = shape.num_heads // shape.num_kv_heads
    kept = cache.get_seq_length()
    base = getattr(model, "base_model", model)
    device = next(model.parameters()).device
    selection = HeadSelection(dict.fromkeys(picked), "cascade")
    with cache.frozen_view():
        for j, part in enumerate(parts):
            (captured,) = batched_scores(base, cache, kept, [part], selection, device, 1)
            for i, layer in enumerate(picked):
                probs = captured[layer].float().cpu()
                pos = cache.layer(layer).kept_positions()[0].cpu()  # [Hkv, K_layer]
                src = probs[:, probs.shape[-1] - pos.shape[-1] :]
                index = pos.repeat_interleave(rep, dim=0) if pos.shape[0] > 1 else pos.expand(shape.num_heads, -1)
                out[j, i].scatter_(1, index, src)
