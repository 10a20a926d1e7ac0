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

from shared_core.config.cascade import CascadeConfig
from shared_core.engine import capture
from shared_core.engine.cascade import CascadingCache
from shared_core.engine.cascade_budget import check_budget
from shared_core.engine.cascade_state import (
    CascadeState,
    ChunkTail,
    ResumePoint,
    StateRecorder,
    as_part,
    carried_kv,
    replay_scores,
    resume_cache,
    supports_replay,
    tail_tokens,
)
from shared_core.engine.heads import HeadSelection
from shared_core.engine.prompt import QueryTokens
from shared_core.engine.query_adapter import QueryAdapter
from shared_core.engine.query_batch import LeadRecorder, batched_scores, common_prefix
from shared_core.models.family import ModelShape

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
"""progress(tokens_done, tokens_total), called after every chunk."""


class EmaObserver:
    """Reduces a few sampled rows of each chunk to the attention every cached key received (per key head).

    The rows are `rows` evenly spaced over a full stride, those inside the chunk; a chunk's rows thus do not depend
    on how long it is, and the rows below a cut of the last chunk give a longer document the same rows (`tail`).
    A short last chunk therefore samples fewer rows; its EMA decides nothing in its own pass (no chunk follows).
    """

    def __init__(self, cache: CascadingCache, deepest: int, rows: int, stride: int) -> None:
        self.cache = cache
        self.layers = frozenset(range(deepest + 1))
        self.deepest = deepest
        r = min(rows, stride)
        self.grid = sorted({round(i * (stride - 1) / max(1, r - 1)) for i in range(r)})
        self.begin(stride)

    def begin(self, length: int, tail: ChunkTail | None = None, carried: int = 0, cut: int | None = None) -> None:
        """The next chunk: `length` tokens, the first `carried` read by an earlier pass (whose rows below them are
        `tail`); with `cut` (>= carried), the rows below chunk token `cut` are summed for a later resume."""
        rows = [g for g in self.grid if g < length]
        self.count = len(rows)
        self.forward_rows = torch.tensor([g - carried for g in rows if g >= carried], dtype=torch.long)
        self.carried, self.carried_tail = carried, tail
        self.cut = cut
        self.below = sum(1 for g in rows if carried <= g < cut) if cut is not None else 0
        self.tail_mass: dict[int, torch.Tensor] = {}

    def observe(self, inputs: capture.AttentionInputs) -> None:
        """Sampled rows -> softmax summed over the rows and the query heads of each key head -> mean over all the
        chunk's rows (the carried ones' mass included) -> the layer's EMA input."""
        layer = self.cache.layer(inputs.layer_idx)
        if layer.is_sliding:  # sliding layers keep a plain window: no EMA needed
            return
        b, hkv, kv = inputs.query.shape[0], inputs.key.shape[1], inputs.key.shape[2]
        rows = self.forward_rows.to(inputs.query.device)
        if len(rows):
            per_row = inputs.row_probs(rows).view(b, hkv, -1, len(rows), kv).sum(dim=2)  # [B, Hkv, r, kv]
        else:
            per_row = inputs.key.new_zeros((b, hkv, 0, kv), dtype=torch.float32)
        mass = per_row.sum(dim=2)
        carried = None
        if self.carried_tail is not None:  # what the carried rows gave: nothing past themselves (causal)
            carried = self.carried_tail.mass[inputs.layer_idx].to(mass.device)[None]
            mass[..., : carried.shape[-1]] += carried
        layer.record_received(mass / max(1, self.count))
        if self.cut is not None:  # the last chunk only: the rows below the cut, for a later resume
            below = per_row[:, :, : self.below].sum(dim=2)
            if carried is not None:
                below[..., : carried.shape[-1]] += carried
            reach = kv - self.carried - inputs.query.shape[2] + self.cut  # kept tokens + the chunk below the cut
            self.tail_mass[inputs.layer_idx] = below[0, :, :reach].float().cpu()

    def tail_at(self, start: int) -> ChunkTail | None:
        """The rows below the cut of the chunk just read (its first token `start`), from which a longer document
        resumes inside it (None: no cut asked, or not every layer observed)."""
        if self.cut is None or len(self.tail_mass) != len(self.layers):
            return None
        rows = (self.carried_tail.rows if self.carried_tail is not None else 0) + self.below
        return ChunkTail(start + self.cut, torch.stack([self.tail_mass[i] for i in sorted(self.tail_mass)]), rows)


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
            "shared_core.engine.capture.register() and load it with that implementation"
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
    resume: ResumePoint | None = None,
    batch_size: int = 1,
    adapter: QueryAdapter | None = None,
) -> CascadeScores:
    """Read `doc_ids` (the prompt part before the query: template head + document) through a cascading cache and
    score every token for each ``(query_ids, query_rows)`` suffix; rows index `query_ids` (the query's own tokens).

    Returns per query, layer and query head the attention each token received (see `CascadeScores`), aligned to
    `doc_ids`, so the core's unit pooling applies unchanged. Raises ValueError when the memory budget cannot hold
    one stride, or when the model is not loaded with the capture attention.

    `keep=True` records a `CascadeState` (returned as `.state`) from which `replay_scores` scores later queries
    without reading the document again. `resume` takes the first chunks (replayed for these queries) and the carried
    tokens of the next one from an earlier state of a document sharing their tokens (`resume_point`) and reads only
    the rest. With `batch_size` > 1 the queries run against each chunk packed in batches of that many
    (`query_batch`); 1 = one forward per query. `adapter` (a head set's query adapter) runs on the query parts.
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
    selection = HeadSelection(dict.fromkeys(picked), "cascade", adapter=adapter)
    ema = EmaObserver(cache, deepest, config.ema_rows, config.stride)
    keep = keep and config.scoring == "resident" and supports_replay(model)
    recorder = StateRecorder(doc_ids, cache) if keep or resume is not None else None
    first, carried, tail = 0, 0, None
    if resume is not None and recorder is not None:
        state = resume.state
        replay_scores(
            model, state, checked, picked, chunks=resume.chunks, out=out, batch_size=batch_size, adapter=adapter
        )
        first = resume_cache(model, cache, state, resume.chunks, device)
        recorder.resume_from(state, resume.chunks)
        if resume.carried:
            carried_kv(resume, cache, device)
            carried, tail = resume.carried, state.tail
    doc_ids = doc_ids.to(device)
    parts = [as_part(ids, rows) for ids, rows in checked]
    lead = _lead(parts) if recorder is not None and config.scoring == "resident" else 0
    n_chunks = 0
    for start in range(first, n, config.stride):
        end = min(n, start + config.stride)
        skip = carried if start == first else 0  # tokens the cache holds already (`carry`)
        if recorder is not None:
            recorder.before_chunk(cache, start, end)
        last = end == n and recorder is not None
        cut = max(skip, end - start - tail_tokens(config.stride)) if last else None  # kept for a longer text
        ema.begin(end - start, tail if skip else None, skip, cut)
        kept = cache.structure.kept
        positions = torch.arange(kept + skip, kept + (end - start), device=device)[None]
        _forward(model, doc_ids[None, start + skip : end], positions, cache, ema)
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
        if last and recorder is not None:
            recorder.record_tail(ema.tail_at(start))
        cache.commit()
        n_chunks += 1
        if progress is not None:
            progress(end, n)
    if config.scoring == "end":
        _score_end(model, cache, parts, selection, out, shape)
    seconds = time.perf_counter() - t0
    logger.debug("cascade pass: %d tokens, %d chunks, %.2fs, kept %d", n, n_chunks, seconds, cache.structure.kept)
    kept_state = recorder.state() if recorder is not None else None
    return CascadeScores(out, picked, n_chunks, cache.structure.kept, need, seconds, state=kept_state)


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
    selection: HeadSelection,
    out: torch.Tensor,
    shape: ModelShape,
) -> None:
    """Baseline: one query pass over what the cache kept; scores go back to each kept slot's source token."""
    rep = shape.num_heads // shape.num_kv_heads
    kept = cache.get_seq_length()
    base = getattr(model, "base_model", model)
    device = next(model.parameters()).device
    picked = selection.layers
    with cache.frozen_view():
        for j, part in enumerate(parts):
            (captured,) = batched_scores(base, cache, kept, [part], selection, device, 1)
            for i, layer in enumerate(picked):
                probs = captured[layer].float().cpu()
                pos = cache.layer(layer).kept_positions()[0].cpu()  # [Hkv, K_layer]
                src = probs[:, probs.shape[-1] - pos.shape[-1] :]
                index = pos.repeat_interleave(rep, dim=0) if pos.shape[0] > 1 else pos.expand(shape.num_heads, -1)
                out[j, i].scatter_(1, index, src)
