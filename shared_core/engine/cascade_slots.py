"""The cascade's layer-independent bookkeeping: the slot plan of one commit (where each token goes, integers only)
and `_Slots`, a run of kept keys, values, EMAs and source positions (see `engine.cascade` for the method)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from shared_core.config.cascade import CascadeConfig

# ---------------------------------------------------------------------------------------------------------------
# Slot plan: where tokens go during one commit (layer-independent, integers only)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StagePlan:
    """What one sub-cache does with the tokens arriving at it during a commit."""

    fill: int  # slots filled before the commit
    merge_first: bool  # the first arrival competes with the newest slot (non-accepting turn)
    winners: int  # new slots appended (pair winners, last one maybe unpaired)
    overflow: int  # oldest slots passed on (or dropped by the last sub-cache)


class _Plan(NamedTuple):
    """One commit's slot plan, the same for every layer: computed once from the counts, applied to each layer."""

    kept_before: int
    """Slots held before the commit (sinks + sub-caches)."""
    n_new: int
    """Tokens committed."""
    to_sinks: int
    """Of them, how many fill the remaining sink slots (the rest enter the first sub-cache)."""
    stages: tuple[_StagePlan, ...]
    """What each sub-cache does, first to last."""
    seen_before: int
    """Tokens committed before this commit (the position of its first token)."""


class _Structure:
    """Counts of the cascade (identical for every layer): sink fill, sub-cache fills, arrival counters."""

    def __init__(self, config: CascadeConfig) -> None:
        self.config = config
        self.sinks = 0
        self.fill = [0] * config.cascades
        self.arrivals = [0] * config.cascades
        self.seen = 0

    @property
    def kept(self) -> int:
        return self.sinks + sum(self.fill)

    def plan(self, n_new: int) -> _Plan:
        """Advance the counters by `n_new` tokens and return where every slot goes."""
        cfg = self.config
        kept_before, seen_before = self.kept, self.seen
        to_sinks = min(cfg.sink_tokens - self.sinks, n_new)
        self.sinks += to_sinks
        stream = n_new - to_sinks
        stages = []
        for i in range(cfg.cascades):
            fill = self.fill[i]
            merge = i > 0 and stream > 0 and self.arrivals[i] % 2 == 1
            rest = stream - int(merge)
            winners = rest if i == 0 else (rest + 1) // 2
            self.arrivals[i] += stream
            overflow = max(0, fill + winners - cfg.window)
            self.fill[i] = fill + winners - overflow
            stages.append(_StagePlan(fill, merge, winners, overflow))
            stream = overflow
        self.seen += n_new
        return _Plan(kept_before, n_new, to_sinks, tuple(stages), seen_before)


# ---------------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Slots:
    """Keys (un-rotated), values, EMA [B,H,n] and source token index [B,H,n] of a run of slots."""

    k: torch.Tensor
    v: torch.Tensor
    ema: torch.Tensor
    pos: torch.Tensor

    def __len__(self) -> int:
        return self.k.shape[-2]

    def slice(self, a: int, b: int | None = None) -> _Slots:
        return _Slots(self.k[:, :, a:b], self.v[:, :, a:b], self.ema[:, :, a:b], self.pos[:, :, a:b])

    @staticmethod
    def cat(parts: list[_Slots]) -> _Slots:
        parts = [p for p in parts if len(p)] or parts[:1]
        if len(parts) == 1:
            return parts[0]
        return _Slots(
            torch.cat([p.k for p in parts], dim=2),
            torch.cat([p.v for p in parts], dim=2),
            torch.cat([p.ema for p in parts], dim=2),
            torch.cat([p.pos for p in parts], dim=2),
        )

    def pair_winners(self) -> _Slots:
        """Consecutive pairs (accepted, challenger) -> the higher-EMA one per head; an odd last one stays."""
        n = len(self)
        half = n // 2
        even = self.slice(0, 2 * half)
        b, h = self.k.shape[:2]

        def pairs(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, h, half, 2, *t.shape[3:])

        k, v, e, p = pairs(even.k), pairs(even.v), pairs(even.ema), pairs(even.pos)
        take2 = e[..., 1] > e[..., 0]
        win = _Slots(
            torch.where(take2[..., None], k[:, :, :, 1], k[:, :, :, 0]),
            torch.where(take2[..., None], v[:, :, :, 1], v[:, :, :, 0]),
            torch.where(take2, e[..., 1], e[..., 0]),
            torch.where(take2, p[..., 1], p[..., 0]),
        )
        return _Slots.cat([win, self.slice(2 * half)]) if n % 2 else win

    def challenge_newest(self, challenger: _Slots) -> _Slots:
        """The newest slot is replaced, per head, by a one-slot challenger with a higher EMA."""
        newest = self.slice(len(self) - 1)
        take = challenger.ema > newest.ema
        merged = _Slots(
            torch.where(take[..., None], challenger.k, newest.k),
            torch.where(take[..., None], challenger.v, newest.v),
            torch.where(take, challenger.ema, newest.ema),
            torch.where(take, challenger.pos, newest.pos),
        )
        return _Slots.cat([self.slice(0, len(self) - 1), merged])
