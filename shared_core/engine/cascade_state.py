"""What one cascade pass keeps so that later queries on the same document need no new pass.

A query past the window is scored *resident*: against each chunk while it is in the cascade (sinks + sub-caches +
the chunk). What that query saw at chunk j is fully determined by (a) the keys (without RoPE) and values of every
document token, per layer, and (b) which tokens each layer's cascade held before chunk j (per key head). A pass
therefore records both, and a later query is *replayed*: for each chunk the kept keys are gathered, rotated to
their cache positions 0..K-1, the chunk's own keys to K..K+c-1, and only the query's few tokens run against them.
That is the same computation as the first pass's resident query pass (equal up to float rounding), at the cost of
the query passes alone, never the chunk forwards.

Kept per document: keys + values of the layers up to the deepest one used, in the model dtype
(2 x layers x kv_heads x head_dim x bytes per token: 36.9 KB/token for SmolLM2-135M in float32 up to layer 23),
plus per chunk the kept positions and EMAs ([layers, kv_heads, K] each) and the cascade's counters, which also let a
document that grew (a conversation with a new turn) resume the pass from its last shared chunk; and per chunk the
keys and values of the instruction the pass's queries started with (13 tokens for SmolLM2's template, ~0.47 KB per
document token), so that a replay runs only each new query's own tokens.

Growth. The keys and values live in segments (`token_kv`): a grown document's state references the earlier
state's storage for the shared tokens and holds only the rest (nothing copied). The last chunk's EMA rows read so
far are kept too (`ChunkTail`: the mass its sampled rows below a cut gave the cache and the chunk, [layers,
kv_heads, K + cut]), so a longer document resumes *inside* that chunk: the tokens before the cut are carried into
the cache as the earlier pass read them (`CascadingCache.carry`) and only the tokens from the cut on are read,
which under causal attention is the same computation as reading the whole chunk (equal up to float rounding).

Supported for models whose layers are all full attention; with sliding-window layers (Gemma 3) every query reads
the document again (`supports_replay`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from shared_core.engine.cascade import CascadeLayer, CascadingCache
from shared_core.engine.cascade_slots import _Slots
from shared_core.engine.heads import HeadSelection
from shared_core.engine.prompt import QueryTokens
from shared_core.engine.query_adapter import QueryAdapter
from shared_core.engine.query_batch import SharedPrefixCache, batched_scores, packable
from shared_core.engine.token_kv import Segment, TokenKV
from shared_core.models.family import apply_rope, apply_rope_, model_rotary, text_config

TAIL_TOKENS = 32
"""Tokens at the end of a pass's last chunk read again when the document grows (at most a quarter of the stride): a
grown text may tokenize its old last tokens differently (a merge across the old end), and a resume needs its
carried tokens unchanged."""


def tail_tokens(stride: int) -> int:
    """Tokens of the last chunk after its tail's cut, for chunks of `stride` tokens."""
    return min(TAIL_TOKENS, stride // 4)


Structure = tuple[int, tuple[int, ...], tuple[int, ...], int]
"""The cascade's counters before a chunk: (sinks, fill per sub-cache, arrivals per sub-cache, tokens seen)."""


@dataclass(frozen=True)
class ChunkRecord:
    """The cascade as chunk [start, end) found it: kept source positions and EMAs per layer, and the counters."""

    start: int
    end: int
    kept: torch.Tensor  # [L, H_kv, K] int32, kept slots in position order (K = 0 for the first chunk)
    ema: torch.Tensor  # [L, H_kv, K] float32
    structure: Structure


@dataclass(frozen=True)
class ChunkTail:
    """The last chunk's EMA rows below token `cut`: the attention mass they gave the cache and the chunk, summed
    [L, H_kv, K + cut - start] (causal: none reaches a later token), and how many rows (`EmaObserver`)."""

    cut: int
    mass: torch.Tensor
    rows: int


_NO_LEAD = torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True)
class CascadeState:
    """A document read once through the cascade: its prompt ids, keys (no RoPE) and values (`kv`), and chunk
    records; the instruction the queries of the pass started with (`lead_ids`, t tokens) with, per chunk, its keys
    (rotated: at the positions right after that chunk) and values [chunks, L, H_kv, t, d], so that a replay runs
    only each query's own tokens (t = 0: none kept); and the last chunk's `tail`, from which a longer document
    resumes inside that chunk."""

    ids: torch.Tensor  # [n] long, the document part of the prompt
    kv: TokenKV  # [L, H_kv, n, d] keys and values, in segments
    chunks: tuple[ChunkRecord, ...]
    lead_ids: torch.Tensor = _NO_LEAD
    lead_keys: torch.Tensor | None = None
    lead_values: torch.Tensor | None = None
    tail: ChunkTail | None = None

    @property
    def n_layers(self) -> int:
        """Layers kept (0..n_layers-1): a query may read any layer below this."""
        return self.kv.n_layers

    @property
    def nbytes(self) -> int:
        """Memory this state holds alive (storage it shares with the state of a shorter text counted in full)."""
        extras = [self.lead_ids, self.lead_keys, self.lead_values, self.tail.mass if self.tail else None]
        tensors = [self.ids, *(t for t in extras if t is not None), *(t for c in self.chunks for t in (c.kept, c.ema))]
        return self.kv.nbytes + sum(t.element_size() * t.numel() for t in tensors)

    def lead_for_depth(self, depth: int) -> bool:
        """Whether a lead is kept for the first `depth` layers."""
        return len(self.lead_ids) > 0 and self.lead_keys is not None and self.lead_keys.shape[1] >= depth

    def lead_for(self, parts: Sequence[QueryTokens], depth: int) -> int:
        """How many leading tokens of every part the kept lead covers (0 where a part does not start with it, one
        of its rows falls inside it, or the lead keeps fewer than `depth` layers)."""
        t = len(self.lead_ids)
        if not self.lead_for_depth(depth):
            return 0
        lead = self.lead_ids.tolist()
        return t if all(p.ids[:t] == lead and min(p.rows) >= t for p in parts) else 0


