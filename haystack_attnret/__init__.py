"""Haystack drop-in for attnret: the `AttentionRanker` component, and `bundled_embedding_model()` (the offline
all-MiniLM-L6-v2 folder, for Haystack's sentence-transformers embedders).

Pipeline YAML naming `haystack_attnret.ranker.AttentionRanker` loads only when this package is on
Haystack's deserialization allowlist (`allowed_modules=["haystack_attnret.*"]`, or the
`HAYSTACK_DESERIALIZATION_ALLOWLIST` environment variable); importing it grants no trust.
"""

from haystack_attnret.embedding import bundled_embedding_model
from haystack_attnret.pruner import AttentionContextPruner
from haystack_attnret.ranker import AttentionRanker

__all__ = ["AttentionContextPruner", "AttentionRanker", "bundled_embedding_model"]
