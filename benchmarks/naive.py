"""The `output_attentions` reference: the retriever's scoring read from full eager attention maps.

What a user would write without attnret: one eager forward over document + query with ``output_attentions=True``,
which materialises an n×n map for every layer and head, then the query rows are sliced out. The maps feed the very
same calibration, head aggregation and pooling as the retriever, so the two must agree up to float rounding; the
reference shows what the no-n×n capture saves, and checks that it changes no score.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

from shared_core import AttentionRetriever
from shared_core.document import Document
from shared_core.engine import capture, scoring
from shared_core.engine.attention_engine import CALIBRATION_QUERY, AttentionEngine
from shared_core.engine.heads import HeadSelection
from shared_core.engine.prompt import DocumentTokens

DEFAULT_BUDGET_GB = 8.0
"""Largest set of attention maps (float32, every layer and head) the reference may build."""

_eager_lock = threading.Lock()  # the model object is shared between retrievers: switch its attention one at a time


def naive_gb(n_tokens: int, layers: int = 30, heads: int = 9) -> float:
    """Size of the attention maps `output_attentions` returns (float32); defaults: the default model's shape."""
    return layers * heads * n_tokens * n_tokens * 4 / 2**30


class DoesNotFit(MemoryError):
    """The n×n maps of this document would exceed the reference's memory budget."""


class NaiveAttentionEngine(AttentionEngine):
    """An `AttentionEngine` whose per-head token scores come from `output_attentions` (eager, full maps)."""

    def __init__(self, config: Any, budget_gb: float) -> None:
        super().__init__(config)
        self.budget_gb = budget_gb

    def head_token_scores(
        self, queries: Sequence[str], doc: Document, selection: HeadSelection | None = None
    ) -> tuple[DocumentTokens, list[dict[int, torch.Tensor]]]:
        """Per query and layer, the (calibrated) score of every document token for each selected head, from maps."""
        selection = selection or self.head_selection
        tokens = self.document_tokens(doc)
        baseline = self._maps(tokens, CALIBRATION_QUERY, selection) if self.config.attention.calibration else None
        out = []
        for query in queries:
            per_layer = self._maps(tokens, query, selection)
            out.append(per_layer if baseline is None else {k: v - baseline[k] for k, v in per_layer.items()})
        return tokens, out

    @torch.inference_mode()
    def _maps(self, tokens: DocumentTokens, query: str, selection: HeadSelection) -> dict[int, torch.Tensor]:
        """One eager forward with `output_attentions`; the selected heads' query rows, averaged, per layer."""
        loaded = self.model
        q = self.prompt.query(query, self.config.attention.query_rows)
        n = len(tokens.ids) + len(q.ids)
        need = naive_gb(n, loaded.shape.num_layers, loaded.shape.num_heads)
        if need > self.budget_gb:
            raise DoesNotFit(f"{n} tokens need {need:.1f} GB of attention maps (budget {self.budget_gb:g} GB)")
        if n > self.window:
            raise DoesNotFit(f"{n} tokens exceed the model window of {self.window}")
        ids = torch.tensor([tokens.ids + q.ids], device=loaded.device)
        with _eager_lock:
            loaded.model.set_attn_implementation("eager")
            try:
                maps = loaded.decoder(input_ids=ids, output_attentions=True, use_cache=False).attentions
            finally:
                loaded.model.set_attn_implementation(capture.ATTN_IMPLEMENTATION)
        rows = torch.tensor(q.rows, dtype=torch.long, device=loaded.device) + len(tokens.ids)
        captured = {}
        for layer, heads in selection.per_layer.items():
            probs = maps[layer][0].index_select(1, rows).float().mean(dim=1)  # [H, n]
            captured[layer] = probs if heads is None else probs[list(heads)]
        return scoring.document_token_scores(captured, n, tokens.doc_start, tokens.n_doc_tokens)


class NaiveAttentionRetriever(AttentionRetriever):
    """`AttentionRetriever` reading attention from full eager maps (`NaiveAttentionEngine`).

    Segmentation, calibration, aggregation, pooling and fusion are inherited unchanged; only the attention read
    differs. Documents whose maps exceed `budget_gb` raise `DoesNotFit` (no cascade: the reference has none).
    """

    def __init__(self, config: Any = None, budget_gb: float = DEFAULT_BUDGET_GB) -> None:
        self.budget_gb = budget_gb
        super().__init__(config)

    def _build_engine(self) -> AttentionEngine:
        return NaiveAttentionEngine(self.config, self.budget_gb)
