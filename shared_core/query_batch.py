"""Many query parts in one forward against one document prefix: the batch seam of the attention engine.

Query parts of different lengths are right-padded to one length and run as a batch against the document's keys
and values, which every element shares (expanded, never copied into the cache). Right padding needs no attention
mask: a causal row never sees the pads after it. Each element's score is the mean over its own query rows
(`BatchRowObserver`), so a batched pass gives each query the scores its own pass would, up to float rounding. On a
GPU this turns B small forwards into one; on a CPU it saves the per-forward overhead of the layer stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from . import capture
from .heads import HeadSelection
from .prompt import QueryTokens


@dataclass(frozen=True)
class QueryBatch:
    """Right-padded query ids [B, L] and row weights [B, L] (1/n over each element's own query rows)."""

    ids: torch.Tensor
    weights: torch.Tensor
    lengths: list[int]

    @classmethod
    def of(cls, parts: Sequence[QueryTokens], pad_id: int) -> QueryBatch:
        """Pad `parts` to their longest length with `pad_id`."""
        length = max(len(p.ids) for p in parts)
        ids = torch.full((len(parts), length), pad_id, dtype=torch.long)
        weights = torch.zeros(len(parts), length, dtype=torch.float32)
        for i, part in enumerate(parts):
            ids[i, : len(part.ids)] = torch.tensor(part.ids, dtype=torch.long)
            weights[i, part.rows] = 1.0 / len(part.rows)
        return cls(ids, weights, [len(p.ids) for p in parts])


class _SharedPrefixLayer(DynamicLayer):
    """A layer whose keys/values [1, H, K, d] every batch element reads; new tokens are returned, never stored."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = key_states.shape[0]
        assert self.keys is not None and self.values is not None
        keys = torch.cat([self.keys.expand(b, -1, -1, -1), key_states], dim=-2)
        values = torch.cat([self.values.expand(b, -1, -1, -1), value_states], dim=-2)
        return keys, values


class SharedPrefixCache(Cache):
    """A read-only cache over per-layer document keys and values, shared by a batch of query parts."""

    def __init__(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__(layers=[_SharedPrefixLayer(k, v) for k, v in layers])


class BatchRowObserver:
    """Per selected layer, each element's selected heads' attention averaged over its own query rows: [B, H_sel, kv]."""

    def __init__(self, selection: HeadSelection, weights: torch.Tensor) -> None:
        self.selection = selection
        self.layers = frozenset(selection.per_layer)
        self.deepest = selection.deepest
        self.weights = weights
        self.captured: dict[int, torch.Tensor] = {}

    def observe(
        self,
        layer_idx: int,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        softcap: float | None,
    ) -> None:
        """Softmax rows of every query position, reduced with each element's row weights."""
        rows = torch.arange(query.shape[2], device=query.device)
        probs = capture.query_row_probs(query, key, attention_mask, scaling, rows, softcap)
        probs = torch.einsum("bhrk,br->bhk", probs, self.weights.to(probs.device))
        heads = self.selection.per_layer[layer_idx]
        if heads is not None:
            probs = probs.index_select(1, torch.tensor(heads, device=probs.device))
        self.captured[layer_idx] = probs


def batched_scores(
    module: Any,
    cache: Cache,
    start: int,
    parts: Sequence[QueryTokens],
    selection: HeadSelection,
    device: torch.device,
    batch_size: int,
    pad: int,
) -> list[dict[int, torch.Tensor]]:
    """Each part's selected heads' attention over the `start` cached positions and itself, {layer: [H_sel, kv]},
    `batch_size` parts per forward. `cache` is read only: a `SharedPrefixCache` or a cascade's frozen view."""
    out: list[dict[int, torch.Tensor]] = []
    for first in range(0, len(parts), max(1, batch_size)):
        batch = QueryBatch.of(parts[first : first + max(1, batch_size)], pad)
        ids = batch.ids.to(device)
        positions = torch.arange(start, start + ids.shape[1], device=device)[None].expand(ids.shape[0], -1)
        observer = BatchRowObserver(selection, batch.weights)
        capture.run_observed(module, cache, observer, input_ids=ids, position_ids=positions)
        out.extend({layer: probs[b] for layer, probs in observer.captured.items()} for b in range(ids.shape[0]))
    return out


def pad_id(tokenizer: Any) -> int:
    """A token id to pad query parts with (never attended: pads come after every real row)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0
