"""attnret core: attention-based, entity-scoped long-document retrieval, framework-free.

`AttentionRetriever` is imported on first use, so that config and document types load without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared_core.config import RetrieverConfig
from shared_core.document import Document, Hit, Unit
from shared_core.models import quiet_imports

quiet_imports.install()  # before anything imports transformers, which imports torchao when it is installed

if TYPE_CHECKING:
    from shared_core.retriever import AttentionRetriever

__all__ = ["AttentionRetriever", "Document", "Hit", "RetrieverConfig", "Unit"]
__version__ = "0.2.0.dev0"


def __getattr__(name: str) -> Any:
    if name == "AttentionRetriever":
        from shared_core.retriever import AttentionRetriever

        return AttentionRetriever
    raise AttributeError(f"module 'shared_core' has no attribute {name!r}")
