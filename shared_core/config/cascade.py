"""The cascade's config section (when the cascading KV cache is used, its shape) and size parsing; no torch import."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from shared_core.config.section import ConfigSection as _Section

_MAX_SLOTS = 1 << 20
"""Upper bound of the token counts below (a million tokens per sub-cache is already far past any model window)."""


class CascadeConfig(_Section):
    """Cascading KV cache: when it is used and its shape (sinks, sub-caches, slots, prefill stride, EMA)."""

    enabled: Literal["auto"] | bool = Field(
        "auto",
        description="'auto' = on when the prompt exceeds the model window (model.max_tokens or "
        "max_position_embeddings) or the memory budget; true = always; false = never (long documents are an error).",
    )
    sink_tokens: int = Field(
        64, ge=0, le=_MAX_SLOTS, description="First tokens of the prompt that are always kept (attention sinks)."
    )
    cascades: int = Field(4, ge=1, le=16, description="Number of sub-caches; sub-cache i keeps every 2^i-th token.")
    window: int = Field(1024, gt=0, le=_MAX_SLOTS, description="Slots per sub-cache (per layer, per key head).")
    stride: int = Field(1024, gt=0, le=_MAX_SLOTS, description="Prefill chunk: document tokens read per forward pass.")
    ema_decay: float = Field(
        0.9, gt=0.0, lt=1.0, description="Per-chunk decay of the exponential moving average of received attention."
    )
    ema_rows: int = Field(
        64,
        gt=0,
        le=_MAX_SLOTS,
        description="Rows of each chunk sampled to estimate the attention every cached key receives (evenly spaced "
        "over a stride; a shorter last chunk samples those inside it).",
    )
    scoring: Literal["resident", "end"] = Field(
        "resident",
        description="'resident' = the query is run against every chunk while it is in the cache, so every token is "
        "scored (costs one short query pass per chunk); 'end' = the query only sees what the cache kept at the end "
        "(tokens evicted earlier score 0; a baseline).",
    )
    memory_budget: str | int | None = Field(
        None,
        description="Bytes (int) or a size such as '2GB' / '512MiB' for the KV cache plus one chunk's working memory "
        "(model weights excluded); None = no budget.",
    )
    reuse: bool = Field(
        True,
        description="Keep what a pass read (keys and values without RoPE, and which tokens each chunk saw) so that "
        "later queries on the document are replayed, not read again, and a document that grew resumes the pass "
        "from its last shared chunk. Costs 2 x layers x kv_heads x head_dim x dtype bytes per token (README).",
    )
    reuse_memory: str | int = Field(
        "2GB",
        description="Kept passes held in memory (LRU, bytes or a size such as '2GB'); beyond it they are spilled to "
        "`reuse_dir` (or dropped when reuse_disk is false).",
    )
    reuse_disk: bool = Field(
        True, description="Spill kept passes that do not fit `reuse_memory` to disk (reused across processes)."
    )
    reuse_dir: str | None = Field(
        None, description="Folder of spilled passes; None = <model cache folder>/cascade ($ATTNRET_CACHE/cascade)."
    )
    reuse_disk_limit: str | int = Field(
        "8GB", description="Most bytes of spilled passes kept in `reuse_dir`; the least recently used go first."
    )

    @field_validator("reuse_memory", "reuse_disk_limit", mode="before")
    @classmethod
    def _reuse_sizes_parse(cls, v: Any, info: Any) -> Any:
        try:
            parse_bytes(v)
        except ValueError as exc:
            raise ValueError(str(exc).replace("cascade.memory_budget", f"cascade.{info.field_name}")) from None
        return v

    @property
    def scoring_key(self) -> str:
        """The settings a pass's scores depend on (the reuse settings only say where results are kept)."""
        return self.model_dump_json(exclude={"reuse", "reuse_memory", "reuse_disk", "reuse_dir", "reuse_disk_limit"})

    @field_validator("memory_budget")
    @classmethod
    def _budget_parses(cls, v: Any) -> Any:
        parse_bytes(v)
        return v

    @property
    def capacity(self) -> int:
        """Slots per layer: sinks plus all sub-caches."""
        return self.sink_tokens + self.cascades * self.window

    @property
    def budget_bytes(self) -> int | None:
        """`memory_budget` in bytes (None = unbounded)."""
        return parse_bytes(self.memory_budget)


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_bytes(value: str | int | None) -> int | None:
    """'2GB', '512MiB', '1e9' or an int -> bytes; None -> None; anything else (or <= 0) is a ValueError."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"cascade.memory_budget must be bytes or a size like '2GB', got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        unit = m.group(2).upper() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(f"cascade.memory_budget: cannot read {value!r} (use bytes or e.g. '2GB', '512MiB')")
        n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise ValueError(f"cascade.memory_budget must be positive, got {value!r}")
    return n
