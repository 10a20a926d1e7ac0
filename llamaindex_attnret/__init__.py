"""LlamaIndex drop-ins for attnret: `AttentionRerank` (node postprocessor) and `AttentionLongDocRetriever`."""

from .postprocessor import AttentionRerank
from .retriever import AttentionLongDocRetriever

__all__ = ["AttentionLongDocRetriever", "AttentionRerank"]
