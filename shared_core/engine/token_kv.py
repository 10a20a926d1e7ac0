"""The per-token keys (no RoPE) and values a cascade pass keeps, in segments a grown document shares.

A document that grew (a conversation with a new turn) is read again only from its last shared chunk; the keys and
values of the tokens before it are those of the earlier pass. Rather than copying them into a new buffer (for a
20k-token conversation ~800 MB, ~1.4 s on a 2-core CPU), the new pass keeps a *segment* list: the earlier pass's
storage for the shared tokens, then its own for the rest. Segments are immutable once the pass that wrote them
ends, so the earlier document stays valid beside the grown one. A long chain (a conversation grown many times) is
compacted into one segment past `MAX_SEGMENTS`, so a gather never loops over many pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_SEGMENTS = 8
"""Segments a pass may reference before its state is compacted into one (a copy, once per that many growths)."""


@dataclass(frozen=True)
class Segment:
    """Keys and values of tokens [start, end) of every kept layer: [L, H_kv, m, d] with m >= end - start, token p
    at index p - start (rows past end - start belong to no one here)."""

    start: int
    end: int
    keys: torch.Tensor
    values: torch.Tensor

    def flat(self, values: bool) -> torch.Tensor:
        """[L*H*m, d]: a view of the (contiguous) storage, one row per (layer, head, token)."""
        t = self.values if values else self.keys
        return t.reshape(-1, t.shape[-1])

    def row(self, layer: int, head: int) -> int:
        """Row of `flat` holding token `start` of (layer, head)."""
        return (layer * self.keys.shape[1] + head) * self.keys.shape[2] - self.start


@dataclass(frozen=True)
class TokenKV:
    """Keys (no RoPE) and values of tokens 0..length-1 of `n_layers` layers, as contiguous segments in order."""

    segments: tuple[Segment, ...]

    @classmethod
    def whole(cls, keys: torch.Tensor, values: torch.Tensor) -> TokenKV:
        """One segment from contiguous [L, H_kv, n, d] keys and values."""
        keys, values = keys.contiguous(), values.contiguous()
        return cls((Segment(0, int(keys.shape[2]), keys, values),))

    @property
    def length(self) -> int:
        """Tokens covered."""
        return self.segments[-1].end

    @property
    def n_layers(self) -> int:
        """Layers kept."""
        return int(self.segments[0].keys.shape[0])

    @property
    def heads(self) -> int:
        """Key heads per layer."""
        return int(self.segments[0].keys.shape[1])

    @property
    def nbytes(self) -> int:
        """Memory this holds alive: every distinct storage its segments reference (shared ones counted in full)."""
        storages = {}
        for seg in self.segments:
            for t in (seg.keys, seg.values):
                storage = t.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())

    def prefix(self, end: int, layers: int) -> TokenKV:
        """Tokens [0, end) of the first `layers` layers: views of these segments, nothing copied."""
        if not 0 < end <= self.length or not 0 < layers <= self.n_layers:
            raise ValueError(f"prefix [0, {end}) x {layers} layers is outside {self.length} tokens x {self.n_layers}")
        kept = []
        for seg in self.segments:
            if seg.start >= end:
                break
            kept.append(Segment(seg.start, min(seg.end, end), seg.keys[:layers], seg.values[:layers]))
        return TokenKV(tuple(kept))

    def then(self, segment: Segment) -> TokenKV:
        """These tokens followed by `segment` (which must start where they end); compacted past MAX_SEGMENTS."""
        if segment.start != self.length:
            raise ValueError(f"a segment starting at {segment.start} cannot follow {self.length} tokens")
        out = TokenKV((*self.segments, segment))
        return TokenKV.whole(*out.dense()) if len(out.segments) > MAX_SEGMENTS else out

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All keys and values as contiguous [L, H_kv, n, d] tensors (no copy for one segment that fits exactly)."""
        if len(self.segments) == 1 and self.segments[0].keys.shape[2] == self.length:
            seg = self.segments[0]
            return seg.keys.contiguous(), seg.values.contiguous()
        keys = torch.cat([s.keys[:, :, : s.end - s.start] for s in self.segments], dim=2)
        values = torch.cat([s.values[:, :, : s.end - s.start] for s in self.segments], dim=2)
        return keys, values

    def span(self, layers: int, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [layers, H_kv, end - start, d] of tokens [start, end)."""
        pos = torch.arange(start, end).expand(layers, self.heads, -1)
        return self.gather(pos, values=False), self.gather(pos, values=True)

    def gather(self, pos: torch.Tensor, *, values: bool) -> torch.Tensor:
        """Keys (or values) [L', H_kv, K, d] of tokens `pos` [L', H_kv, K] (increasing along K) of layers < L'."""
        seg = self.segments[0]
        out = seg.keys.new_empty((*pos.shape, seg.keys.shape[-1]))
        for layer in range(pos.shape[0]):
            self.gather_layer(layer, pos[layer], out[layer], values=values)
        return out

    def gather_layer(self, layer: int, pos: torch.Tensor, out: torch.Tensor, *, values: bool) -> None:
        """Write keys (or values) of tokens `pos` [H_kv, K] (increasing along K) of `layer` into `out` [H_kv, K, d],
        one `index_select` per head and segment, straight into `out`."""
        pos = pos.long()
        bounds = self._bounds(pos)
        for head in range(pos.shape[0]):
            for seg, lo, hi in zip(self.segments, bounds[head][:-1], bounds[head][1:], strict=True):
                if hi > lo:
                    index = pos[head, lo:hi] + seg.row(layer, head)
                    torch.index_select(seg.flat(values), 0, index, out=out[head, lo:hi])

    def _bounds(self, pos: torch.Tensor) -> list[list[int]]:
        """Per head, where each segment's tokens begin and end along `pos` (sorted): [0, b1, .., K]."""
        k = pos.shape[-1]
        if len(self.segments) == 1:
            return [[0, k]] * pos.shape[0]
        starts = torch.tensor([s.start for s in self.segments[1:]], dtype=torch.long)
        cuts = torch.searchsorted(pos.contiguous(), starts.expand(pos.shape[0], -1).contiguous()).tolist()
        return [[0, *row, k] for row in cuts]
