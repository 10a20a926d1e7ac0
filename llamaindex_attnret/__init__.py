"""LlamaIndex drop-ins for attnret: `AttentionRerank` (node postprocessor) and `AttentionLongDocRetriever`."""

from .postprocessor import AttentionRerank
from .pruner import AttentionContextPruner
from .retriever import AttentionLongDocRetriever

__all__ = ["AttentionContextPruner", "AttentionLongDocRetriever", "AttentionRerank"]