def supports_replay(model: Any) -> bool:
    """Whether a cascade pass over `model` can be kept and replayed (every layer full attention)."""
    return packable(model)


def _structure(cache: CascadingCache) -> Structure:
    st = cache.structure
    return (st.sinks, tuple(st.fill), tuple(st.arrivals), st.seen)


class StateRecorder:
    """Hooks into a cascade pass (`before_chunk`, `CascadingCache.on_commit`) and builds its `CascadeState`."""

    def __init__(self, ids: torch.Tensor, cache: CascadingCache) -> None:
        self.ids = ids.detach().to("cpu", torch.long).reshape(-1)
        self.n_layers = len(cache.layers)
        self.base: TokenKV | None = None  # the tokens before `start`, from the pass this one resumes
        self.start = 0
        self.keys: torch.Tensor | None = None  # tokens start..n-1: [L, H_kv, n - start, d]
        self.values: torch.Tensor | None = None
        self.chunks: list[ChunkRecord] = []
        self.tail: ChunkTail | None = None
        self.lead_ids: list[int] = []
        self.leads: list[tuple[torch.Tensor, torch.Tensor]] | None = []  # per chunk [L, H, t, d]; None: not kept
        cache.on_commit = self._on_commit

    def record_lead(self, ids: list[int], kept: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The lead's keys and values of the chunk just scored (every layer of the cache), from `LeadRecorder`."""
        if self.leads is None:
            return
        if (self.leads and ids != self.lead_ids) or len(kept) != self.n_layers:
            self.leads = None  # a pass whose queries started differently keeps no lead
            return
        self.lead_ids = ids
        keys = torch.stack([kept[i][0][0] for i in range(self.n_layers)]).to("cpu")
        values = torch.stack([kept[i][1][0] for i in range(self.n_layers)]).to("cpu")
        self.leads.append((keys, values))

    def resume_from(self, prefix: CascadeState, n_chunks: int) -> None:
        """The pass resumes after `prefix`'s first `n_chunks` chunks: take their records, keys and values (the
        latter shared, not copied)."""
        self.start = prefix.chunks[n_chunks].start
        self.base = prefix.kv.prefix(self.start, self.n_layers) if self.start else None
        self.chunks = list(prefix.chunks[:n_chunks])
        if prefix.lead_keys is not None and prefix.lead_values is not None and prefix.lead_for_depth(self.n_layers):
            self.lead_ids = prefix.lead_ids.tolist()
            self.leads = [
                (prefix.lead_keys[i, : self.n_layers], prefix.lead_values[i, : self.n_layers]) for i in range(n_chunks)
            ]
        else:
            self.leads = None

    def before_chunk(self, cache: CascadingCache, start: int, end: int) -> None:
        """Record what the cascade holds before chunk [start, end) is read."""
        kept, ema = [], []
        for layer in cache.layers:
            slots = layer.ordered_slots() if isinstance(layer, CascadeLayer) else None
            if slots is None:
                kept.append(torch.zeros(1, 0, dtype=torch.int32))
                ema.append(torch.zeros(1, 0, dtype=torch.float32))
            else:
                kept.append(slots.pos[0].to("cpu", torch.int32))
                ema.append(slots.ema[0].to("cpu", torch.float32))
        heads = max(k.shape[0] for k in kept)
        kept = [k.expand(heads, -1) for k in kept]
        ema = [e.expand(heads, -1) for e in ema]
        self.chunks.append(ChunkRecord(start, end, torch.stack(kept), torch.stack(ema), _structure(cache)))

    def record_tail(self, tail: ChunkTail | None) -> None:
        """The last chunk's EMA rows below its cut, from `EmaObserver.tail_at` (None: not kept)."""
        self.tail = tail

    def _on_commit(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor, start: int) -> None:
        if self.keys is None or self.values is None:
            _, heads, _, dim = keys.shape
            n = len(self.ids) - self.start
            self.keys = torch.empty((self.n_layers, heads, n, dim), dtype=keys.dtype)
            self.values = torch.empty((self.n_layers, heads, n, values.shape[-1]), dtype=values.dtype)
        c, at = keys.shape[2], start - self.start
        self.keys[layer_idx, :, at : at + c] = keys[0].to("cpu")
        self.values[layer_idx, :, at : at + c] = values[0].to("cpu")

    def state(self) -> CascadeState:
        """The finished state (call after the last commit)."""
        if self.keys is None or self.values is None:
            raise RuntimeError("the cascade pass committed no chunk")
        own = Segment(self.start, len(self.ids), self.keys, self.values)
        kv = self.base.then(own) if self.base is not None else TokenKV((own,))
        state = CascadeState(ids=self.ids, kv=kv, chunks=tuple(self.chunks), tail=self.tail)
        if self.leads is None or len(self.leads) != len(self.chunks) or not self.lead_ids:
            return state
        lead_keys = torch.stack([k for k, _ in self.leads])
        lead_values = torch.stack([v for _, v in self.leads])
        lead_ids = torch.tensor(self.lead_ids, dtype=torch.long)
        return dataclasses.replace(state, lead_ids=lead_ids, lead_keys=lead_keys, lead_values=lead_values)


@dataclass(frozen=True)
class ResumePoint:
    """Where a pass over a document sharing a prefix with `state`'s resumes: after `chunks` chunks taken as they
    are, and `carried` tokens of the next one (0: it is read from its start)."""

    state: CascadeState
    chunks: int
    carried: int

    @property
    def start(self) -> int:
        """First token the pass reads."""
        return self.state.chunks[self.chunks].start + self.carried


def resume_point(state: CascadeState, ids: torch.Tensor) -> ResumePoint | None:
    """How much of `state` a pass over `ids` can take as it is: the chunks inside the shared token prefix and, where
    the prefix covers the last chunk up to its tail's cut, that chunk's tokens before the cut (None: nothing).

    The pass then reads chunks at the recorded starts (multiples of the stride), so its chunks, and hence its
    scores, are those of a fresh pass over `ids`.
    """
    ids = ids.reshape(-1).to("cpu", torch.long)
    n = min(len(state.ids), len(ids))
    differs = (state.ids[:n] != ids[:n]).nonzero()
    common = int(differs[0, 0]) if len(differs) else n
    count = 0
    for chunk in state.chunks[1:]:  # resuming at chunk r needs chunks 0..r-1 inside the common prefix
        if chunk.start > common or chunk.start >= len(ids):
            break
        count += 1
    carried = 0
    tail, last = state.tail, state.chunks[count]
    if count == len(state.chunks) - 1 and tail is not None and last.start < tail.cut <= common < len(ids):
        carried = tail.cut - last.start
    return ResumePoint(state, count, carried) if count else None


def carried_kv(point: ResumePoint, cache: CascadingCache, device: torch.device) -> None:
    """Put the carried tokens of `point`'s chunk into `cache` (after `resume_cache`), rotated where they sit."""
    start = point.state.chunks[point.chunks].start
    keys, values = point.state.kv.span(len(cache.layers), start, start + point.carried)
    cos, sin = cache.rope(0, cache.structure.kept, point.carried, device)  # every layer is full attention (replayable)
    cache.carry(apply_rope(keys.to(device), cos, sin), values.to(device))


def resume_cache(model: Any, cache: CascadingCache, state: CascadeState, n_chunks: int, device: torch.device) -> int:
    """Put `cache` in the state it had after `state`'s first `n_chunks` chunks; returns the next token index."""
    nxt = state.chunks[n_chunks]
    sinks, fill, arrivals, seen = nxt.structure
    cache.structure.sinks, cache.structure.fill = sinks, list(fill)
    cache.structure.arrivals, cache.structure.seen = list(arrivals), seen
    depth = len(cache.layers)
    keys, values = _gather(state, depth, nxt.kept[:depth].long(), device)
    for idx, layer in enumerate(cache.layers):
        assert isinstance(layer, CascadeLayer)
        pos = nxt.kept[idx].long().to(device)
        slots = _Slots(keys[idx : idx + 1], values[idx : idx + 1], nxt.ema[idx].to(device)[None], pos[None])
        layer.lazy_initialization(slots.k, slots.v)
        layer.sinks = slots.slice(0, sinks)
        stages, cursor = [], sinks
        for size in reversed(fill):  # ordered slots: sinks, sub-cache N-1 .. 0
            stages.append(slots.slice(cursor, cursor + size))
            cursor += size
        layer.stages = list(reversed(stages))
    return nxt.start


def _gather(state: CascadeState, depth: int, pos: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Keys (no RoPE) and values [depth, H_kv, K, d] of the kept tokens `pos` [depth, H_kv, K] of layers < depth."""
    return state.kv.gather(pos, values=False).to(device), state.kv.gather(pos, values=True).to(device)


def _chunk_layers(
    state: CascadeState,
    index: int,
    depth: int,
    rope: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
    spare: int,
    lead: int,
) -> list[Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
    """Per layer < depth, a function building what the cascade held at chunk `index` (its kept tokens, then the
    chunk) rotated to positions 0..K+c-1, then the first `lead` tokens of the kept lead: keys and values
    [1, H_kv, K+c+lead+spare, d], gathered and rotated when the layer first runs, with `spare` free positions after
    them for the query tokens (`SharedPrefixCache`)."""
    chunk = state.chunks[index]
    heads = state.kv.heads
    kept = chunk.kept[:depth].long().expand(-1, heads, -1)  # the first chunk records one head
    own = torch.arange(chunk.start, chunk.end).expand(depth, heads, -1)
    positions = torch.cat([kept, own], dim=2)
    length = positions.shape[-1]
    cos, sin = (t[:length] for t in rope)
    sample = state.kv.segments[0].keys

    def gathered(values: bool, i: int, lead_source: torch.Tensor | None) -> torch.Tensor:
        buffer = sample.new_empty((1, heads, length + lead + spare, sample.shape[-1]))
        state.kv.gather_layer(i, positions[i], buffer[0, :, :length], values=values)  # one copy of each kept row
        if lead and lead_source is not None:
            buffer[0, :, length : length + lead] = lead_source[index, i, :, :lead]
        return buffer.to(device)

    def layer(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        keys = gathered(False, i, state.lead_keys)
        apply_rope_(keys[:, :, :length], cos, sin)  # the lead's keys were kept rotated
        return keys, gathered(True, i, state.lead_values)

    return [functools.partial(layer, i) for i in range(depth)]


def replay_scores(
    model: Any,
    state: CascadeState,
    queries: Sequence[tuple[torch.Tensor, torch.Tensor]],
    layers: Sequence[int],
    *,
    chunks: int | None = None,
    out: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = 1,
    adapter: QueryAdapter | None = None,
) -> torch.Tensor:
    """Per query, layer and query head, the resident score of every token, from a kept state: [Q, len(layers), Hq, n].

    For each chunk only the queries run (against the chunk's kept tokens and the chunk itself), as in the first
    pass; a layer's kept keys are gathered and rotated once per chunk, when it first runs, for every batch. Where
    the state kept the instruction the queries start with (`CascadeState.lead_for`), its keys and values are put
    after the chunk's and only each query's own tokens run. `chunks` restricts the replay to the first chunks (a
    resumed pass replays the shared ones only) and `out` receives it. Up to `batch_size` queries are packed into one
    forward per chunk (`query_batch`).
    """
    picked = sorted(layers)
    if picked[-1] >= state.n_layers:
        raise ValueError(f"layer {picked[-1]} is deeper than the kept state ({state.n_layers} layers)")
    device = next(model.parameters()).device
    n = len(state.ids)
    heads = text_config(model).num_attention_heads
    if out is None:
        out = torch.zeros(len(queries), len(picked), heads, n, dtype=torch.float32)
    selection = HeadSelection(dict.fromkeys(picked), "replay", adapter=adapter)
    depth = picked[-1] + 1
    parts = [as_part(ids, rows) for ids, rows in queries]
    lead = state.lead_for(parts, depth)
    parts = [QueryTokens(ids=p.ids[lead:], rows=[r - lead for r in p.rows]) for p in parts]
    todo = len(state.chunks) if chunks is None else chunks
    longest = max(int(chunk.kept.shape[-1]) + chunk.end - chunk.start for chunk in state.chunks[:todo])
    cos, sin = model_rotary(model)(0, torch.arange(longest, device=device)[None])
    rope = (cos[0].float(), sin[0].float())
    spare = max(len(p.ids) for p in parts) * min(len(parts), max(1, batch_size))  # the longest packed batch
    for index in range(todo):
        chunk = state.chunks[index]
        kept, c = int(chunk.kept.shape[-1]), chunk.end - chunk.start
        prefix = SharedPrefixCache(_chunk_layers(state, index, depth, rope, device, spare, lead), kept + c + lead)
        scored = batched_scores(model.base_model, prefix, kept + c + lead, parts, selection, device, batch_size)
        for j, captured in enumerate(scored):
            part = [captured[layer][:, kept : kept + c] for layer in picked]
            out[j, :, :, chunk.start : chunk.end] = torch.stack(part).float().cpu()
        if progress is not None:
            progress(index + 1, todo)
    return out


def as_part(ids: torch.Tensor, rows: torch.Tensor) -> QueryTokens:
    """A (query ids, query rows) pair of tensors as the prompt layout's `QueryTokens`."""
    return QueryTokens(ids=[int(x) for x in ids.reshape(-1)], rows=[int(x) for x in rows.reshape(-1)])
