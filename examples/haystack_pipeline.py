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
DOCUMENT = HERE / "data" / "calloway_venn_annual_report.txt"
PIPELINE_YAML = HERE / "haystack_pipeline.yaml"
QUESTION = "In which town was the first Kestrel seismometer prototype built?"
ALLOWED_MODULES = ["haystack_attnret.*", "haystack_pipeline"]
PARAGRAPHS_PER_UNIT = 24

logger = logging.getLogger(__name__)


@component
class LocalGenerator:
    """Greedy text generation with the offline default LM of attnret (SmolLM2-135M-Instruct), via its chat template."""

    def __init__(self, max_new_tokens: int = 64) -> None:
        """:param max_new_tokens: Longest reply in tokens."""
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
        self.max_new_tokens = max_new_tokens
        self._loaded: Any = None

    def warm_up(self) -> None:
        """Load the model (shared with the retriever's, when both use the default)."""
        if self._loaded is None:
            from shared_core.config import ModelConfig
            from shared_core.models.loading import load_model

            self._loaded = load_model(ModelConfig())

    @component.output_types(replies=list[str])
    def run(self, prompt: str) -> dict[str, list[str]]:
        """Generate one reply to `prompt`."""
        self.warm_up()
        return {"replies": [generate(self._loaded, prompt, self.max_new_tokens)]}


def generate(loaded: Any, prompt: str, max_new_tokens: int) -> str:
    """Greedy completion of a one-turn chat with a loaded core model (`shared_core.models.loading.LoadedModel`)."""
    import torch

    tokenizer = loaded.tokenizer
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = {k: v.to(loaded.device) for k, v in ids.items()}
    with torch.no_grad():
        out = loaded.model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def long_units(text: str) -> list[Document]:
    """The report cut into long retrieval units of whole paragraphs."""
    splitter = DocumentSplitter(split_by="passage", split_length=PARAGRAPHS_PER_UNIT, split_overlap=0)
    source = Document(content=text, meta={"file": DOCUMENT.name})
    return splitter.run(documents=[source])["documents"]


def load_pipeline() -> Pipeline:
    """The query pipeline from YAML, trusting only this package and this module."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))  # so that `haystack_pipeline.LocalGenerator` resolves
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
            "start": doc.meta["split_idx_start"] + doc.meta["start"],
            "end": doc.meta["split_idx_start"] + doc.meta["end"],
            "reasons": doc.meta["reasons"],
        }
        for n, doc in enumerate(generated.documents, start=1)
    ]
    return {"question": question, "answer": generated.data, "spans": spans}


def main() -> None:
    """Answer the question given on the command line (or the default one) and print the cited spans."""
    logging.basicConfig(level=logging.WARNING)
    result = answer(sys.argv[1] if len(sys.argv) > 1 else QUESTION)
    print(f"Q: {result['question']}\nA: {result['answer']}\n\nCited spans ({DOCUMENT.name}):")
    for span in result["spans"]:
        print(f"[{span['n']}] chars {span['start']}-{span['end']} {span['reasons']}: {span['text']}")


if __name__ == "__main__":
    main()
