"""From captured query rows to unit scores: head/layer aggregation, calibration and pooling.

Per selected head, a document token's score is the attention it receives averaged over the query
rows. Heads are combined at token level (mean, sum, or max over heads then mean over layers); the
token scores are then pooled over each unit's tokens (mean, max, top-k mean, or QRHead's
threshold sum). Calibration subtracts the same scores computed with the query "N/A".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

PerLayer = dict[int, torch.Tensor]
"""{layer: [selected heads, document tokens]} attention scores of one query."""


class StopAtObserver:
    """Observer that captures nothing and stops the forward after layer `deepest` (document prefill)."""

    def __init__(self, deepest: int) -> None:
        self.layers = frozenset({deepest})
        self.deepest = deepest

    def observe(self, *args: Any) -> None:
        """Nothing to keep: the prefill only fills the KV cache."""


def document_token_scores(
    captured: dict[int, torch.Tensor], total_len: int, doc_start: int, n_doc: int
) -> dict[int, torch.Tensor]:
    """Slice each layer's captured rows to the document tokens, right-aligning sliding-window layers.

    `total_len` is the number of positions seen (cached + current); a layer whose keys cover fewer
    positions (sliding window) gets zeros for the positions it no longer holds.
    """
    out: dict[int, torch.Tensor] = {}
    for layer, probs in captured.items():
        kv_len = probs.shape[-1]
        first = total_len - kv_len  # absolute position of key 0
        full = probs.new_zeros(probs.shape[0], n_doc)
        lo, hi = max(doc_start, first), doc_start + n_doc
        if hi > lo:
            full[:, lo - doc_start : hi - doc_start] = probs[:, lo - first : hi - first]
        out[layer] = full
    return out


def aggregate_heads(
    per_layer: dict[int, torch.Tensor], how: str, weights: dict[int, tuple[float, ...]] | None = None
) -> np.ndarray:
    """Combine heads and layers into one score per document token.

    `weights` (a trained head set's, aligned with each layer's rows) make the mean a weighted mean and the sum a
    weighted sum; with max_then_mean each row is scaled by its weight before the max."""
    if weights is not None:
        per_layer = {
            layer: t * torch.as_tensor(weights[layer], dtype=t.dtype, device=t.device)[:, None]
            for layer, t in per_layer.items()
        }
    if how == "max_then_mean":
        stacked = torch.stack([t.max(dim=0).values for t in per_layer.values()])
        combined = stacked.mean(dim=0)
    else:
        rows = torch.cat(list(per_layer.values()), dim=0)
        combined = rows.sum(dim=0) if how == "sum" else rows.mean(dim=0)
        if weights is not None and how != "sum":
            combined = combined * (rows.shape[0] / sum(sum(w) for w in weights.values()))
    return combined.double().cpu().numpy()


def unit_token_ranges(offsets: np.ndarray, units: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) token index range of each unit: the tokens whose char span overlaps the unit's."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    u = np.asarray(units, dtype=np.int64).reshape(-1, 2)
    lo = np.searchsorted(ends, u[:, 0], side="right")  # first token ending after the unit starts
    lo = np.minimum(lo, max(len(offsets) - 1, 0))
    hi = np.searchsorted(starts, u[:, 1], side="left")  # first token starting at/after the unit ends
    hi = np.maximum(hi, lo + 1)  # every unit gets at least its covering token
    return lo, hi


def pool(token_scores: np.ndarray, lo: np.ndarray, hi: np.ndarray, how: str, topk: int, k_std: float) -> np.ndarray:
    """Pool token scores over each unit's [lo, hi) token range; works on [n] or [rows, n] (one row per head)."""
    t = np.atleast_2d(np.asarray(token_scores, dtype=np.float64))
    n = len(lo)
    if n == 0 or t.shape[-1] == 0:
        out = np.zeros((t.shape[0], n))
    elif how in ("mean", "threshold_sum"):
        if how == "threshold_sum":  # QRHead: keep tokens above mean - k·std of the document's token scores
            threshold = t.mean(axis=1, keepdims=True) - k_std * t.std(axis=1, keepdims=True)
            t = np.where(t > threshold, t, 0.0)
        csum = np.concatenate([np.zeros((t.shape[0], 1)), np.cumsum(t, axis=1)], axis=1)
        out = csum[:, hi] - csum[:, lo]
        if how == "mean":
            out = out / np.maximum(hi - lo, 1)
    elif how == "max":
        out = np.stack([t[:, a:b].max(axis=1) for a, b in zip(lo, hi, strict=True)], axis=1)
    elif how == "topk_mean":
        out = np.stack([np.sort(t[:, a:b], axis=1)[:, -topk:].mean(axis=1) for a, b in zip(lo, hi, strict=True)], 1)
    else:
        raise ValueError(f"unknown pooling {how!r}")
    return out[0] if np.ndim(token_scores) == 1 else out
