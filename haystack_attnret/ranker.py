"""`AttentionRanker`: a Haystack component that ranks documents, or extracts their best units, by attention."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import math
import operator
import threading
from pathlib import Path
from typing import Any, Literal

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.utils import ComponentDevice

from shared_core import AttentionRetriever, RetrieverConfig
from shared_core import Document as CoreDocument
from shared_core.document import unit_meta
from shared_core.tasks.candidates import Candidate
from shared_core.validation import check_query, check_top_k

logger = logging.getLogger(__name__)

Granularity = Literal["document", "sentence", "paragraph"]
_GRANULARITIES = ("document", "sentence", "paragraph")
RETRIEVAL_SCORE_KEY = "retrieval_score"
"""Meta key holding a document's first-stage score in the ranker's output."""


@component
class AttentionRanker:
    """Rank documents by the attention a causal LM's query pays them, or return their best sentences/paragraphs.

    `granularity="document"` returns the given documents rescored (copies; inputs are not mutated),
    best first, cut to `top_k`: all documents of the query are read in ONE prompt
    (`AttentionRetriever.score_candidates`; splits of one source, by `meta["source_id"]`, next to each other in
    `meta["split_idx_start"]` order; sources in a canonical order whatever the input order, the most relevant by
    in-set BM25 and dense cosine nearest the query), each as the values of `meta_fields_to_embed` then its content,
    joined by `embedding_separator` (as Haystack's sentence-transformers ranker reads them).
    Document scores are calibrated probabilities of relevance (docs/rerank.md; a 0.5 threshold keeps what is more
    likely relevant than not): comparable across the documents of a call and across calls, so a single document gets
    a real score and `score_threshold` means the same in every call; the same text under two ids scores the same.
    Documents are deduplicated by id first, keeping the
    one with the highest (first-stage) score, as Haystack's rankers do; the first-stage score is kept in the
    result's `meta["retrieval_score"]` (when it had one).
    `"sentence"`/`"paragraph"` return the `top_k` best units across the documents as new `Document`s whose `meta`
    is the source's meta plus `attnret_source_id` (the source's id), `attnret_start`, `attnret_end` (char offsets in
    the source content), `attnret_reasons` and `attnret_scores` (per view); the source's own keys are kept as they
    are (unit scores are relative, not probabilities: in [0, 1] within their document, a one-unit document's unit
    1.0, scaled by 0.5 + 0.5 x their document's standing when several documents are given; docs/rerank.md).
    `meta["source_id"]` and `meta["split_idx_start"]` (what `DocumentSplitter` writes) are read as inputs.
    `score_threshold` drops results scoring below it. Documents without text (`content` None or blank) cannot be
    scored: they come after the scored results with `score=None` and count against `top_k` (a hard cap); any
    `score_threshold` drops them.

    Loading from pipeline YAML: Haystack 3 only imports classes from allowlisted modules when it
    deserializes a pipeline (`haystack.core.serialization_security`). This package does not add itself
    to the allowlist on import; trust it explicitly, in one of three ways:

    - per load: `Pipeline.loads(yaml_text, allowed_modules=["haystack_attnret.*"])`
      (also `Pipeline.load(fp, ...)` and `Pipeline.from_dict(data, ...)`);
    - process-wide in code: `haystack.core.serialization.allow_deserialization_module("haystack_attnret.*")`;
    - process-wide from the environment: `HAYSTACK_DESERIALIZATION_ALLOWLIST="haystack_attnret.*"`
      (comma-separated patterns, read at each load).

    Without one of these, loading a pipeline that names `haystack_attnret.ranker.AttentionRanker` raises
    `DeserializationError`.

    Usage:
    ```python
    from haystack import Document
    from haystack_attnret import AttentionRanker

    ranker = AttentionRanker(granularity="sentence", top_k=3)
    result = ranker.run(query="Where is the milk?", documents=[Document(content=long_text)])
    ```
    """

    def __init__(
        self,
        *,
        config: RetrieverConfig | dict[str, Any] | str | Path | None = None,
        top_k: int = 10,
        granularity: Granularity = "document",
        score_threshold: float | None = None,
        device: ComponentDevice | None = None,
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
    ) -> None:
        """
        Create the ranker; the model loads in `warm_up` (or on the first `run`).

        :param config: Core retriever config: a `RetrieverConfig`, a dict, or a YAML path (serialised as a dict).
        :param top_k: Maximum number of documents (or units) to return.
        :param granularity: "document" ranks the documents; "sentence"/"paragraph" return units inside them.
        :param score_threshold: Drop results scoring below this; None keeps all.
        :param device: Device to run the model on; None keeps the config's `model.device` ("auto" by default).
        :param meta_fields_to_embed: Meta fields read before the content (granularity "document"); None = none.
        :param embedding_separator: Joins those meta values and the content.
        """
        _check_top_k(top_k)
        _check_threshold(score_threshold)
        if granularity not in _GRANULARITIES:
            raise ValueError(f"granularity must be one of {_GRANULARITIES}, got {granularity!r}")
        if device is not None and not isinstance(device, ComponentDevice):
            raise TypeError(f"device must be a ComponentDevice or None, got {type(device).__name__}")
        if device is not None and device.has_multiple_devices:
            raise ValueError("AttentionRanker runs on a single device; got a multi-device map")
        self.config = RetrieverConfig.coerce(config)
        self.top_k = top_k
        self.granularity = granularity
        self.score_threshold = score_threshold
        self.device = device
        self.meta_fields_to_embed = _check_meta_fields(meta_fields_to_embed)
        if not isinstance(embedding_separator, str):
            raise TypeError(f"embedding_separator must be a str, got {type(embedding_separator).__name__}")
        self.embedding_separator = embedding_separator
        self._retriever: AttentionRetriever | None = None
        self._lock = threading.Lock()

    def _effective_config(self) -> RetrieverConfig:
        model, units = self.config.model, self.config.units
        if self.device is not None:
            model = model.model_copy(update={"device": self.device.to_torch_str()})
        if self.granularity != "document":
            units = units.model_copy(update={"granularity": self.granularity})
        return self.config.model_copy(update={"model": model, "units": units})

    def warm_up(self) -> None:
        """Build the core retriever and load its model (idempotent, thread-safe)."""
        if self._retriever is not None:
            return
        with self._lock:
            if self._retriever is None:
                retriever = AttentionRetriever(self._effective_config())
                retriever.warm_up()
                self._retriever = retriever

    def to_dict(self) -> dict[str, Any]:
        """Serialise the init parameters; the config as a plain dict of its non-default values."""
        return default_to_dict(
            self,
            config=self.config.model_dump(mode="json", exclude_defaults=True),
            top_k=self.top_k,
            granularity=self.granularity,
            score_threshold=self.score_threshold,
            device=self.device.to_dict() if self.device is not None else None,
            meta_fields_to_embed=self.meta_fields_to_embed,
            embedding_separator=self.embedding_separator,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttentionRanker:
        """Rebuild a ranker from `to_dict` output (the input dict is not modified)."""
        data = copy.deepcopy(data)
        init_params = data.get("init_parameters", {})
        if init_params.get("config") is not None and not isinstance(init_params["config"], dict):
            # pipeline YAML is shared data: it may carry a config mapping, never a file path to read
            raise ValueError(
                "AttentionRanker init_parameters.config must be a mapping of config values in pipeline data, got "
                f"{type(init_params['config']).__name__}; a file path is not read from pipeline YAML (load it in "
                "code with RetrieverConfig.from_yaml and pass the config)"
            )
        if init_params.get("device") is not None:
            init_params["device"] = ComponentDevice.from_dict(init_params["device"])
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """
        Rank `documents` (or extract their best units) for `query`.

        :param query: The query.
        :param documents: Documents to rank; an empty list gives an empty result without loading the model.
        :param top_k: Overrides the init `top_k` when not None.
        :param score_threshold: Overrides the init `score_threshold` when not None.
        :returns: `{"documents": [...]}`, best first, then any documents without text (score None), at most
            `top_k` in all; with a threshold, only the scored documents at or above it.
        """
        top_k = self.top_k if top_k is None else top_k
        score_threshold = self.score_threshold if score_threshold is None else score_threshold
        _check_top_k(top_k)
        _check_threshold(score_threshold)
        check_query(query)
        documents = _deduplicate(_check_documents(documents))
        if not documents:
            return {"documents": []}
        textual = [doc for doc in documents if _has_text(doc)]
        passthrough = [_rescored(doc, None) for doc in documents if not _has_text(doc)]
        if passthrough:
            logger.debug("%d document(s) without text come after the scored ones, with score None", len(passthrough))
        ranked = self._rank(query, textual, top_k) if textual else []
        results = (ranked + passthrough)[:top_k]
        if score_threshold is not None:
            results = [doc for doc in results if doc.score is not None and doc.score >= score_threshold]
        return {"documents": results}

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """Async `run`: the model work runs in a worker thread so the event loop stays free."""
        return await asyncio.to_thread(
            self.run, query=query, documents=documents, top_k=top_k, score_threshold=score_threshold
        )

    def _rank(self, query: str, documents: list[Document], top_k: int) -> list[Document]:
        self.warm_up()
        assert self._retriever is not None
        if self.granularity == "document":
            candidates = [self._candidate(doc) for doc in documents]
            scores = [hit.score for hit in self._retriever.score_candidates(query, candidates)]
            order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))[:top_k]
            return [_rescored(documents[i], float(scores[i])) for i in order]
        core_docs = [CoreDocument(text=doc.content or "", id=doc.id) for doc in documents]
        hits = self._retriever.retrieve(query, core_docs, top_k=top_k)
        return [
            Document(
                content=hit.text,
                meta={
                    **documents[hit.document_index].meta,
                    **unit_meta(hit, documents[hit.document_index].id, hit.start, hit.end),
                },
                score=float(hit.score),
            )
            for hit in hits
        ]

    def _candidate(self, doc: Document) -> Candidate:
        """The document as read by the candidate-set scorer: embedded meta values, then its content."""
        meta = [str(doc.meta[k]) for k in self.meta_fields_to_embed or [] if doc.meta.get(k) not in (None, "")]
        source, start = doc.meta.get("source_id"), doc.meta.get("split_idx_start")
        return Candidate(
            text=self.embedding_separator.join([*meta, doc.content or ""]),
            id=doc.id,
            source=source if isinstance(source, str) else None,
            start=start if isinstance(start, int) and not isinstance(start, bool) else None,
        )


def _has_text(doc: Document) -> bool:
    return isinstance(doc.content, str) and bool(doc.content.strip())


def _rescored(doc: Document, score: float | None) -> Document:
    """A copy of `doc` with the new score, its first-stage score (if any) kept in meta["retrieval_score"]."""
    meta = doc.meta if doc.score is None else {**doc.meta, RETRIEVAL_SCORE_KEY: doc.score}
    return dataclasses.replace(doc, score=score, meta=meta)


def _check_documents(documents: Any) -> list[Document]:
    """`documents` must be a list of Haystack Documents (TypeError naming the offending item otherwise)."""
    if isinstance(documents, str | Document) or not isinstance(documents, list | tuple):
        raise TypeError(f"documents must be a list of haystack Document, got {type(documents).__name__}")
    for i, doc in enumerate(documents):
        if not isinstance(doc, Document):
            raise TypeError(f"documents[{i}] must be a haystack Document, got {type(doc).__name__}")
    return list(documents)


def _deduplicate(documents: list[Document]) -> list[Document]:
    """One document per id, the one with the highest score (None lowest; first seen among equals), in first-seen
    order: what Haystack's own rankers do before ranking."""
    best: dict[str, Document] = {}
    for doc in documents:
        kept = best.get(doc.id)
        score = -math.inf if doc.score is None else doc.score
        if kept is None or score > (-math.inf if kept.score is None else kept.score):
            best[doc.id] = doc
    return list(best.values())


def _check_meta_fields(fields: Any) -> list[str] | None:
    if fields is None:
        return None
    if isinstance(fields, str) or not isinstance(fields, list | tuple) or not all(isinstance(f, str) for f in fields):
        raise TypeError("meta_fields_to_embed must be a list of str or None")
    return list(fields)


def _check_top_k(top_k: Any) -> int:
    """`top_k` must be a positive int; a non-positive one is refused in the words of Haystack's own rankers."""
    try:
        return check_top_k(top_k)  # TypeError for a bool, float or str
    except ValueError:
        raise ValueError(f"top_k must be > 0, but got {operator.index(top_k)}") from None


def _check_threshold(score_threshold: Any) -> None:
    """A threshold is None or a finite number (NaN would silently drop every result, inf too)."""
    if score_threshold is None:
        return
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, int | float):
        raise TypeError(f"score_threshold must be a number or None, got {type(score_threshold).__name__}")
    if isinstance(score_threshold, float) and not math.isfinite(score_threshold):
        raise ValueError(f"score_threshold must be a finite number, got {score_threshold!r}")
