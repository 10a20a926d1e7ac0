"""LlamaIndex `VectorStoreIndex` + `AttentionRerank`, fully offline: the README's one-liner, runnable as is.

    python examples/llamaindex_vector_index.py ["your question"]

The report is chunked (1,024-token chunks) and embedded with `AttnretEmbedding`, the all-MiniLM-L6-v2 bundled with
attnret (no hub, no API key). `index.as_query_engine(node_postprocessors=[AttentionRerank(...)])` retrieves the three
nearest chunks; `AttentionRerank` puts the chunks of the report back in document order, reads them in one context and
returns their best sentences. There is no LLM offline, so the engine gets LlamaIndex's `MockLLM` and a `NoText`
synthesizer: it answers nothing and this example prints the reranked source sentences. With a real LLM, pass it as
`llm=` and drop `response_synthesizer=` to get an answer written from those sentences.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.query_engine import BaseQueryEngine
from llama_index.core.response_synthesizers.no_text import NoText
from llama_index.core.schema import TextNode

from llamaindex_attnret import AttentionRerank, AttnretEmbedding

HERE = Path(__file__).resolve().parent
DOCUMENT = HERE / "data" / "calloway_venn_annual_report.txt"
QUESTION = "In which town was the first Kestrel seismometer prototype built?"
CHUNK_TOKENS = 1024
SIMILARITY_TOP_K = 3

logger = logging.getLogger(__name__)


def build_index(embed_model: AttnretEmbedding | None = None) -> VectorStoreIndex:
    """The report in an in-memory vector index, embedded offline (the bundled MiniLM unless given another)."""
    text = DOCUMENT.read_text(encoding="utf-8")
    document = Document(text=text, id_="calloway-venn-2031", metadata={"file_name": DOCUMENT.name})
    return VectorStoreIndex.from_documents(
        [document],
        embed_model=embed_model or AttnretEmbedding(),
        transformations=[SentenceSplitter(chunk_size=CHUNK_TOKENS, chunk_overlap=0)],
    )


def build_query_engine(index: VectorStoreIndex | None = None, top_n: int = 5) -> BaseQueryEngine:
    """Vector retrieval of the nearest chunks, then their `top_n` best sentences by `AttentionRerank`; no LLM."""
    index = index or build_index()
    llm = MockLLM()  # no LLM offline; the `no_text` response mode would still ask Settings.llm (OpenAI) for one
    return index.as_query_engine(
        llm=llm,
        similarity_top_k=SIMILARITY_TOP_K,
        node_postprocessors=[AttentionRerank(top_n=top_n, granularity="sentence")],
        response_synthesizer=NoText(llm=llm),
    )


def retrieve(question: str = QUESTION, engine: BaseQueryEngine | None = None) -> dict[str, Any]:
    """Run the query engine; returns the question and the reranked sentences with their offsets in the file."""
    response = (engine or build_query_engine()).query(question)
    sentences = [
        {
            "n": n,
            "text": item.node.get_content(),
            "score": item.score,
            "start": item.node.start_char_idx if isinstance(item.node, TextNode) else None,
            "end": item.node.end_char_idx if isinstance(item.node, TextNode) else None,
            "reasons": item.node.metadata.get("attnret_reasons", []),
        }
        for n, item in enumerate(response.source_nodes, start=1)
    ]
    return {"question": question, "sentences": sentences}


def main() -> None:
    """Print the reranked sentences for the question on the command line (or the default one)."""
    logging.basicConfig(level=logging.WARNING)
    result = retrieve(sys.argv[1] if len(sys.argv) > 1 else QUESTION)
    print(f"Q: {result['question']}\n\nReranked sentences ({DOCUMENT.name}):")
    for item in result["sentences"]:
        print(
            f"[{item['n']}] {item['score']:.3f} chars {item['start']}-{item['end']} {item['reasons']}: {item['text']}"
        )


if __name__ == "__main__":
    main()
