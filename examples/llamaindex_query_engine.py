"""LlamaIndex query engine over one long document with AttentionRerank and a local LM. Runs offline.

    python examples/llamaindex_query_engine.py ["your question"]

The report is chunked with `SentenceSplitter` into a few long chunks (LongRAG style, ~1.5k tokens);
a BM25 retriever (`llama-index-retrievers-bm25`, no embeddings model) picks the best two; `AttentionRerank`
joins those sibling chunks back in document order (by `start_char_idx`), reads them in one context and
returns their best sentences as new nodes; `LongContextReorder` then places the strongest at the ends of
the context for a small local LM (SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from llama_index.core import Document
from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen, LLMMetadata
from llama_index.core.bridge.pydantic import Field
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.postprocessor import LongContextReorder
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.retrievers.bm25 import BM25Retriever

from llamaindex_attnret import AttentionRerank

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # `local_lm`, shared by the examples
import local_lm  # noqa: E402

DOCUMENT = HERE / "data" / "calloway_venn_annual_report.txt"
QUESTION = "In which town was the first Kestrel seismometer prototype built?"
CHUNK_TOKENS = 1536

logger = logging.getLogger(__name__)


class LocalSmolLLM(CustomLLM):
    """Greedy completions from attnret's small offline LM (SmolLM2-135M-Instruct) through its chat template."""

    max_new_tokens: int = Field(default=48, gt=0, description="Longest completion in tokens.")

    @property
    def metadata(self) -> LLMMetadata:
        """Window and output size, so LlamaIndex packs prompts that fit."""
        return LLMMetadata(context_window=8192, num_output=self.max_new_tokens, model_name="SmolLM2-135M-Instruct")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Greedy completion of `prompt`."""
        text = local_lm.generate(prompt, self.max_new_tokens)
        return CompletionResponse(text=text)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """One-chunk stream of `complete`."""
        response = self.complete(prompt, formatted=formatted, **kwargs)
        yield CompletionResponse(text=response.text, delta=response.text)


def build_query_engine(top_n: int = 8) -> RetrieverQueryEngine:
    """Chunk the report into long chunks, BM25 over them, then AttentionRerank + LongContextReorder."""
    text = DOCUMENT.read_text(encoding="utf-8")
    document = Document(text=text, id_="calloway-venn-2031", metadata={"file_name": DOCUMENT.name})
    nodes = SentenceSplitter(chunk_size=CHUNK_TOKENS, chunk_overlap=0).get_nodes_from_documents([document])
    return RetrieverQueryEngine.from_args(
        retriever=BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=2),
        llm=LocalSmolLLM(),
        node_postprocessors=[AttentionRerank(top_n=top_n, granularity="sentence"), LongContextReorder()],
        response_mode="compact",
    )


def answer(question: str = QUESTION) -> dict[str, Any]:
    """Run the query engine; returns the answer text and the cited sentences with their offsets in the file."""
    response = build_query_engine().query(question)
    spans = local_lm.node_spans(response.source_nodes)
    return {"question": question, "answer": str(response), "spans": spans}


def main() -> None:
    """Answer the question given on the command line (or the default one) and print the cited sentences."""
    local_lm.answer_from_command_line(answer, QUESTION, f"Cited sentences ({DOCUMENT.name})")


if __name__ == "__main__":
    main()
