"""Many query parts in one forward against one document prefix: the batch seam of the attention engine.

The parts of a batch are *packed* into one sequence: the tokens they all start with (the instruction) once, then
each part's own tokens, every part at the positions its own pass would give it. A mask lets each part's tokens see
the document prefix, the shared tokens and their own part causally, nothing of the other parts; so the document's
keys are read as they are (never expanded per part), the shared tokens run once, and each element's score (the mean
over its own query rows, `BatchRowObserver`) is the one its own pass gives, up to float rounding. A single part
runs under the model's own mask, which keeps models with sliding-window layers exact: they run one part per
forward (`packable`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from shared_core.engine import capture, query_adapter
from shared_core.engine.heads import HeadSelection
from shared_core.engine.prompt import QueryTokens
from shared_core.models.family import layer_kinds


@dataclass(frozen=True)
class QueryBatch:
    """Parts packed into one sequence: ids and positions (offsets from the prefix end) [1, R], the mask among the
    packed tokens [R, R] (None for a single part: the model's causal mask), and each part's row weights: the packed
    rows that carry weight [r] and their weights per part [P, r] (1/n over each part's own query rows)."""

    ids: torch.Tensor
    offsets: torch.Tensor
    mask: torch.Tensor | None
    rows: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def of(cls, parts: Sequence[QueryTokens]) -> QueryBatch:
        """Pack `parts`: their longest common token prefix once, then each part's remaining tokens. A part's tokens
        after its last weighted row (the template's tail after the query) are not run: attention is causal, so
        they cannot change what its rows attend to."""
        parts = [QueryTokens(ids=p.ids[: max(p.rows) + 1], rows=p.rows) for p in parts]
        shared = common_prefix([p.ids for p in parts])
        ids, offsets, block = list(parts[0].ids[:shared]), list(range(shared)), [-1] * shared
        where: list[list[int]] = []  # packed index of every token of each part
        for b, part in enumerate(parts):
            where.append(list(range(shared)) + list(range(len(ids), len(ids) + len(part.ids) - shared)))
            ids += part.ids[shared:]
            offsets += range(shared, len(part.ids))
            block += [b] * (len(part.ids) - shared)
        mask = None
        if len(parts) > 1:
            pos, blk = torch.tensor(offsets), torch.tensor(block)
            mask = (pos[None, :] <= pos[:, None]) & ((blk[None, :] == -1) | (blk[None, :] == blk[:, None]))
        rows = sorted({where[b][r] for b, part in enumerate(parts) for r in part.rows})
        column = {row: i for i, row in enumerate(rows)}
        weights = torch.zeros(len(parts), len(rows), dtype=torch.float32)
        for b, part in enumerate(parts):
            for r in part.rows:
                weights[b, column[where[b][r]]] += 1.0 / len(part.rows)
        return cls(torch.tensor([ids], dtype=torch.long), torch.tensor([offsets]), mask, torch.tensor(rows), weights)

    def attention_mask(self, start: int, device: torch.device) -> torch.Tensor | None:
        """The 4D mask [1, 1, R, start + R] (prefix visible to every token), or None for a single part."""
        if self.mask is None:
            return None
        prefix = torch.ones(self.mask.shape[0], start, dtype=torch.bool)
        return torch.cat([prefix, self.mask], dim=1)[None, None].to(device)


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix all `seqs` share."""
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


KeyValues = tuple[torch.Tensor, torch.Tensor]
LayerSource = KeyValues | Callable[[], KeyValues]
"""One layer's document keys and values [1, H, >= K, d], or a function building them when the layer first runs."""


class _SharedPrefixLayer(DynamicLayer):
    """A layer whose keys/values [1, H, K, d] every packed part reads; new tokens are returned, never kept. A source
    longer than K has room after the prefix: the new tokens are written there instead of concatenated."""

    def __init__(self, source: LayerSource, length: int) -> None:
        super().__init__()
        self.source, self.length = source, length
        self.is_initialized = True

    def _resolved(self) -> KeyValues:
        if self.keys is None or self.values is None:
            self.keys, self.values = self.source() if callable(self.source) else self.source
        return self.keys, self.values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self._resolved()
        n, end = self.length, self.length + key_states.shape[-2]
        if keys.shape[-2] < end or values.shape[-2] < end:
            return torch.cat([keys[..., :n, :], key_states], dim=-2), torch.cat(
                [values[..., :n, :], value_states], dim=-2
            )
        keys[..., n:end, :], values[..., n:end, :] = key_states, value_states
        return keys[..., :end, :], values[..., :end, :]

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0


class SharedPrefixCache(Cache):
    """A read-only cache over per-layer document keys and values (or functions building them on first use, kept
    for the next batch), shared by the parts of a batch; `length` = the prefix's positions."""

    def __init__(self, layers: Sequence[LayerSource], length: int) -> None:
        super().__init__(layers=[_SharedPrefixLayer(source, length) for source in layers])


class BatchRowObserver:
    """Per selected layer, each part's selected heads' attention averaged over its own query rows: [P, H_sel, kv]."""

    def __init__(self, selection: HeadSelection, rows: torch.Tensor, weights: torch.Tensor) -> None:
        self.selection = selection
        self.layers = frozenset(selection.per_layer)
        self.deepest = selection.deepest
        self.rows, self.weights = rows, weights
        self.captured: dict[int, torch.Tensor] = {}

    def observe(self, inputs: capture.AttentionInputs) -> None:
        """The weighted rows' softmax (selected heads only), reduced with each part's row weights."""
        probs = inputs.row_probs(self.rows)[0]  # [Hq, r, kv]: one packed sequence
        heads = self.selection.per_layer[inputs.layer_idx]
        if heads is not None:
            probs = probs.index_select(0, torch.tensor(heads, device=probs.device))
        weights = self.weights.to(probs.device)  # [P, r]: one matmul over the rows, no permuted copy of probs
        self.captured[inputs.layer_idx] = torch.matmul(weights, probs).transpose(0, 1)


class LeadRecorder:
    """Keeps, for every layer up to `deepest`, the keys and values of the first `tokens` packed tokens of a batch
    (the instruction every part starts with): {layer: ([1, Hkv, t, d], [1, Hkv, t, d])}; the batch's own
    observer (`inner`, set by `batched_scores`) still scores its layers."""

    def __init__(self, tokens: int, deepest: int) -> None:
        self.tokens = tokens
        self.layers = frozenset(range(deepest + 1))
        self.deepest = deepest
        self.inner: BatchRowObserver | None = None
        self.kept: dict[int, KeyValues] = {}

    def observe(self, inputs: capture.AttentionInputs) -> None:
        """Copy the lead's keys and values (the packed tokens come last in the layer's keys), then score."""
        first = inputs.key.shape[2] - inputs.query.shape[2]
        lead = slice(first, first + self.tokens)
        self.kept[inputs.layer_idx] = (inputs.key[:, :, lead].clone(), inputs.value[:, :, lead].clone())
        if self.inner is not None and inputs.layer_idx in self.inner.layers:
            self.inner.observe(inputs)


def packable(module: Any) -> bool:
    """Whether parts can be packed into one forward over `module` (every layer full attention: one mask serves)."""
    try:
        kinds, _ = layer_kinds(module)
    except ValueError:
        return False
    return all(kind == "full" for kind in kinds)


def batched_scores(
    module: Any,
    cache: Cache,
    start: int,
    parts: Sequence[QueryTokens],
    selection: HeadSelection,
    device: torch.device,
    batch_size: int,
    document_tail: int = 0,
    lead: LeadRecorder | None = None,
) -> list[dict[int, torch.Tensor]]:
    """Each part's selected heads' attention over the `start` cached positions, {layer: [H_sel, kv]} (kv = the
        cached keys the layer holds, the last of them at position start - 1), `batch_size` parts packed per forward
        (one per forward where the model is not `packable`). `cache` is read only: a `SharedPrefixCache`, a cascade's
        frozen view or a forked cache. With `document_tail` > 0 every part starts with the same `document_tail` tokens
        that extend the document (one forward: `batch_size` >= len(parts)): they are scored too, and a forked cache
        keeps them. `lead` records the first batch's lead keys and values (every part starts with those tokens). The
    selection's query adapter, if any, runs on the query parts' tokens only (never on the document tail)."""
    size = max(1, batch_size) if packable(module) else 1
    out: list[dict[int, torch.Tensor]] = []
    for first in range(0, len(parts), size):
        batch = QueryBatch.of(parts[first : first + size])
        ids = batch.ids.to(device)
        positions = (batch.offsets + start).to(device)
        observer = BatchRowObserver(selection, batch.rows.to(device), batch.weights)
        watcher: BatchRowObserver | LeadRecorder = observer
        if lead is not None and first == 0:
            lead.inner, watcher = observer, lead
        mask = batch.attention_mask(start, device)
        with query_adapter.applied(selection.adapter, module, skip=document_tail):
            capture.run_observed(module, cache, watcher, input_ids=ids, position_ids=positions, attention_mask=mask)
        n_new = ids.shape[1] - document_tail  # the packed shared block comes first: the tail is its start
        out.extend(
            {layer: probs[b, :, : probs.shape[-1] - n_new] for layer, probs in observer.captured.items()}
            for b in range(len(batch.weights))
        )
    return out
