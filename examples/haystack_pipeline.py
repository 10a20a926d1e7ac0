"""Haystack RAG over one long document: long units, BM25, attention sentences, a local LM. Runs offline.

    python examples/haystack_pipeline.py ["your question"]

The query pipeline is `haystack_pipeline.yaml`, loaded with Haystack's deserialization allowlist
(`allowed_modules=["haystack_attnret.*", "haystack_pipeline"]`: the ranker, and this module's generator).
Indexing is done here: the report is split into a few long units (LongRAG style, ~1-2k tokens each)
and written to the BM25 retriever's in-memory store.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # offline example: no usage telemetry

from haystack import Document, Pipeline, component
from haystack.components.preprocessors import DocumentSplitter

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # `local_lm`, and `haystack_pipeline.LocalGenerator` for the pipeline YAML
import local_lm  # noqa: E402

DOCUMENT = HERE / "data" / "calloway_venn_annual_report.txt"
PIPELINE_YAML = HERE / "haystack_pipeline.yaml"
QUESTION = "In which town was the first Kestrel seismometer prototype built?"
ALLOWED_MODULES = ["haystack_attnret.*", "haystack_pipeline"]
PARAGRAPHS_PER_UNIT = 24

logger = logging.getLogger(__name__)


@component
class LocalGenerator:
    """Greedy text generation with attnret's small offline LM (SmolLM2-135M-Instruct), via its chat template."""

    def __init__(self, max_new_tokens: int = 64) -> None:
        """:param max_new_tokens: Longest reply in tokens."""
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
        self.max_new_tokens = max_new_tokens

    def warm_up(self) -> None:
        """Load the model (once per process)."""
        local_lm.load()

    @component.output_types(replies=list[str])
    def run(self, prompt: str) -> dict[str, list[str]]:
        """Generate one reply to `prompt`."""
        self.warm_up()
        return {"replies": [local_lm.generate(prompt, self.max_new_tokens)]}


def long_units(text: str) -> list[Document]:
    """The report cut into long retrieval units of whole paragraphs."""
    splitter = DocumentSplitter(split_by="passage", split_length=PARAGRAPHS_PER_UNIT, split_overlap=0)
    source = Document(content=text, meta={"file": DOCUMENT.name})
    return splitter.run(documents=[source])["documents"]


def load_pipeline() -> Pipeline:
    """The query pipeline from YAML, trusting only this package and this module."""
    return Pipeline.loads(PIPELINE_YAML.read_text(encoding="utf-8"), allowed_modules=ALLOWED_MODULES)


def answer(question: str = QUESTION) -> dict[str, Any]:
    """Index the report, run the pipeline; returns the answer text and the cited spans (with file offsets)."""
    pipeline = load_pipeline()
    store = pipeline.get_component("retriever").document_store
    store.delete_documents([doc.id for doc in store.filter_documents()])
    store.write_documents(long_units(DOCUMENT.read_text(encoding="utf-8")))
    result = pipeline.run(
        {
            "retriever": {"query": question},
            "attention_ranker": {"query": question},
            "prompt_builder": {"question": question},
            "answer_builder": {"query": question},
        }
    )
    generated = result["answer_builder"]["answers"][0]
    spans = [
        {
            "n": n,
            "text": doc.content,
            "score": doc.score,
            "start": doc.meta["split_idx_start"] + doc.meta["attnret_start"],
            "end": doc.meta["split_idx_start"] + doc.meta["attnret_end"],
            "reasons": doc.meta["attnret_reasons"],
        }
        for n, doc in enumerate(generated.documents, start=1)
    ]
    return {"question": question, "answer": generated.data, "spans": spans}


def main() -> None:
    """Answer the question given on the command line (or the default one) and print the cited spans."""
    local_lm.answer_from_command_line(answer, QUESTION, f"Cited spans ({DOCUMENT.name})")


if __name__ == "__main__":
    main()
