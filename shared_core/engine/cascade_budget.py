"""How much memory a read needs with and without the cascading KV cache, and whether a prompt must go through it
(the window, `cascade.enabled`, `cascade.memory_budget`)."""

from __future__ import annotations

from shared_core.config.cascade import CascadeConfig
from shared_core.models.family import ModelShape

# ---------------------------------------------------------------------------------------------------------------
# Memory estimates and the decision to use the cascade
# ---------------------------------------------------------------------------------------------------------------


def _activation_bytes(shape: ModelShape, tokens: int, kv: int) -> int:
    """Transient memory of one decoder layer over `tokens` new tokens attending `kv` keys (fp32, conservative)."""
    hidden = tokens * (4 * shape.hidden_size + 3 * shape.intermediate_size) * 4
    scores = shape.num_heads * tokens * kv * 4  # an unfused (math) SDPA materialises one layer's score block
    return hidden + scores


def estimate_cascade_bytes(
    shape: ModelShape, config: CascadeConfig, layers_used: int, query_tokens: int, dtype_bytes: int
) -> int:
    """Working set of a cascade prefill: bounded caches + one chunk (+ the query pass); independent of doc length."""
    cap, stride = config.capacity, config.stride
    per_slot = shape.num_kv_heads * (3 * shape.head_dim * dtype_bytes + 4 + 8)  # keys, view, values, ema, pos
    pending = 2 * shape.num_kv_heads * stride * shape.head_dim * dtype_bytes
    cache = layers_used * (cap * per_slot + pending)
    kv = cap + stride + query_tokens
    returned = 2 * shape.num_kv_heads * kv * shape.head_dim * dtype_bytes  # the concatenated keys/values of a layer
    return cache + returned + _activation_bytes(shape, stride + query_tokens, kv)


def estimate_full_bytes(shape: ModelShape, n_tokens: int, layers_used: int, dtype_bytes: int) -> int:
    """Working set of one full-attention prefill of `n_tokens` (KV cache + a layer's activations)."""
    cache = layers_used * 2 * shape.num_kv_heads * n_tokens * shape.head_dim * dtype_bytes
    return cache + _activation_bytes(shape, n_tokens, n_tokens)


def check_budget(
    shape: ModelShape, config: CascadeConfig, layers_used: int, query_tokens: int, dtype_bytes: int
) -> int:
    """Raise ValueError when one stride of the cascade does not fit `memory_budget`; return the estimate."""
    need = estimate_cascade_bytes(shape, config, layers_used, query_tokens, dtype_bytes)
    budget = config.budget_bytes
    if budget is not None and need > budget:
        raise ValueError(
            f"cascade.memory_budget={config.memory_budget!r} ({budget} bytes) is too small for one prefill stride: "
            f"~{need} bytes are needed with sink_tokens={config.sink_tokens}, cascades={config.cascades}, "
            f"window={config.window}, stride={config.stride}; lower stride/window/cascades or raise the budget"
        )
    return need


def cascade_needed(
    n_tokens: int,
    config: CascadeConfig,
    shape: ModelShape,
    *,
    max_tokens: int | None = None,
    layers_used: int | None = None,
    dtype_bytes: int = 4,
) -> bool:
    """Whether a prompt of `n_tokens` must go through the cascade (config.enabled, window, budget)."""
    if config.enabled is not True and config.enabled is not False:  # "auto"
        limit = max_tokens or shape.max_positions or None
        if limit is not None and n_tokens > limit:
            return True
        budget = config.budget_bytes
        used = layers_used or shape.num_layers
        return budget is not None and estimate_full_bytes(shape, n_tokens, used, dtype_bytes) > budget
    return bool(config.enabled)
