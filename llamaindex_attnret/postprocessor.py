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
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from llamaindex_attnret.context import build_contexts, node_candidate, rescored, split_scoreable, unit_node
from llamaindex_attnret.shared import query_text, shared_retriever, with_granularity
from shared_core import AttentionRetriever, RetrieverConfig
from shared_core.models.loading import model_id
from shared_core.validation import check_top_k

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

Granularity = Literal["node", "sentence", "paragraph"]


class AttentionRerank(BaseNodePostprocessor):
    """Rerank retrieved nodes by query-row attention of a causal LM reading them together, or extract their units.

    `granularity="node"` returns the given nodes rescored, best first, cut to `top_n`: every node of the query is
    read in ONE prompt (`AttentionRetriever.score_candidates`; nodes sharing a `ref_doc_id` next to each other in
    `start_char_idx` order; sources in a canonical order whatever the input order, the most relevant by in-set BM25
    and dense cosine nearest the query), its content taken in `metadata_mode` (default EMBED, as the
    sentence-transformers rerank). Scores are calibrated probabilities of relevance (docs/rerank.md), comparable
    across the nodes of a call and across calls, so a single node gets a real score and a following
    `SimilarityPostprocessor(similarity_cutoff=0.5)` keeps what is more likely relevant than not. Unit scores
    (`"sentence"`/`"paragraph"`) are relative, not probabilities.
    `keep_retrieval_score=True` keeps the first-stage score in the returned node's metadata under "retrieval_score"
    (on a copy of the node).
    `"sentence"` and `"paragraph"` return the `top_n` best units inside the nodes as new `TextNode`s (SOURCE = the
    node's ref doc, PARENT = the node, metadata copied plus `attnret_reasons`, char offsets of the original
    document): nodes sharing a `ref_doc_id` are joined in `start_char_idx` order and read as one long document.
    Nodes without text (image nodes, empty text) cannot be scored: they come after the scored nodes with score None
    and count against `top_n` (so a `top_n` is a hard cap); a similarity cutoff drops them. Inputs are never
    mutated. The model loads on first use and is shared by every postprocessor with the same config.
    """

    top_n: int = Field(default=5, gt=0, description="Number of nodes (or units) to return.")
    config: RetrieverConfig = Field(
        default_factory=RetrieverConfig,
        description="Core retriever config: a RetrieverConfig, a dict, or a YAML path.",
    )
    granularity: Granularity = Field(
        default="node", description="'node' reranks the nodes; 'sentence'/'paragraph' return units inside them."
    )
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the first-stage score in the node's metadata under 'retrieval_score'."
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED, description="Which metadata is read with a node's text (granularity 'node')."
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
        return self.config.model.name or model_id(self.config.model)  # unset: the default model's hub id

    @property
    def retriever(self) -> AttentionRetriever:
        """The shared core retriever for this config and granularity (built on first access)."""
        config = self.config if self.granularity == "node" else with_granularity(self.config, self.granularity)
        if self._retriever is None or self._retriever.config != config:  # fields may be reassigned after first use
            self._retriever = shared_retriever(config)
        return self._retriever

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = query_text(query_bundle, "AttentionRerank")
        scoreable, textless = split_scoreable(nodes)  # TypeError for anything but a list of NodeWithScore
        if not scoreable and not textless:
            return []
        if textless:
            logger.debug("%d node(s) without text come after the scored ones, with score None", len(textless))
        passthrough = [rescored(item, None, self.keep_retrieval_score) for item in textless]

        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n, model_name=self.model_name)
        )
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: self.model_name,
                EventPayload.QUERY_STR: query,
                EventPayload.TOP_K: self.top_n,
            },
        ) as event:
            ranked = self._rank(query, scoreable) if scoreable else []
            new_nodes = (ranked + passthrough)[: self.top_n]
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes))
        return new_nodes

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._postprocess_nodes, nodes, query_bundle)

    def _rank(self, query: str, scoreable: list[tuple[int, NodeWithScore]]) -> list[NodeWithScore]:
        if self.granularity == "node":
            candidates = [node_candidate(item, self.metadata_mode) for _, item in scoreable]
            hits = self.retriever.score_candidates(query, candidates)
            order = sorted(range(len(hits)), key=lambda i: (-hits[i].score, i))[: self.top_n]
            return [rescored(scoreable[i][1], hits[i].score, self.keep_retrieval_score) for i in order]
        contexts = build_contexts(scoreable)
        hits = self.retriever.retrieve(query, [context.document() for context in contexts], top_k=self.top_n)
        return [unit_node(contexts[hit.document_index], hit) for hit in hits]
