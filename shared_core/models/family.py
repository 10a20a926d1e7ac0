"""What attnret needs to know about a model family, in one place: text config, shape, layer kinds, RoPE layout,
and the cache keyword of its forward.

Everything model-specific that the engine, the cascade and the memory estimates read goes through here, so a new
family (another RoPE layout, another layer kind) is one change in this module (see CONTRIBUTING.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

RotaryFn = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(layer_idx, positions [1, n] long) -> (cos, sin), each [1, n, rot_dim] float32, in the model's RoPE layout."""

_FULL_TYPES = {"full_attention", "attention", None}
_SLIDING_TYPES = {"sliding_attention"}


def text_config(model: Any) -> Any:
    """The text part of a model's config (multimodal configs nest it; plain LMs are their own)."""
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def forward_with_cache(module: Any, cache: Any, **inputs: Any) -> Any:
    """Run ``module`` with a KV cache under the keyword its ``forward`` takes.

    transformers renamed ``past_key_values`` to ``cache`` (5.2x; the old name warns until 5.40), and we support both.
    """
    params = inspect.signature(module.forward).parameters
    keyword = "cache" if "cache" in params else "past_key_values"
    return module(**inputs, **{keyword: cache}, use_cache=True)


def decoder(model: Any) -> Any:
    """The decoder stack without the LM head (attnret never needs logits)."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


@dataclass(frozen=True)
class ModelShape:
    """The model dimensions the engine and the memory estimates need (`max_positions`: the window; 2048 when the
    config does not say)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    max_positions: int

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        """Read them from a transformers model (its text config)."""
        cfg = text_config(model)
        heads = cfg.num_attention_heads
        hidden = cfg.hidden_size
        return cls(
            num_layers=cfg.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or hidden // heads,
            hidden_size=hidden,
            intermediate_size=getattr(cfg, "intermediate_size", None) or 4 * hidden,
            max_positions=getattr(cfg, "max_position_embeddings", None) or 2048,
        )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The ``rotate_half`` of Llama-style RoPE: (x1, x2) -> (-x2, x1) over the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotate x [B,H,n,d] by cos/sin [1|B,n,r] (r <= d: partial rotary), or undo that rotation; fp32 math."""
    cos, sin = cos[:, None].float(), sin[:, None].float()
    r = cos.shape[-1]
    xf = x.float()
    rot, rest = xf[..., :r], xf[..., r:]
    if inverse:
        out = (rot * cos - rotate_half(rot) * sin) / (cos * cos + sin * sin)
    else:
        out = rot * cos + rotate_half(rot) * sin
    if rest.shape[-1]:
        out = torch.cat((out, rest), dim=-1)
    return out.to(x.dtype)


def apply_rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """`x = apply_rope(x, cos, sin)` in place, for x [1, H, T, d] and cos/sin [T, r] (a replay rotates every kept
    key of a chunk: no second buffer)."""
    xf = x.float()
    half = cos.shape[-1] // 2
    a, b = xf[..., :half], xf[..., half : 2 * half]
    rotated = a * cos[:, :half]
    rotated.addcmul_(b, sin[:, :half], value=-1.0)
    b.mul_(cos[:, half:]).addcmul_(a, sin[:, half:])
    a.copy_(rotated)
    if xf is not x:
        x.copy_(xf)


def model_rotary(model: Any) -> RotaryFn:
    """The model's own rotary embedding as a `RotaryFn` (per layer type where the model has several)."""
    base = getattr(model, "base_model", model)
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        raise ValueError(
            f"the cascading KV cache needs a RoPE model with a `rotary_emb` module; {type(model).__name__} has none"
        )
    cfg = text_config(model)
    layer_types = getattr(cfg, "layer_types", None)
    takes_type = "layer_type" in inspect.signature(rotary.forward).parameters

    def rope(layer_idx: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probe = torch.empty(0, dtype=torch.float32, device=positions.device)
        if takes_type and layer_types is not None:
            return rotary(probe, positions, layer_types[layer_idx])
        return rotary(probe, positions)

    return rope


def layer_kinds(model: Any) -> tuple[list[str], list[int | None]]:
    """Per layer: 'full' or 'sliding' and the sliding window; unsupported layer kinds are a ValueError."""
    cfg = text_config(model)
    n = cfg.num_hidden_layers
    types = getattr(cfg, "layer_types", None) or [None] * n
    window = getattr(cfg, "sliding_window", None)
    kinds: list[str] = []
    windows: list[int | None] = []
    for t in types[:n]:
        if t in _SLIDING_TYPES or (t is None and window is not None and getattr(cfg, "use_sliding_window", True)):
            if not window:
                raise ValueError(f"layer type {t!r} without a sliding_window in the model config")
            kinds.append("sliding")
            windows.append(int(window))
        elif t in _FULL_TYPES:
            kinds.append("full")
            windows.append(None)
        else:
            raise ValueError(f"the cascading KV cache does not support layer type {t!r}")
    return kinds, windows


def full_attention_layers(model: Any) -> list[int] | None:
    """The layers that attend to the whole context when some do not (sliding windows); None when all do or the
    layer kinds are unknown (head selection then reads its usual band)."""
    try:
        kinds, _ = layer_kinds(model)
    except ValueError:
        return None
    full = [i for i, kind in enumerate(kinds) if kind == "full"]
    return None if len(full) == len(kinds) else full
