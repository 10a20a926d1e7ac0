"""`AttentionRerank`: a LlamaIndex node postprocessor that reranks nodes, or extracts their best units."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Literal

from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, field_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from shared_core import AttentionRetriever, RetrieverConfig
from shared_core.validation import check_top_k

from .context import SourceContext, build_contexts, split_scoreable, unit_node
from .shared import shared_retriever, with_granularity

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

Granularity = Literal["node", "sentence", "paragraph"]


class AttentionRerank(BaseNodePostprocessor):
    """Rerank retrieved nodes by query-row attention of a causal LM reading their source document.

    `granularity="node"` returns the given nodes, rescored and cut to `top_n`. `"sentence"` and
    `"paragraph"` return the `top_n` best units inside the nodes as new `TextNode`s (SOURCE = the
    node's ref doc, PARENT = the node, metadata copied plus `attnret_reasons`, char offsets of the
    original document). Nodes sharing a `ref_doc_id` are ordered by `start_char_idx` and scored in
    one context; a node without `ref_doc_id` is scored alone. Nodes without text (image nodes,
    empty text) cannot be scored: they are appended after the ranked nodes with score None (they do
    not count against `top_n`). Inputs are never mutated. The model loads on first use and is shared
    by every postprocessor with the same config.
    """

    top_n: int = Field(default=5, gt=0, description="Number of nodes (or units) to return.")
    config: RetrieverConfig = Field(
        default_factory=RetrieverConfig,
        description="Core retriever config: a RetrieverConfig, a dict, or a YAML path.",
    )
    granularity: Granularity = Field(
        default="node", description="'node' reranks the nodes; 'sentence'/'paragraph' return units inside them."
    )

    _retriever: AttentionRetriever | None = PrivateAttr(default=None)

    # assignments are validated like the constructor; errors never echo inputs (a config may be huge or shared)
    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=True, hide_input_in_errors=True)

    @field_validator("top_n", mode="before")
    @classmethod
    def _check_top_n(cls, value: Any) -> int:
        return check_top_k(value, "top_n")  # TypeError for a bool/float/str (True is not 1 result)

    @field_validator("config", mode="before")
    @classmethod
    def _coerce_config(cls, value: RetrieverConfig | dict[str, Any] | str | Path | None) -> RetrieverConfig:
        return RetrieverConfig.coerce(value)

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex serialization."""
        return "AttentionRerank"

    @property
    def model_name(self) -> str:
        """Name reported in rerank events."""
        return self.config.model.name or "attnret-default (SmolLM2-135M-Instruct)"

    @property
    def retriever(self) -> AttentionRetriever:
        """The shared core retriever for this config and granularity (built on first access)."""
        if self._retriever is None:
            config = self.config if self.granularity == "node" else with_granularity(self.config, self.granularity)
            self._retriever = shared_retriever(config)
        return self._retriever

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("AttentionRerank needs a query: pass query_bundle or query_str.")
        if not nodes:
            return []
        scoreable, textless = split_scoreable(nodes)
        if textless:
            logger.debug("passing %d node(s) without text through unscored", len(textless))
        passthrough = [NodeWithScore(node=item.node, score=None) for item in textless]

        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n, model_name=self.model_name)
        )
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: self.model_name,
                EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.TOP_K: self.top_n,
            },
        ) as event:
            ranked = self._rank(query_bundle.query_str, build_contexts(scoreable)) if scoreable else []
            new_nodes = ranked + passthrough
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes))
        return new_nodes

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._postprocess_nodes, nodes, query_bundle)

    def _rank(self, query: str, contexts: list[SourceContext]) -> list[NodeWithScore]:
        if self.granularity == "node":
            scored = [
                (score, member.position, member.node)
                for context in contexts
                for member, score in zip(context.members, self._node_scores(query, context), strict=True)
            ]
            scored.sort(key=lambda entry: (-entry[0], entry[1]))
            return [NodeWithScore(node=node, score=score) for score, _, node in scored[: self.top_n]]
        documents = [context.document() for context in contexts]
        hits = self.retriever.retrieve(query, documents, top_k=self.top_n)
        return [unit_node(contexts[hit.document_index], hit) for hit in hits]

    def _node_scores(self, query: str, context: SourceContext) -> list[float]:
        return [float(s) for s in self.retriever.score_spans(query, context.document(), context.spans)]
