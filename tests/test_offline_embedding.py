"""The bundled all-MiniLM-L6-v2 as an offline embedding: LlamaIndex's `AttnretEmbedding`, and Haystack's own
sentence-transformers embedders given `bundled_embedding_model()`; real models, real indexes and pipelines."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import numpy as np
import pytest
from haystack import Document as HaystackDocument
from haystack import Pipeline
from haystack.components.preprocessors import DocumentSplitter
from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever
from haystack.components.writers import DocumentWriter
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack_integrations.components.embedders.sentence_transformers import (
    SentenceTransformersDocumentEmbedder,
    SentenceTransformersTextEmbedder,
)
from llama_index.core import Document as LlamaDocument
from llama_index.core import VectorStoreIndex

import haystack_attnret
import llamaindex_attnret
from haystack_attnret import AttentionRanker
from llamaindex_attnret import AttnretEmbedding

REPORT = (Path(__file__).resolve().parents[1] / "examples" / "data" / "calloway_venn_annual_report.txt").read_text(
    encoding="utf-8"
)
QUESTION = "Where were the Kestrel field trials run?"
ANSWER = "The Kestrel field trials were run from a rented farmhouse outside the town of Dunmore"
CAT = "A cat is sitting on the mat."
KITTEN = "A small kitten sits on a rug."
REVENUE = "Quarterly revenue rose by eleven percent."


@pytest.fixture(scope="module")
def embedding() -> AttnretEmbedding:
    """The LlamaIndex embedding on the bundled model, loaded once for this module."""
    return AttnretEmbedding()


def test_both_packages_locate_the_same_bundled_folder() -> None:
    folder = Path(haystack_attnret.bundled_embedding_model())
    assert folder == Path(llamaindex_attnret.bundled_embedding_model())
    assert (folder / "modules.json").is_file()


def test_llamaindex_embedding_has_384_unit_length_dimensions(embedding: AttnretEmbedding) -> None:
    assert embedding.dimension == 384
    assert embedding.model_name == "all-MiniLM-L6-v2"
    for vector in (embedding.get_query_embedding(CAT), embedding.get_text_embedding(KITTEN)):
        assert len(vector) == 384
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_llamaindex_embedding_puts_similar_texts_closer(embedding: AttnretEmbedding) -> None:
    cat, kitten, revenue = (np.array(v) for v in embedding.get_text_embedding_batch([CAT, KITTEN, REVENUE]))
    assert cat @ kitten > cat @ revenue + 0.3
    assert embedding.similarity(embedding.get_query_embedding("a kitten on a rug"), list(kitten)) > 0.6


def test_llamaindex_embedding_batch_equals_single_and_async_equals_sync(embedding: AttnretEmbedding) -> None:
    texts = [CAT, KITTEN, REVENUE, REPORT[:2000]]
    batch = np.array(embedding.get_text_embedding_batch(texts))
    single = np.array([embedding.get_text_embedding(t) for t in texts])
    np.testing.assert_allclose(batch, single, atol=1e-5)
    np.testing.assert_allclose(asyncio.run(embedding.aget_text_embedding_batch(texts)), batch, atol=1e-5)
    np.testing.assert_allclose(asyncio.run(embedding.aget_query_embedding(CAT)), single[0], atol=1e-5)


def test_llamaindex_embedding_takes_a_folder_and_rejects_a_missing_one(embedding: AttnretEmbedding) -> None:
    by_folder = AttnretEmbedding(model_name=llamaindex_attnret.bundled_embedding_model(), normalize=False)
    assert by_folder.dimension == 384
    np.testing.assert_allclose(by_folder.get_query_embedding(CAT), embedding.get_query_embedding(CAT), atol=1e-5)
    with pytest.raises((OSError, ValueError)):
        AttnretEmbedding(model_name=str(Path(__file__).parent / "no-such-model-folder"))


@pytest.mark.integration
def test_llamaindex_vector_store_index_retrieves_with_the_offline_embedding(embedding: AttnretEmbedding) -> None:
    documents = [LlamaDocument(text=text) for text in (CAT, REVENUE, "Trains to Vienna leave from platform 4.")]
    index = VectorStoreIndex.from_documents(documents, embed_model=embedding)
    hits = index.as_retriever(similarity_top_k=2).retrieve("Where is the kitten?")
    assert hits[0].node.get_content() == CAT


def test_haystack_embedders_run_offline_on_the_bundled_folder(embedding: AttnretEmbedding) -> None:
    model = haystack_attnret.bundled_embedding_model()
    doc_embedder = SentenceTransformersDocumentEmbedder(model=model, local_files_only=True, progress_bar=False)
    text_embedder = SentenceTransformersTextEmbedder(model=model, local_files_only=True, progress_bar=False)
    doc_embedder.warm_up()
    text_embedder.warm_up()
    docs = doc_embedder.run(documents=[HaystackDocument(content=CAT), HaystackDocument(content=REVENUE)])["documents"]
    query = np.array(text_embedder.run(text=KITTEN)["embedding"])
    vectors = np.array([doc.embedding for doc in docs])
    assert vectors.shape == (2, 384) and query.shape == (384,)
    assert int(np.argmax(vectors @ query)) == 0  # the cat, not the revenue
    # the same model as the LlamaIndex embedding: the same direction
    np.testing.assert_allclose(query / np.linalg.norm(query), embedding.get_query_embedding(KITTEN), atol=1e-5)


@pytest.mark.integration
def test_haystack_embedding_pipeline_with_attention_ranker() -> None:
    """Indexing (split -> embed -> write) and query (embed -> embedding retriever -> AttentionRanker) pipelines."""
    model = haystack_attnret.bundled_embedding_model()
    store = InMemoryDocumentStore()
    indexing = Pipeline()
    indexing.add_component("splitter", DocumentSplitter(split_by="passage", split_length=4, split_overlap=0))
    indexing.add_component(
        "embedder", SentenceTransformersDocumentEmbedder(model=model, local_files_only=True, progress_bar=False)
    )
    indexing.add_component("writer", DocumentWriter(document_store=store))
    indexing.connect("splitter.documents", "embedder.documents")
    indexing.connect("embedder.documents", "writer.documents")
    written = indexing.run({"splitter": {"documents": [HaystackDocument(content=REPORT)]}})["writer"]
    assert written["documents_written"] == store.count_documents() > 5

    query = Pipeline()
    query.add_component(
        "embedder", SentenceTransformersTextEmbedder(model=model, local_files_only=True, progress_bar=False)
    )
    query.add_component("retriever", InMemoryEmbeddingRetriever(document_store=store, top_k=3))
    query.add_component("ranker", AttentionRanker(top_k=3, granularity="sentence"))
    query.connect("embedder.embedding", "retriever.query_embedding")
    query.connect("retriever.documents", "ranker.documents")
    result = query.run(
        {"embedder": {"text": QUESTION}, "ranker": {"query": QUESTION}}, include_outputs_from={"retriever"}
    )

    retrieved = result["retriever"]["documents"]
    assert len(retrieved) == 3
    assert all(doc.embedding is not None and len(doc.embedding) == 384 for doc in store.filter_documents())
    ranked = result["ranker"]["documents"]
    assert len(ranked) == 3
    assert ranked[0].content is not None and ANSWER in ranked[0].content
    assert ranked[0].score is not None and ranked[0].score >= max(doc.score or 0.0 for doc in ranked[1:])
