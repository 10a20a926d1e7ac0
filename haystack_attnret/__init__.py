"""Haystack drop-in for attnret: the `AttentionRanker` component.

Pipeline YAML naming `haystack_attnret.ranker.AttentionRanker` loads only when this package is on
Haystack's deserialization allowlist (`allowed_modules=["haystack_attnret.*"]`, or the
`HAYSTACK_DESERIALIZATION_ALLOWLIST` environment variable); importing it grants no trust.
"""

from .pruner import AttentionContextPruner
from .ranker import AttentionRanker

__all__ = ["AttentionContextPruner", "AttentionRanker"]
