"""Hayhooks deployment of the example Haystack pipeline (`examples/haystack_pipeline.yaml`). Runs offline.

    bash examples/serving/serve_hayhooks.sh          # hayhooks run on 127.0.0.1:1416 (HAYHOOKS_PORT to move it)
    curl -s -X POST http://127.0.0.1:1416/attnret_report/run -H 'Content-Type: application/json' \
         -d '{"question": "In which town was the first Kestrel seismometer prototype built?"}'

`setup()` runs once when Hayhooks deploys the folder: it loads the query pipeline from the YAML (with Haystack's
deserialization allowlist), writes the example report's long units to the BM25 retriever's store, and warms every
component up (the default model as the ranker's reader, SmolLM2 as the generator; spaCy and MiniLM through one tiny
ranking), so the first request pays no load time.
`run_api(question)` becomes `POST /attnret_report/run`: BM25 over the long units -> `AttentionRanker` sentences ->
lost-in-the-middle -> prompt -> the local LM; it returns the answer, the ranker's sentences best first, and the
context in the order the LM read it. `haystack_pipeline` must be importable: the serve script puts `examples/` on
Hayhooks' `--additional-python-path`.
"""

from __future__ import annotations

import logging
from typing import Any

import haystack_pipeline as example
from hayhooks import BasePipelineWrapper
from haystack import Document
from haystack.document_stores.in_memory import InMemoryDocumentStore

logger = logging.getLogger(__name__)


def _span(document: Document) -> dict[str, Any]:
    """A unit Document of the ranker as JSON, with its character offsets in the report file."""
    meta = document.meta
    return {
        "text": document.content,
        "score": document.score,
        "start": meta["split_idx_start"] + meta["attnret_start"],
        "end": meta["split_idx_start"] + meta["attnret_end"],
        "reasons": meta["attnret_reasons"],
    }


class PipelineWrapper(BasePipelineWrapper):
    """The example's query pipeline over the example report, indexed once at deployment."""

    def setup(self) -> None:
        """Load the pipeline from YAML, index the report's long units, warm every component up."""
        pipeline = example.load_pipeline()
        store: InMemoryDocumentStore = pipeline.get_component("retriever").document_store  # type: ignore[attr-defined]
        store.write_documents(example.long_units(example.DOCUMENT.read_text(encoding="utf-8")))
        pipeline.warm_up()  # the ranker's and the generator's LM
        # The ranker loads its analysis models (spaCy, MiniLM) on first use: one tiny ranking loads them now.
        warm_up = [Document(content="Attnret warms up. The analysis models load here.")]
        pipeline.get_component("attention_ranker").run(query="What loads?", documents=warm_up)
        self.pipeline = pipeline
        logger.info("attnret_report deployed: %d long units indexed", store.count_documents())

    def run_api(self, question: str) -> dict[str, Any]:
        """Answer a question about the example report from the sentences the attention ranker picks."""
        result = self.pipeline.run(
            {
                "retriever": {"query": question},
                "attention_ranker": {"query": question},
                "prompt_builder": {"question": question},
                "answer_builder": {"query": question},
            },
            include_outputs_from={"attention_ranker"},
        )
        generated = result["answer_builder"]["answers"][0]
        return {
            "question": question,
            "answer": generated.data,
            "ranked": [_span(doc) for doc in result["attention_ranker"]["documents"]],
            "context": [_span(doc) for doc in generated.documents],
        }
