"""Lexical (BM25) view: the index, its edge cases, and its place among the retriever's views."""

from __future__ import annotations

import numpy as np
import pytest

from shared_core import AttentionRetriever
from shared_core.config import LexicalConfig
from shared_core.views.lexical import LexicalIndex, bm25_scores

UNITS = ["John went home.", "Mary got the milk there.", "Nothing here.", "The milk was sour."]


def test_index_scores_units_that_share_the_query_terms() -> None:
    index = LexicalIndex.build(UNITS, LexicalConfig())
    scores = index.score("Who got the milk?")
    assert scores.shape == (4,) and scores.dtype == np.float64
    assert int(np.argmax(scores)) == 1  # 'got' and 'milk'
    assert scores[3] > 0 and scores[0] == scores[2] == 0
    assert np.allclose(scores, bm25_scores("Who got the milk?", UNITS))


def test_query_without_known_terms_scores_zero_and_empty_documents_score_nothing() -> None:
    index = LexicalIndex.build(UNITS, LexicalConfig())
    assert index.score("the of and").tolist() == [0.0] * 4  # stop words only
    assert index.score("zebra").tolist() == [0.0] * 4  # not in the document
    assert LexicalIndex.build([], LexicalConfig()).score("milk").shape == (0,)
    assert LexicalIndex.build(["It is.", "a b"], LexicalConfig()).score("is it").tolist() == [0.0, 0.0]
    with pytest.raises(TypeError):
        LexicalIndex.build("one string", LexicalConfig())


def test_parameters_change_the_scores() -> None:
    texts = ["milk", "milk milk milk and more words here to make it long"]
    flat = LexicalIndex.build(texts, LexicalConfig(b=0.0)).score("milk")
    normalised = LexicalIndex.build(texts, LexicalConfig(b=1.0)).score("milk")
    assert normalised[0] / normalised[1] > flat[0] / flat[1]  # length normalisation favours the short unit
    with pytest.raises(ValueError):
        LexicalConfig(b=2.0)


@pytest.mark.slow
def test_retriever_fuses_the_lexical_view_and_can_switch_it_off() -> None:
    doc = "\n\n".join(UNITS)
    r = AttentionRetriever({"entities": {"enabled": False}})
    hits = r.score_units("Who got the milk?", doc)
    assert [h.scores["lexical"] for h in hits] == pytest.approx(bm25_scores("Who got the milk?", UNITS).tolist())
    only_lexical = AttentionRetriever(
        {"entities": {"enabled": False}, "fusion": {"weights": {"attention": 0, "dense": 0, "lexical": 1}}}
    )
    assert only_lexical.retrieve("Who got the milk?", [doc], top_k=1)[0].text == UNITS[1]
    off = AttentionRetriever({"entities": {"enabled": False}, "lexical": {"enabled": False}})
    assert all("lexical" not in h.scores for h in off.score_units("Who got the milk?", doc))
    spans = r.score_spans("Who got the milk?", doc, [(0, len(UNITS[0])), (doc.index("Mary"), doc.index("Mary") + 24)])
    assert spans[1] > spans[0]
