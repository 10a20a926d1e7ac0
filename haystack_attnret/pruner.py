"""`AttentionContextPruner`: a Haystack component that cuts each document down to a reader's token budget."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, Literal

from haystack import Document, component, default_from_dict, default_to_dict

from shared_core import AttentionRetriever, RetrieverConfig
from shared_core import Document as CoreDocument
from shared_core.document import PRUNING_KEY
from shared_core.tasks.pruned import DEFAULT_ENTITY_SHARE, DEFAULT_MARKER, PrunedDocument, PruneOptions, check_budget
from shared_core.validation import check_query

logger = logging.getLogger(__name__)


@component
class AttentionContextPruner:
    """Prune each document to `budget_tokens` reader tokens for the query: the units it needs, in document order.

    Sits between a retriever (or `AttentionRanker`) and `PromptBuilder`: every document comes back as a copy (same
    id, score and meta; inputs are not mutated) whose `content` is the pruned text, with where `marker` marks cut
    text, and whose meta adds `attnret_pruning`, as the LlamaIndex pruner does: `spans` (kept char spans of the
    original content, each with its `reason`: direct, entity, neighbour or whole), `original_length` (chars),
    `tokens_kept`, `tokens_original` (under the reader's tokenizer) and `status` ("pruned", "whole", "truncated",
    "nothing_fits"; see docs/pruning.md). The document's own meta keys are kept as they are.
    A document that fits the budget is returned whole; documents without text pass through unchanged.

    Pipeline YAML naming `haystack_attnret.pruner.AttentionContextPruner` loads only with the package allowlisted,
    e.g. `Pipeline.loads(yaml_text, allowed_modules=["haystack_attnret.*"])` (see `AttentionRanker`).
    """

    def __init__(
        self,
        *,
        budget_tokens: int = 1024,
        config: RetrieverConfig | dict[str, Any] | str | Path | None = None,
        unit: Literal["sentence", "paragraph"] | None = None,
        neighbours: int = 0,
        marker: str = DEFAULT_MARKER,
        entity_share: float = DEFAULT_ENTITY_SHARE,
        reader_tokenizer: str | None = None,
    ) -> None:
        """
        Create the pruner; the model loads in `warm_up` (or on the first `run`).

        :param budget_tokens: Most reader tokens per pruned document (markers included).
        :param config: Core retriever config: a `RetrieverConfig`, a dict, or a YAML path (serialised as a dict).
        :param unit: "sentence" or "paragraph" units; None = the config's `units.granularity`.
        :param neighbours: Units of context kept on each side of every chosen unit.
        :param marker: Text put where text was cut between two kept pieces.
        :param entity_share: Share of the budget reserved for units pulled in through the query's entities.
        :param reader_tokenizer: Tokenizer the budget is counted with (hub id in the local cache or a local folder);
            None = the scoring model's tokenizer.
        """
        check_budget(budget_tokens)
        if reader_tokenizer is not None and not isinstance(reader_tokenizer, str):
            raise TypeError(f"reader_tokenizer must be a tokenizer name or None, got {type(reader_tokenizer).__name__}")
        PruneOptions(unit, neighbours, marker, entity_share, reader_tokenizer)  # refuse bad options at init
        self.budget_tokens = budget_tokens
        self.config = RetrieverConfig.coerce(config)
        self.unit = unit
        self.neighbours = neighbours
        self.marker = marker
        self.entity_share = entity_share
        self.reader_tokenizer = reader_tokenizer
        self._retriever: AttentionRetriever | None = None
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Build the core retriever and load its model (idempotent, thread-safe)."""
        if self._retriever is not None:
            return
        with self._lock:
            if self._retriever is None:
                retriever = AttentionRetriever(self.config)
                retriever.warm_up()
                self._retriever = retriever

    def to_dict(self) -> dict[str, Any]:
        """Serialise the init parameters; the config as a plain dict of its non-default values."""
        return default_to_dict(
            self,
            budget_tokens=self.budget_tokens,
            config=self.config.model_dump(mode="json", exclude_defaults=True),
            unit=self.unit,
            neighbours=self.neighbours,
            marker=self.marker,
            entity_share=self.entity_share,
            reader_tokenizer=self.reader_tokenizer,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttentionContextPruner:
        """Rebuild a pruner from `to_dict` output (the input dict is not modified)."""
        return default_from_dict(cls, copy.deepcopy(data))

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], budget_tokens: int | None = None) -> dict[str, list[Document]]:
        """
        Prune every document of `documents` for `query`.

        :param query: The query the reader will answer.
        :param documents: Documents to prune; an empty list gives an empty result without loading the model.
        :param budget_tokens: Overrides the init `budget_tokens` when not None.
        :returns: `{"documents": [...]}`, one pruned copy per input document, in input order.
        """
        budget = check_budget(self.budget_tokens if budget_tokens is None else budget_tokens)
        check_query(query)
        if not isinstance(documents, list) or not all(isinstance(d, Document) for d in documents):
            raise TypeError("documents must be a list of haystack Document objects")
        if not documents:
            return {"documents": []}
        textual = [i for i, d in enumerate(documents) if isinstance(d.content, str) and d.content.strip()]
        out = [dataclasses.replace(d, meta=dict(d.meta)) for d in documents]
        if len(textual) < len(documents):
            logger.debug("passing %d document(s) without text through unpruned", len(documents) - len(textual))
        if not textual:
            return {"documents": out}
        self.warm_up()
        assert self._retriever is not None
        core = [CoreDocument(text=documents[i].content or "", id=documents[i].id) for i in textual]
        options = PruneOptions(self.unit, self.neighbours, self.marker, self.entity_share, self.reader_tokenizer)
        results = self._retriever.prune(query, core, budget, options=options)
        for i, pruned in zip(textual, results, strict=True):
            out[i] = _pruned_copy(documents[i], pruned)
        return {"documents": out}

    @component.output_types(documents=list[Document])
    async def run_async(
        self, query: str, documents: list[Document], budget_tokens: int | None = None
    ) -> dict[str, list[Document]]:
        """Async `run`: the model work runs in a worker thread so the event loop stays free."""
        return await asyncio.to_thread(self.run, query=query, documents=documents, budget_tokens=budget_tokens)


def _pruned_copy(document: Document, pruned: PrunedDocument) -> Document:
    """A copy of `document` with the pruned text and the pruning facts in its meta (the same id and score)."""
    return dataclasses.replace(document, content=pruned.text, meta={**document.meta, PRUNING_KEY: pruned.meta()})
