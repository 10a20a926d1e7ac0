"""attnret core: attention-based, entity-scoped long-document retrieval, framework-free."""

from .config import RetrieverConfig
from .document import Document, Hit, Unit
from .retriever import AttentionRetriever

__all__ = ["AttentionRetriever", "Document", "Hit", "RetrieverConfig", "Unit"]
__version__ = "0.1.0"
