"""`AttentionRanker`: a Haystack component that ranks documents, or extracts their best units, by attention."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import math
import threading
from pathlib import Path
from typing import Any, Literal

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.utils import ComponentDevice

from shared_core import AttentionRetriever, RetrieverConfig
from shared_core import Document as CoreDocument
from shared_core.validation import check_top_k

logger = logging.getLogger(__name__)

Granularity = Literal["document", "sentence", "paragraph"]
_GRANULARITIES = ("document", "sentence", "paragraph")


@component
class AttentionRanker:
    """Rank documents by the attention a causal LM's query pays them, or return their best sentences/paragraphs.

    `granularity="document"` returns the given documents rescored (copies; inputs are not mutated),
    best first, cut to `top_k`. `"sentence"`/`"paragraph"` return the `top_k` best units across the
    documents as new `Document`s whose `meta` is the source's meta plus `source_id`, `start`, `end`
    (char offsets in the source content) and `reasons`. `score_threshold` drops results scoring below it
    (document scores are in [0, 1], relative to the documents ranked together; unit scores are in [0, 1]
    within their document, scaled by their document's score when several documents are given).
    Documents without text (`content` None or blank) cannot be scored: they are passed through after
    the ranked results with `score=None` and do not count against `top_k`.

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
    ) -> None:
        """
        Create the ranker; the model loads in `warm_up` (or on the first `run`).

        :param config: Core retriever config: a `RetrieverConfig`, a dict, or a YAML path (serialised as a dict).
        :param top_k: Maximum number of documents (or units) to return.
        :param granularity: "document" ranks the documents; "sentence"/"paragraph" return units inside them.
        :param score_threshold: Drop results scoring below this; None keeps all.
        :param device: Device to run the model on; None keeps the config's `model.device` ("auto" by default).
        """
        check_top_k(top_k)
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
        :returns: `{"documents": [...]}`, best first, then any documents without text (score None).
        """
        top_k = self.top_k if top_k is None else top_k
        score_threshold = self.score_threshold if score_threshold is None else score_threshold
        check_top_k(top_k)
        _check_threshold(score_threshold)
        if not documents:
            return {"documents": []}
        textual = [doc for doc in documents if isinstance(doc.content, str) and doc.content.strip()]
        passthrough = [
            dataclasses.replace(doc, score=None)
            for doc in documents
            if not (isinstance(doc.content, str) and doc.content.strip())
        ]
        if passthrough:
            logger.debug("passing %d document(s) without text through unscored", len(passthrough))
        ranked = self._rank(query, textual, top_k) if textual else []
        if score_threshold is not None:
            ranked = [doc for doc in ranked if doc.score is not None and doc.score >= score_threshold]
        return {"documents": ranked + passthrough}

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
        core_docs = [CoreDocument(text=doc.content or "", id=doc.id) for doc in documents]
        if self.granularity == "document":
            scores = self._retriever.score_documents(query, core_docs)
            order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))[:top_k]
            return [dataclasses.replace(documents[i], score=float(scores[i])) for i in order]
        hits = self._retriever.retrieve(query, core_docs, top_k=top_k)
        return [
            Document(
                content=hit.text,
                meta={
                    **documents[hit.document_index].meta,
                    "source_id": documents[hit.document_index].id,
                    "start": hit.start,
                    "end": hit.end,
                    "reasons": list(hit.reasons),
                },
                score=float(hit.score),
            )
            for hit in hits
        ]


def _check_threshold(score_threshold: Any) -> None:
    """A threshold is None or a finite number (NaN would silently drop every result, inf too)."""
    if score_threshold is None:
        return
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, int | float):
        raise TypeError(f"score_threshold must be a number or None, got {type(score_threshold).__name__}")
    if isinstance(score_threshold, float) and not math.isfinite(score_threshold):
        raise ValueError(f"score_threshold must be a finite number, got {score_threshold!r}")
