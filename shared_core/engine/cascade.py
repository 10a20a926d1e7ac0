"""Cascading KV cache (Willette et al., ICLR 2025) for documents longer than the model window or a memory budget.

Per attention layer the cache keeps S *sink* tokens (the first S tokens, always kept) and N *sub-caches* of W
slots. Sub-cache 0 accepts every token; a full sub-cache passes its oldest token on to the next one; sub-cache
i >= 1 accepts every second token that reaches it, so it holds every 2^i-th token of the stream. A token that
reaches sub-cache i on a non-accepting turn competes with the newest token there and the one with the lower
exponential moving average (EMA) of received attention is dropped. The oldest token of the last sub-cache is
dropped when it is full: that is the cache's horizon.

Which *slot* a token moves to depends only on token counts, never on attention, so all layers (and heads) keep
the same number of tokens in the same order and one attention mask serves every layer. Which *token* fills a
slot is chosen per layer and per key head from that head's EMA. A commit of c tokens is therefore a handful of
vectorised tensor ops per sub-cache (pairwise `torch.where` on EMA), not a per-token loop.

Positions. transformers rotates keys (RoPE) before `Cache.update`, at the positions the caller gives. Keys are
stored *without* rotary position: a committed chunk is un-rotated with the model's own cos/sin (inverse of
``k*cos + rotate_half(k)*sin`` is ``(k'*cos - rotate_half(k')*sin) / (cos^2 + sin^2)``, exact also for scaled
RoPE variants whose cos/sin carry an attention factor). When the cache is read, the kept keys are rotated to
the contiguous positions ``0..K-1`` (sinks first, then the sub-caches from oldest to newest); the caller gives
the next chunk ``position_ids = K + arange(chunk)`` (which is also transformers' default, because
`get_seq_length()` returns K). Partial rotary (cos narrower than the head) rotates only the leading dims.
Supported: RoPE in the ``rotate_half`` layout (Llama, Qwen, Mistral, Gemma, Phi ...); models without a
``rotary_emb`` are refused with a ValueError.

Sliding-window layers (Gemma 3's local layers): they keep what the model itself keeps, the last
``sliding_window - 1`` tokens, also stored un-rotated, and are re-positioned to end right before the next
chunk (virtual positions ``K - K_s .. K-1``). Relative distances inside the window are thus exact, and the
sliding mask that transformers builds from `get_mask_sizes` lines up. Other layer kinds (linear attention,
chunked attention, shared-KV layers) are refused.

EMA. After each chunk's forward, an observer (`shared_core.engine.capture` hook, see `cascade_scoring`) reduces a few
sampled rows of the chunk (``ema_rows``) to the attention mass each key received, per key head, and hands it
to the layer; `commit` folds it in: ``ema = decay * ema + (1 - decay) * received`` for kept slots, ``received``
for the chunk's own tokens. Cost: ``ema_rows`` softmax rows per layer per chunk, about ``ema_rows / stride`` of
the chunk's attention.

Memory. Per layer the cache holds ``S + N*W`` slots (un-rotated keys, a rotated view, values, EMA, source
position) plus the pending chunk; nothing grows with the document. `cascade_budget.estimate_cascade_bytes` is
the working-set estimate that `check_budget` compares with ``memory_budget`` (a budget too small for one stride
is a ValueError, never an out-of-memory crash).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from shared_core.config.cascade import CascadeConfig
from shared_core.engine.cascade_slots import _Plan, _Slots, _Structure
from shared_core.models.family import RotaryFn, apply_rope, layer_kinds, model_rotary

logger = logging.getLogger(__name__)

CommitFn = Callable[[int, torch.Tensor, torch.Tensor, int], None]
"""(layer_idx, keys without RoPE [B,H,c,d], values [B,H,c,d], index of the chunk's first token) after a commit."""


class _CascadeLayerBase(CacheLayerMixin):
    """Shared parts of the full and sliding cascade layers (pending chunk, rotated view, received attention)."""

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, owner: CascadingCache, layer_idx: int) -> None:
        super().__init__()
        self.owner = owner
        self.layer_idx = layer_idx
        self.pending_k: torch.Tensor | None = None  # rotated at positions K..K+c-1, as the model gave them
        self.pending_v: torch.Tensor | None = None
        self.received: torch.Tensor | None = None  # [B,H,kv] attention mass received during the pending chunk
        self.carried_in = False  # pending holds a chunk's first tokens from an earlier pass: the next forward extends
        self._view: tuple[torch.Tensor, torch.Tensor] | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, _, d = key_states.shape
        self.keys = key_states.new_zeros(b, h, 0, d)
        self.values = value_states.new_zeros(b, h, 0, value_states.shape[-1])
        self.is_initialized = True

    # -- what the model reads --------------------------------------------------------------------------------
    def _kept_view(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def commit(self, plan: _Plan) -> None:
        """Fold the pending chunk into the layer's kept slots following `plan`."""
        raise NotImplementedError

    def kept_positions(self) -> torch.Tensor:
        """Source token index [B, H_kv, K] of every kept slot, in position order."""
        raise NotImplementedError

    def _empty(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The zero-length keys and values set by `lazy_initialization` (nothing kept yet)."""
        assert self.keys is not None and self.values is not None
        return self.keys, self.values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return kept (re-positioned) + [pending chunk when frozen] + new keys/values; stash a doc chunk."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._view is None:
            self._view = self._kept_view()
        kk, vv = self._view
        if self.owner.frozen:
            parts_k = [kk, self.pending_k, key_states] if self.pending_k is not None else [kk, key_states]
            parts_v = [vv, self.pending_v, value_states] if self.pending_v is not None else [vv, value_states]
            b = key_states.shape[0]  # a batch of query parts reads the one document's kept keys (expanded views)
            parts_k = [t.expand(b, -1, -1, -1) if t.shape[0] != b else t for t in parts_k]
            parts_v = [t.expand(b, -1, -1, -1) if t.shape[0] != b else t for t in parts_v]
            return torch.cat(parts_k, dim=2), torch.cat(parts_v, dim=2)
        if self.pending_k is not None and self.pending_v is not None and self.carried_in:
            self.carried_in = False  # the chunk began in an earlier pass (`CascadingCache.carry`): extend it
            self.pending_k = torch.cat([self.pending_k, key_states], dim=2)
            self.pending_v = torch.cat([self.pending_v, value_states], dim=2)
        elif self.pending_k is not None:
            raise RuntimeError("CascadingCache: commit() the previous chunk before reading the next one")
        else:
            self.pending_k, self.pending_v = key_states, value_states
        assert self.pending_k is not None and self.pending_v is not None
        self.owner._note_pending(self.pending_k.shape[-2])
        return torch.cat([kk, self.pending_k], dim=2), torch.cat([vv, self.pending_v], dim=2)

    def record_received(self, mass: torch.Tensor) -> None:
        """Attention mass [B, H_kv, kv] that this layer's keys received from the pending chunk's sampled rows."""
        if self.owner.frozen:
            return
        self.received = mass.float()

    def get_max_length(self) -> int:
        return -1

    def _unrotated_pending(self, plan: _Plan) -> torch.Tensor:
        """The pending chunk's keys without rotary position, handed to the owner's commit observer."""
        assert self.pending_k is not None
        cos, sin = self.owner.rope(self.layer_idx, plan.kept_before, plan.n_new, self.pending_k.device)
        k_un = apply_rope(self.pending_k, cos, sin, inverse=True)
        self.owner.note_committed(self.layer_idx, k_un, self.pending_v, plan.seen_before)
        return k_un

    def _pending_slots(self, plan: _Plan, k_un: torch.Tensor, received_new: torch.Tensor) -> _Slots:
        assert self.pending_v is not None
        b, h, c, _ = k_un.shape
        pos = torch.arange(plan.seen_before, plan.seen_before + c, device=k_un.device).expand(b, h, c)
        return _Slots(k_un, self.pending_v, received_new, pos)

    def _clear_pending(self) -> None:
        self.pending_k = self.pending_v = self.received = None
        self._view = None

    def reset(self) -> None:
        raise NotImplementedError("CascadingCache is single-use: build a new one per document")


class CascadeLayer(_CascadeLayerBase):
    """A full-attention layer's cascade: sinks + N sub-caches, EMA-based selection, keys without RoPE."""

    def __init__(self, owner: CascadingCache, layer_idx: int) -> None:
        super().__init__(owner, layer_idx)
        self.sinks: _Slots | None = None
        self.stages: list[_Slots] = []

    def ordered_slots(self) -> _Slots | None:
        """All kept slots, oldest first: sinks, then sub-caches N-1 .. 0 (the order of positions 0..K-1)."""
        if self.sinks is None:
            return None
        return _Slots.cat([self.sinks, *reversed(self.stages)])

    def get_seq_length(self) -> int:
        return self.owner.get_seq_length()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.get_seq_length() + query_length, 0

    def _kept_view(self) -> tuple[torch.Tensor, torch.Tensor]:
        slots = self.ordered_slots()
        if slots is None or len(slots) == 0:
            return self._empty()
        cos, sin = self.owner.rope(self.layer_idx, 0, len(slots), slots.k.device)
        return apply_rope(slots.k, cos, sin), slots.v

    def commit(self, plan: _Plan) -> None:
        """Fold the pending chunk into sinks and sub-caches following `plan`; update EMAs."""
        if self.pending_k is None:
            return
        k_un = self._unrotated_pending(plan)
        b, h, c, _ = k_un.shape
        kept = plan.kept_before
        recv = self.received
        if recv is None:
            recv = k_un.new_zeros(b, h, kept + c, dtype=torch.float32)
        new = self._pending_slots(plan, k_un, recv[:, :, kept : kept + c])
        decay = self.owner.config.ema_decay
        if self.sinks is None:
            empty = new.slice(0, 0)
            self.sinks = empty
            self.stages = [empty for _ in plan.stages]
        # EMA of kept slots, in view order: sinks, stage N-1 .. stage 0
        offset = len(self.sinks)
        for i in reversed(range(len(self.stages))):
            st = self.stages[i]
            if len(st):
                st.ema = decay * st.ema + (1.0 - decay) * recv[:, :, offset : offset + len(st)]
            offset += len(st)
        self.sinks = _Slots.cat([self.sinks, new.slice(0, plan.to_sinks)])
        stream = new.slice(plan.to_sinks)
        for i, sp in enumerate(plan.stages):
            st = self.stages[i]
            if sp.merge_first:
                st = st.challenge_newest(stream.slice(0, 1))
                stream = stream.slice(1)
            arrivals = stream if i == 0 else stream.pair_winners()
            combined = _Slots.cat([st, arrivals])
            stream = combined.slice(0, sp.overflow)
            self.stages[i] = combined.slice(sp.overflow)
        self._clear_pending()

    def kept_positions(self) -> torch.Tensor:
        """Source token index [B, H_kv, K] of every kept slot, in position order."""
        slots = self.ordered_slots()
        if slots is None:
            return torch.zeros(1, 1, 0, dtype=torch.long)
        return slots.pos


class SlidingCascadeLayer(_CascadeLayerBase):
    """A sliding-window layer: keeps the model's own window (last `sliding_window - 1` tokens), re-positioned."""

    is_sliding = True

    def __init__(self, owner: CascadingCache, layer_idx: int, sliding_window: int) -> None:
        super().__init__(owner, layer_idx)
        self.sliding_window = sliding_window
        self.slots: _Slots | None = None

    def _kept_len(self) -> int:
        return min(self.owner.structure.seen, self.sliding_window - 1)

    def get_seq_length(self) -> int:
        return self.owner.get_seq_length()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        kept = self._kept_len()
        pending = self.owner.pending_len if self.owner.frozen else 0
        return kept + pending + query_length, self.owner.structure.kept - kept

    def _kept_view(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.slots is None or len(self.slots) == 0:
            return self._empty()
        n = len(self.slots)
        cos, sin = self.owner.rope(self.layer_idx, self.owner.structure.kept - n, n, self.slots.k.device)
        return apply_rope(self.slots.k, cos, sin), self.slots.v

    def commit(self, plan: _Plan) -> None:
        """Append the pending chunk and keep the last `sliding_window - 1` tokens."""
        if self.pending_k is None:
            return
        k_un = self._unrotated_pending(plan)
        new = self._pending_slots(plan, k_un, k_un.new_zeros(k_un.shape[:3], dtype=torch.float32))
        combined = new if self.slots is None else _Slots.cat([self.slots, new])
        self.slots = combined.slice(max(0, len(combined) - (self.sliding_window - 1)))
        self._clear_pending()

    def kept_positions(self) -> torch.Tensor:
        """Source token index [B, H_kv, K_s] of the kept window."""
        if self.slots is None:
            return torch.zeros(1, 1, 0, dtype=torch.long)
        return self.slots.pos


class CascadingCache(Cache):
    """A transformers `Cache` holding a bounded cascade per layer; read a document with strided chunks.

    Protocol per chunk: forward the chunk (position_ids ``K + arange(c)``, K = `get_seq_length()`); the cache
    returns kept + chunk keys and stashes the chunk. Optionally, inside ``with cache.frozen_view():``, forward
    query tokens (positions ``K + c + arange(q)``): they see kept + chunk + themselves and are not stored.
    Then `commit()` folds the chunk in. Batch size 1 is the supported case (one document per cache).
    """

    def __init__(
        self,
        config: CascadeConfig,
        rotary: RotaryFn,
        kinds: list[str],
        sliding_windows: list[int | None] | None = None,
    ) -> None:
        self.config = config
        self.structure = _Structure(config)
        self.rotary = rotary
        self.frozen = False
        self.pending_len = 0
        self.carried = 0  # tokens of the next chunk `carry` set before its forward
        self._rope_cache: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        windows = sliding_windows or [None] * len(kinds)
        layers: list[Any] = []
        for i, (kind, win) in enumerate(zip(kinds, windows, strict=True)):
            if kind == "full":
                layers.append(CascadeLayer(self, i))
            elif kind == "sliding" and win:
                layers.append(SlidingCascadeLayer(self, i, win))
            else:
                raise ValueError(f"layer {i}: unsupported kind {kind!r} for the cascading KV cache")
        self._layer_kind_key = [("sliding" if k == "sliding" else "full", i) for i, k in enumerate(kinds)]
        self.kinds = list(kinds)
        self.on_commit: CommitFn | None = None  # sees each layer's committed chunk (un-rotated keys, values)
        super().__init__(layers=layers)

    @classmethod
    def for_model(cls, model: Any, config: CascadeConfig, num_layers: int | None = None) -> CascadingCache:
        """A cache for `model`'s first `num_layers` layers (all by default), using its own rotary embedding."""
        kinds, windows = layer_kinds(model)
        n = num_layers if num_layers is not None else len(kinds)
        return cls(config, model_rotary(model), kinds[:n], windows[:n])

    # -- the Cache interface the model uses ---------------------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Virtual position of the next token: kept slots (+ the pending chunk inside `frozen_view`, + the tokens
        `carry` put before the next forward)."""
        return self.structure.kept + (self.pending_len if self.frozen else self.carried)

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        if layer_idx >= len(self.layers):
            return self.get_seq_length() + query_length, 0
        return self.layer(layer_idx).get_mask_sizes(query_length)

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.config.capacity

    # -- cascade protocol ---------------------------------------------------------------------------------------
    def _note_pending(self, n: int) -> None:
        if self.pending_len and n != self.pending_len:
            raise RuntimeError(f"CascadingCache: layers saw different chunk lengths ({self.pending_len} vs {n})")
        self.pending_len = n

    @contextlib.contextmanager
    def frozen_view(self) -> Iterator[None]:
        """Forwards inside see kept + pending chunk and store nothing (query passes)."""
        self.frozen = True
        try:
            yield
        finally:
            self.frozen = False

    def carry(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Begin the next chunk with its first tokens as an earlier pass read them: keys [L, H_kv, t, d] rotated at
        positions K..K+t-1 and values, per layer. The next forward (positions K+t..) extends the chunk with the
        rest, and the chunk is committed whole; so a longer document resumes inside its last chunk exactly."""
        if self.pending_len or self.carried:
            raise RuntimeError("CascadingCache: carry() needs a cache with no pending chunk")
        for i in range(len(self.layers)):
            layer = self.layer(i)
            layer.pending_k, layer.pending_v = keys[i : i + 1], values[i : i + 1]
            layer.carried_in = True
        self.carried = int(keys.shape[2])

    def note_committed(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor | None, start: int) -> None:
        """Hand a layer's committed chunk (keys without RoPE) to `on_commit`, e.g. to keep it for later queries."""
        if self.on_commit is not None and values is not None:
            self.on_commit(layer_idx, keys, values, start)

    def commit(self) -> None:
        """Fold the pending chunk into every layer (one layer-independent slot plan, per-layer EMA choices)."""
        if not self.pending_len:
            return
        plan = self.structure.plan(self.pending_len)
        for i in range(len(self.layers)):
            self.layer(i).commit(plan)
        self.pending_len = self.carried = 0
        self._rope_cache.clear()

    def layer(self, layer_idx: int) -> _CascadeLayerBase:
        """Layer `layer_idx` with its cascade type (the base class types `layers` as any cache layer)."""
        layer = self.layers[layer_idx]
        assert isinstance(layer, _CascadeLayerBase)
        return layer

    def rope(self, layer_idx: int, start: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for positions start..start+length-1 of this layer's kind (memoised until the next commit)."""
        key = (self._layer_kind_key[layer_idx][0], start, length, str(device))
        hit = self._rope_cache.get(key)
        if hit is None:
            positions = torch.arange(start, start + length, device=device)[None]
            cos, sin = self.rotary(layer_idx, positions)
            hit = self._rope_cache[key] = (cos.float(), sin.float())
        return hit
