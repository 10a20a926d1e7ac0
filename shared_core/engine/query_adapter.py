"""Query-side adapters: low-rank (LoRA) updates of the attention projections that only the query part runs through.

The document is always read by the frozen model, so its KV cache stays the one every question shares (and the
cascade's, and a grown document's); only the query part's tokens — the question, the instruction and the "N/A"
calibration prompt — go through the adapter, in `query_batch.batched_scores`, the one place query parts run. A head
set may name an adapter trained for its heads (``adapter:`` in the head-set file; `attnret train-adapter`).

Hooks are installed once per model and do nothing unless an adapter is active in the running context, so one loaded
model serves retrievers with and without an adapter.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from shared_core.atomic_file import write_atomic
from shared_core.config import ConfigError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
"""The attention projections an adapter may update (the names of transformers' Llama/Qwen2/Gemma attention)."""

Key = tuple[int, str]


@dataclass(frozen=True, eq=False)
class QueryAdapter:
    """LoRA pairs per (layer, projection): ``A`` [rank, in], ``B`` [out, rank]; the update is ``x Aᵀ Bᵀ · scale``.
    `digest` names the weights in cache keys (results with and without an adapter never mix)."""

    pairs: Mapping[Key, tuple[torch.Tensor, torch.Tensor]]
    scale: float
    digest: str
    source: str = "trained"
    meta: Mapping[str, str] = field(default_factory=dict)

    @property
    def deepest(self) -> int:
        """The deepest layer the adapter updates."""
        return max(layer for layer, _ in self.pairs)


_active: contextvars.ContextVar[tuple[QueryAdapter, int] | None] = contextvars.ContextVar(
    "attnret_query_adapter", default=None
)
_install_lock = threading.Lock()


def digest_of(pairs: Mapping[Key, tuple[torch.Tensor, torch.Tensor]], scale: float) -> str:
    """A short hash of the weights and scale."""
    h = hashlib.sha256(f"{scale!r}".encode())
    for key in sorted(pairs):
        a, b = pairs[key]
        h.update(f"{key}".encode())
        for t in (a, b):
            h.update(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def applied(adapter: QueryAdapter | None, decoder: Any, skip: int = 0) -> Iterator[None]:
    """Run the forwards inside with `adapter` on every token after the first `skip` (a document tail packed before
    the query parts stays frozen); None runs the frozen model."""
    if adapter is None:
        yield
        return
    install(decoder, adapter)
    token = _active.set((adapter, skip))
    try:
        yield
    finally:
        _active.reset(token)


def install(decoder: Any, adapter: QueryAdapter) -> None:
    """Check `adapter` against the model and hook its projections (once per model; a hook without an active
    adapter returns the projection's output unchanged)."""
    layers = decoder.layers
    with _install_lock:
        for layer, name in adapter.pairs:
            if not 0 <= layer < len(layers):
                raise ConfigError(f"query adapter {adapter.source}: layer {layer} is outside this model's layers")
            linear = getattr(layers[layer].self_attn, name, None)
            a, b = adapter.pairs[(layer, name)]
            if linear is None or not hasattr(linear, "in_features"):
                raise ConfigError(f"query adapter {adapter.source}: layer {layer} has no {name} projection")
            if a.shape[1] != linear.in_features or b.shape[0] != linear.out_features:
                raise ConfigError(
                    f"query adapter {adapter.source}: {name} of layer {layer} is {linear.in_features} -> "
                    f"{linear.out_features} in this model, the adapter's {a.shape[1]} -> {b.shape[0]} "
                    "(it was trained for another model)"
                )
            if not getattr(linear, "_attnret_adapter_hook", False):
                linear.register_forward_hook(_hook((layer, name)))
                linear._attnret_adapter_hook = True


def _hook(key: Key) -> Any:
    def hook(module: Any, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        state = _active.get()
        if state is None or key not in state[0].pairs:
            return out
        adapter, skip = state
        a, b = adapter.pairs[key]
        x = args[0][:, skip:]
        delta = ((x.to(a.dtype) @ a.T) @ b.T * adapter.scale).to(out.dtype)
        if skip == 0:
            return out + delta
        return torch.cat([out[:, :skip], out[:, skip:] + delta], dim=1)

    return hook


def save_adapter(path: str | Path, adapter: QueryAdapter) -> None:
    """Write an adapter as safetensors (``layers.L.proj.lora_A`` / ``lora_B``, the scale and metadata in the
    header) atomically (`write_atomic`: never a half file, the umask's permissions)."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for (layer, name), (a, b) in sorted(adapter.pairs.items()):
        tensors[f"layers.{layer}.{name}.lora_A"] = a.detach().to(torch.float32).contiguous().cpu()
        tensors[f"layers.{layer}.{name}.lora_B"] = b.detach().to(torch.float32).contiguous().cpu()
    meta = {**{str(k): str(v) for k, v in adapter.meta.items()}, "scale": repr(adapter.scale)}
    write_atomic(path, save(tensors, metadata=meta))


def load_adapter(path: str | Path) -> QueryAdapter:
    """Read an adapter written by `save_adapter`; a missing or malformed file is a `ConfigError` naming it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"query adapter file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"query adapter file {str(path)!r} is not a readable safetensors file: {exc}") from None
    pairs: dict[Key, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in tensors:
        parts = name.split(".")
        if len(parts) != 4 or parts[0] != "layers" or not parts[1].isdigit() or parts[2] not in PROJECTIONS:
            raise ConfigError(f"query adapter {str(path)!r}: unexpected tensor {name!r}")
        if parts[3] == "lora_A":
            b = tensors.get(name[: -len("lora_A")] + "lora_B")
            a = tensors[name]
            if b is None or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise ConfigError(f"query adapter {str(path)!r}: {name} has no matching lora_B of rank {a.shape[0]}")
            pairs[(int(parts[1]), parts[2])] = (a, b)
    try:
        scale = float(meta.pop("scale"))
    except (KeyError, ValueError):
        raise ConfigError(f"query adapter {str(path)!r}: its header has no numeric 'scale'") from None
    if not pairs:
        raise ConfigError(f"query adapter {str(path)!r} holds no lora_A/lora_B pair")
    return QueryAdapter(pairs, scale, digest_of(pairs, scale), source=str(path), meta=meta)
