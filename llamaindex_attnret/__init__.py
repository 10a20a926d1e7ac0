"""LlamaIndex drop-ins for attnret: `AttentionRerank` (node postprocessor), `AttentionLongDocRetriever`, and
`AttnretEmbedding` (offline embeddings on the bundled all-MiniLM-L6-v2, for a `VectorStoreIndex`)."""

from llamaindex_attnret.embedding import AttnretEmbedding, bundled_embedding_model
from llamaindex_attnret.postprocessor import AttentionRerank
from llamaindex_attnret.pruner import AttentionContextPruner
from llamaindex_attnret.retriever import AttentionLongDocRetriever

__all__ = [
    "AttentionContextPruner",
    "AttentionLongDocRetriever",
    "AttentionRerank",
    "AttnretEmbedding",
    "bundled_embedding_model",
]
