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
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.postprocessor import LongContextReorder
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.retrievers.bm25 import BM25Retriever

from llamaindex_attnret import AttentionRerank

HERE = Path(__file__).resolve().parent
DOCUMENT = HERE / "data" / "calloway_venn_annual_report.txt"
QUESTION = "In which town was the first Kestrel seismometer prototype built?"
CHUNK_TOKENS = 1536

logger = logging.getLogger(__name__)


class LocalSmolLLM(CustomLLM):
    """Greedy completions from attnret's offline default LM (SmolLM2-135M-Instruct) through its chat template."""

    max_new_tokens: int = Field(default=48, gt=0, description="Longest completion in tokens.")
    _loaded: Any = PrivateAttr(default=None)

    @property
    def metadata(self) -> LLMMetadata:
        """Window and output size, so LlamaIndex packs prompts that fit."""
        return LLMMetadata(context_window=8192, num_output=self.max_new_tokens, model_name="SmolLM2-135M-Instruct")

    def _model(self) -> Any:
        if self._loaded is None:
            from shared_core.config import ModelConfig
            from shared_core.models.loading import load_model

            self._loaded = load_model(ModelConfig())
        return self._loaded

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Greedy completion of `prompt`."""
        import torch

        loaded = self._model()
        tokenizer = loaded.tokenizer
        messages = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = {k: v.to(loaded.device) for k, v in ids.items()}
        with torch.no_grad():
            out = loaded.model.generate(
                **ids, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
            )
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
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
    spans = [
        {
            "n": n,
            "text": item.node.get_content(),
            "score": item.score,
            "start": item.node.start_char_idx,
            "end": item.node.end_char_idx,
            "reasons": item.node.metadata.get("attnret_reasons", []),
        }
        for n, item in enumerate(response.source_nodes, start=1)
    ]
    return {"question": question, "answer": str(response), "spans": spans}


def main() -> None:
    """Answer the question given on the command line (or the default one) and print the cited sentences."""
    logging.basicConfig(level=logging.WARNING)
    result = answer(sys.argv[1] if len(sys.argv) > 1 else QUESTION)
    print(f"Q: {result['question']}\nA: {result['answer']}\n\nCited sentences ({DOCUMENT.name}):")
    for span in result["spans"]:
        print(f"[{span['n']}] chars {span['start']}-{span['end']} {span['reasons']}: {span['text']}")


if __name__ == "__main__":
    main()
