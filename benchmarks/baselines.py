"""Lexical baseline for the benchmarks: BM25 over the same units as every other method (the core's lexical view)."""

from __future__ import annotations

from shared_core.views.lexical import bm25_scores

__all__ = ["bm25_scores"]
