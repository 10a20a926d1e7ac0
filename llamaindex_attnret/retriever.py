"""`AttentionLongDocRetriever`: a LlamaIndex retriever returning the best units of whole long documents."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.indices.base import BaseIndex
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle
from llama_index.core.storage.docstore.types import BaseDocumentStore

from llamaindex_attnret.context import SourceContext, build_contexts, split_scoreable, unit_node
from llamaindex_attnret.shared import shared_retriever, with_granularity
from shared_core import AttentionRetriever, RetrieverConfig
from shared_core.validation import check_query, check_top_k

logger = logging.getLogger(__name__)


class AttentionLongDocRetriever(BaseRetriever):
    """Retrieve the `top_k` best units (sentences or paragraphs) across long documents.

    The corpus is a list of LlamaIndex documents/nodes or a docstore (e.g. `index.docstore`).
    Nodes sharing a `ref_doc_id` are joined in `start_char_idx` order into their source document,
    so chunked indexes are read as whole documents. Each result is a new `TextNode` with SOURCE =
    the document (PARENT = the chunk it lies in, for chunked corpora), the chunk's metadata plus
    `attnret_reasons`, and char offsets of the original document (None when the chunk has none).
    An optional `first_stage` retriever (e.g. BM25) picks the candidate documents: the documents of
    its hits, in its order; hits whose document is not in the corpus are read as given. Nodes without
    text have no units and are never returned (logged at debug level).
    """

    def __init__(
        self,
        documents: Sequence[BaseNode] | None = None,
        *,
        docstore: BaseDocumentStore | None = None,
        config: RetrieverConfig | dict[str, Any] | str | Path | None = None,
        top_k: int = 10,
        granularity: Literal["sentence", "paragraph"] = "sentence",
        first_stage: BaseRetriever | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if (documents is None) == (docstore is None):
            raise ValueError("pass exactly one of `documents` or `docstore`")
        check_top_k(top_k)
        if granularity not in ("sentence", "paragraph"):
            raise ValueError(f"granularity must be 'sentence' or 'paragraph', got {granularity!r}")
        if first_stage is not None and not isinstance(first_stage, BaseRetriever):
            raise TypeError(f"first_stage must be a LlamaIndex BaseRetriever, got {type(first_stage).__name__}")
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self._documents = list(documents) if documents is not None else None
        self._docstore = docstore
        self.config = RetrieverConfig.coerce(config)
        self.top_k = top_k
        self.granularity = granularity
        self.first_stage = first_stage
        self._retriever: AttentionRetriever | None = None

    @classmethod
    def from_index(cls, index: BaseIndex, **kwargs: Any) -> AttentionLongDocRetriever:
        """Retriever over the documents held in `index.docstore`."""
        return cls(docstore=index.docstore, **kwargs)

    @property
    def retriever(self) -> AttentionRetriever:
        """The shared core retriever for this config and granularity (built on first access)."""
        if self._retriever is None:
            self._retriever = shared_retriever(with_granularity(self.config, self.granularity))
        return self._retriever

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        check_query(query_bundle.query_str)  # an empty query is refused even when the corpus has no text
        candidates = self.first_stage.retrieve(query_bundle) if self.first_stage is not None else None
        return self._score(query_bundle.query_str, candidates)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        check_query(query_bundle.query_str)
        candidates = await self.first_stage.aretrieve(query_bundle) if self.first_stage is not None else None
        return await asyncio.to_thread(self._score, query_bundle.query_str, candidates)

    def _corpus(self) -> list[BaseNode]:
        if self._documents is not None:
            return self._documents
        assert self._docstore is not None
        return list(self._docstore.docs.values())

    def _contexts(self, candidates: list[NodeWithScore] | None) -> list[SourceContext]:
        scoreable, textless = split_scoreable([NodeWithScore(node=node) for node in self._corpus()])
        if textless:
            logger.debug("%d corpus node(s) without text have no units", len(textless))
        contexts = {context.key: context for context in build_contexts(scoreable)}
        if candidates is None:
            return list(contexts.values())
        outside = [item for item in candidates if (item.node.ref_doc_id or item.node.node_id) not in contexts]
        extra = {context.key: context for context in build_contexts(split_scoreable(outside)[0])}
        keys = dict.fromkeys(item.node.ref_doc_id or item.node.node_id for item in candidates)
        return [contexts.get(key) or extra[key] for key in keys if key in contexts or key in extra]

    def _score(self, query: str, candidates: list[NodeWithScore] | None) -> list[NodeWithScore]:
        contexts = self._contexts(candidates)
        if not contexts:
            return []
        hits = self.retriever.retrieve(query, [context.document() for context in contexts], top_k=self.top_k)
        return [unit_node(contexts[hit.document_index], hit) for hit in hits]
