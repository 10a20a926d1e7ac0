"""Query-row attention capture through transformers' attention-function interface.

We register one attention function, ``"attnret"``, that lets the model's own SDPA path compute the
outputs and, for the layers an active observer asks for, hands the observer the post-RoPE query and
key states (cache included) so it can compute the few rows it needs. No n×n matrix is ever built:
an observer computes softmax rows only for the query tokens it selects, so memory grows linearly
with the document.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from .model_family import forward_with_cache

ATTN_IMPLEMENTATION = "attnret"

_registered = False
_register_lock = threading.Lock()
_active: contextvars.ContextVar[AttentionObserver | None] = contextvars.ContextVar("attnret_observer", default=None)


class StopForward(Exception):
    """Raised by an observer once the deepest layer it needs has run, to skip the rest of the model."""


class AttentionObserver(Protocol):
    """Receives the attention inputs of the layers it lists, during a forward pass."""

    layers: frozenset[int]
    deepest: int

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
        """Called inside the layer with post-RoPE query [B,Hq,q,d] and cached+new keys [B,Hkv,kv,d]."""


def register() -> None:
    """Register the capture attention (and its mask builder, the SDPA one) with transformers; idempotent."""
    global _registered
    with _register_lock:
        if _registered:
            return
        AttentionInterface.register(ATTN_IMPLEMENTATION, _capture_attention_forward)
        mask = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping["sdpa"]
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, mask)  # type: ignore[arg-type]
        _registered = True


@contextlib.contextmanager
def observing(observer: AttentionObserver | None) -> Iterator[None]:
    """Make `observer` the active one for forwards run in this thread/context."""
    token = _active.set(observer)
    try:
        yield
    finally:
        _active.reset(token)


def run_observed(module: Any, cache: Any, observer: AttentionObserver | None, **inputs: Any) -> None:
    """Forward a decoder stack with a KV cache while `observer` watches; returns once the observer stops it.

    The one forward wrapper of the package: prefill, query passes, cascade chunks and replays all go through it.
    """
    with observing(observer), torch.no_grad():
        try:
            forward_with_cache(module, cache, **inputs)
        except StopForward:
            return


def _capture_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA for the outputs; the active observer sees the inputs of the layers it selected."""
    observer = _active.get()
    layer_idx = getattr(module, "layer_idx", None)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if observer is not None and layer_idx in observer.layers:
        observer.observe(layer_idx, module, query, key, attention_mask, scale, kwargs.get("softcap"))
        if layer_idx == observer.deepest:
            raise StopForward
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    return sdpa(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


def query_row_probs(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    rows: torch.Tensor,
    softcap: float | None = None,
) -> torch.Tensor:
    """Softmax attention of the selected query rows over all keys, float32 [B, Hq, len(rows), kv].

    GQA is handled by grouping query heads onto their key head (no repeat of the keys); the mask is
    the layer's own (sliding window included); a missing mask means plain causal, right-aligned.
    """
    bsz, n_q_heads, q_len, dim = query.shape
    n_kv_heads, kv_len = key.shape[1], key.shape[2]
    n_rep = n_q_heads // n_kv_heads
    q = query.index_select(2, rows).float()
    r = q.shape[2]
    q = q.view(bsz, n_kv_heads, n_rep * r, dim)
    logits = torch.matmul(q, key.float().transpose(-1, -2)).view(bsz, n_q_heads, r, kv_len) * scaling
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if attention_mask is not None:
        m = attention_mask[..., -q_len:, :].index_select(-2, rows)[..., -kv_len:]
        logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m.float()
    else:
        positions = rows + (kv_len - q_len)
        allowed = torch.arange(kv_len, device=key.device)[None, :] <= positions[:, None]
        logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1)
