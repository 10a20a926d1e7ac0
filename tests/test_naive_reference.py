"""The `output_attentions` reference agrees with the no-n×n capture, and refuses what would not fit."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.naive import DoesNotFit, NaiveAttentionRetriever, naive_gb
from shared_core import AttentionRetriever

DOC = (
    "Mary moved to the bathroom. John went to the hallway. The weather was mild that spring. "
    "Daniel travelled to the office. Mary picked up the football there. Sandra journeyed to the garden. "
    "John went back to the kitchen."
)
CONFIG = {
    "attention": {"heads": "all"},
    "dense": {"enabled": False},
    "lexical": {"enabled": False},
    "entities": {"enabled": False},
}


def _pair(calibration: bool = True) -> tuple[AttentionRetriever, NaiveAttentionRetriever]:
    config = {**CONFIG, "attention": {"heads": "all", "calibration": calibration}}
    return AttentionRetriever(config), NaiveAttentionRetriever(config)  # one model object, shared by both


@pytest.mark.parametrize("calibration", [True, False])
def test_naive_maps_give_the_capture_scores(calibration: bool) -> None:
    fast, naive = _pair(calibration)
    a = [h.score for h in fast.score_units("Where is the football?", DOC)]
    b = [h.score for h in naive.score_units("Where is the football?", DOC)]
    assert len(a) == 7
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert np.argmax(a) == np.argmax(b)


def test_model_attention_is_restored_after_the_reference() -> None:
    fast, naive = _pair()
    naive.score_units("Where is Mary?", DOC)
    assert fast.model.model.config._attn_implementation == "attnret"
    fast.score_units("Where is Mary?", DOC)  # the shared model still captures through attnret


def test_budget_refuses_maps_that_would_not_fit() -> None:
    tiny = NaiveAttentionRetriever(CONFIG, budget_gb=1e-4)
    with pytest.raises(DoesNotFit, match="GB of attention maps"):
        tiny.score_units("Where is Mary?", DOC)
    assert naive_gb(1000) == pytest.approx(30 * 9 * 1000**2 * 4 / 2**30)
