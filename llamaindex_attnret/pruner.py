"""`AttentionContextPruner`: a LlamaIndex node postprocessor that cuts each node's text to a reader's token budget."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from llamaindex_attnret.context import node_text
from llamaindex_attnret.shared import query_text, shared_retriever
from shared_core import AttentionRetriever, RetrieverConfig
from shared_core import Document as CoreDocument
from shared_core.document import PRUNING_KEY
from shared_core.tasks.pruned import DEFAULT_ENTITY_SHARE, DEFAULT_MARKER, PruneOptions, check_budget

logger = logging.getLogger(__name__)


class AttentionContextPruner(BaseNodePostprocessor):
    """Replace each node's text by its pruned text: the units the query needs, in order, within `budget_tokens`.

    Each node is pruned on its own (LongRAG-style long nodes: sections, whole documents). The returned nodes are
    copies with the same id, score, metadata and relationships; their metadata adds `attnret_pruning`
    (`spans`: kept char spans of the node's original text with their reason, `original_length`, `tokens_kept`,
    `tokens_original`, `status`), excluded from the embedding and LLM views. A node that fits the budget keeps its
    text; nodes without text (image nodes, blank text) pass through unchanged. Order and count are unchanged.
    """

    budget_tokens: int = Field(default=1024, gt=0, description="Most reader tokens per node (markers included).")
    config: RetrieverConfig = Field(
        default_factory=RetrieverConfig,
        description="Core retriever config: a RetrieverConfig, a dict, or a YAML path.",
    )
    unit: Literal["sentence", "paragraph"] | None = Field(
        default=None, description="Units to keep; None = the config's units.granularity."
    )
    neighbours: int = Field(default=0, ge=0, description="Units of context kept on each side of every chosen unit.")
    marker: str = Field(default=DEFAULT_MARKER, description="Text put where text was cut between kept pieces.")
    entity_share: float = Field(
        default=DEFAULT_ENTITY_SHARE,
        ge=0.0,
        le=1.0,
        description="Share of the budget reserved for units pulled in through the query's entities.",
    )
    reader_tokenizer: str | None = Field(
        default=None,
        description="Tokenizer the budget is counted with (hub id in the local cache, or a local folder); "
        "None = the scoring model's tokenizer.",
    )

    _retriever: AttentionRetriever | None = PrivateAttr(default=None)

    @field_validator("config", mode="before")
    @classmethod
    def _coerce_config(cls, value: RetrieverConfig | dict[str, Any] | str | Path | None) -> RetrieverConfig:
        return RetrieverConfig.coerce(value)

    @field_validator("budget_tokens", mode="before")
    @classmethod
    def _check_budget(cls, value: Any) -> int:
        return check_budget(value)

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex serialization."""
        return "AttentionContextPruner"

    @property
    def retriever(self) -> AttentionRetriever:
        """The shared core retriever for this config (built on first access)."""
        if self._retriever is None:
            self._retriever = shared_retriever(self.config)
        return self._retriever

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = query_text(query_bundle, "AttentionContextPruner")
        options = PruneOptions(self.unit, self.neighbours, self.marker, self.entity_share, self.reader_tokenizer)
        for position, item in enumerate(nodes):
            if not isinstance(item, NodeWithScore):
                raise TypeError(f"nodes must be NodeWithScore objects, got {type(item).__name__} at {position}")
        textual = [
            i for i, item in enumerate(nodes) if isinstance(item.node, TextNode) and node_text(item.node).strip()
        ]
        out = [NodeWithScore(node=item.node.model_copy(deep=True), score=item.score) for item in nodes]
        if not textual:
            return out
        documents = [CoreDocument(text=node_text(nodes[i].node), id=nodes[i].node.node_id) for i in textual]
        results = self.retriever.prune(query, documents, self.budget_tokens, options=options)
        for i, pruned in zip(textual, results, strict=True):
            node = out[i].node
            assert isinstance(node, TextNode)
            node.set_content(pruned.text)
            node.metadata[PRUNING_KEY] = pruned.meta()
            for excluded in (node.excluded_embed_metadata_keys, node.excluded_llm_metadata_keys):
                if PRUNING_KEY not in excluded:
                    excluded.append(PRUNING_KEY)
        return out

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._postprocess_nodes, nodes, query_bundle)
