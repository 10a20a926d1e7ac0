"""Candidate-set scoring (shared_core.tasks.candidates): prompt layout, absolute scales, and real-model reranking."""

from __future__ import annotations

import numpy as np
import pytest

from shared_core import AttentionRetriever
from shared_core.tasks import candidates as cand
from shared_core.tasks.candidates import Candidate, ViewScales, coerce_candidates, join, prompt_order, windows

QUERY = "Where did Mary leave the brass key?"
RELEVANT = "Mary left the brass key on the desk in the office."
OTHERS = [
    "The lighthouse keeper painted the door green.",
    "Ships passed the harbour at dawn while gulls circled.",
    "John travelled to the garden where the roses were in bloom.",
]
IRRELEVANT = "The weather in the valley was warm and the river ran low."


# ------------------------------------------------------------------ layout and scales (no model)
def test_prompt_order_groups_sources_in_document_order() -> None:
    cs = [
        Candidate("c", source="a", start=40),
        Candidate("x"),
        Candidate("b", source="a", start=10),
        Candidate("y", source="b"),
        Candidate("d", source="a"),
        Candidate("z", source="b", start=0),
    ]
    relevance = [0.1, 0.5, 0.9, 0.2, 0.0, 0.3]
    # sources by ascending best relevance ("b" 0.3, the lone "x" 0.5, "a" 0.9: the most relevant nearest the query),
    # each source's candidates by start (the one without a start last)
    assert prompt_order(cs, relevance) == [5, 3, 1, 2, 0, 4]
    assert prompt_order([Candidate("q"), Candidate("r"), Candidate("p")]) == [2, 0, 1]  # no relevance: by text


def test_prompt_order_is_independent_of_the_input_order() -> None:
    cs = [Candidate(t, source=s, start=k) for t, s, k in [("u", "a", 5), ("v", None, None), ("w", "a", 1)]]
    cs += [Candidate("t"), Candidate("s", source="b", start=2)]
    relevance = [0.4, 0.4, 0.1, 0.2, 0.4]  # ties broken by the texts
    read = [cs[i].text for i in prompt_order(cs, relevance)]
    for perm in ([4, 3, 2, 1, 0], [2, 0, 4, 1, 3], [1, 4, 0, 3, 2]):
        assert [cs[perm[i]].text for i in prompt_order([cs[i] for i in perm], [relevance[i] for i in perm])] == read
    assert read == ["t", "s", "v", "w", "u"]


def test_order_relevance_fuses_the_ranks_of_both_views() -> None:
    lexical = np.array([0.9, 0.1, 0.5, 0.5])
    cosine = np.array([0.1, 0.8, 0.7, 0.3])
    fused = cand.order_relevance(lexical, cosine)
    k = cand.RRF_K
    # ranks: lexical 1, 4, 2, 2 (ties share the best rank); cosine 4, 1, 2, 3
    np.testing.assert_allclose(fused, 1 / (k + np.array([1, 4, 2, 2])) + 1 / (k + np.array([4, 1, 2, 3])))
    assert int(np.argmax(fused)) == 2  # second in both beats first in one and last in the other
    np.testing.assert_allclose(cand.order_relevance(lexical, None), 1 / (k + np.array([1, 4, 2, 2])))


def test_distinct_texts_read_one_copy_whatever_the_order() -> None:
    a, b = Candidate("same", id="1", source="y", start=3), Candidate("same", id="2", source="x", start=9)
    for given in ([a, Candidate("other"), b], [b, Candidate("other"), a]):
        read, where = cand.distinct_texts(given)
        assert read[0] == b and where == [0, 1, 0]


def test_join_spans_are_exact() -> None:
    texts = ["alpha beta", " gamma\n", "δ"]
    text, spans = join(texts)
    assert [text[a:b] for a, b in spans] == texts
    assert text.count(cand.SEPARATOR) == 2


def test_windows_fit_the_budget_and_keep_the_order() -> None:
    texts = ["a", "b", "c", "d", "e"]
    lengths = [40, 40, 40, 90, 10]
    parts = windows([4, 0, 1, 2, 3], lengths, 100, texts)
    assert [p.members for p in parts] == [(4, 0, 1), (2,), (3,)]
    for p in parts:
        assert [p.text[a:b] for a, b in p.spans] == [texts[i] for i in p.members]
    assert [p.members for p in windows([0, 1], [500, 5], 100, texts)] == [(0,), (1,)]  # an oversized one alone


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ("one text", TypeError),
        (Candidate("x"), TypeError),
        (42, TypeError),
        ([], ValueError),
        ([Candidate("ok"), 3], TypeError),
        ([Candidate("  \n")], ValueError),
        ([Candidate(None)], TypeError),  # type: ignore[arg-type]
        ([Candidate("x", start="3")], TypeError),  # type: ignore[arg-type]
    ],
)
def test_bad_candidates_are_refused(bad: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        coerce_candidates(bad)


def test_strings_are_candidates() -> None:
    assert coerce_candidates(["a", Candidate("b", id="2")]) == [Candidate("a"), Candidate("b", id="2")]


def test_view_scales_are_absolute_and_bounded() -> None:
    s = ViewScales()
    m = np.array([-3.0, 0.0, 1.0, 5.0, 1e6])
    a = s.attention(m)
    assert a[0] == a[1] == 0.0 and 0 < a[2] < a[3] < a[4] <= 1.0 and np.all(np.diff(a) >= 0)
    assert list(s.dense(np.array([-0.5, 0.25, 1.2]))) == [0.0, 0.25, 1.0]
    lex = s.lexical(np.array([0.0, 0.3, 1.0]))
    assert lex[0] == 0.0 and 0 < lex[1] < 1.0 and lex[2] == 1.0
    assert s.attention(np.array([2.0]))[0] == pytest.approx(ViewScales().attention(np.array([2.0]))[0])  # fixed


# ------------------------------------------------------------------ real model
@pytest.mark.integration
def test_relevant_first_whatever_the_order(retriever: AttentionRetriever) -> None:
    cs = [Candidate(t, id=f"s{i}", source=f"doc{i}") for i, t in enumerate([*OTHERS, RELEVANT])]
    forward = retriever.score_candidates(QUERY, cs)
    backward = retriever.score_candidates(QUERY, cs[::-1])
    for hits in (forward, backward):
        assert [h.document_index for h in hits] == list(range(len(cs)))  # input order
        scores = [h.score for h in hits]
        assert len(set(scores)) == len(scores) and all(0.0 <= s <= 1.0 for s in scores)
        best = max(hits, key=lambda h: h.score)
        assert best.text == RELEVANT and best.document_id == "s3"
        assert {"attention", "attention_raw", "dense", "lexical", "fused"} <= set(best.scores)
    # the same candidates score alike in either order (position bias stays small next to the gap)
    by_id_f = {h.document_id: h.score for h in forward}
    by_id_b = {h.document_id: h.score for h in backward}
    assert max(abs(by_id_f[k] - by_id_b[k]) for k in by_id_f) < 0.5 * (by_id_f["s3"] - min(by_id_f.values()))


@pytest.mark.integration
def test_a_single_candidate_gets_a_real_score(retriever: AttentionRetriever) -> None:
    (relevant,) = retriever.score_candidates(QUERY, [RELEVANT])
    (irrelevant,) = retriever.score_candidates(QUERY, [IRRELEVANT])
    assert 0.0 <= irrelevant.score < relevant.score <= 1.0
    assert relevant.score > 2 * irrelevant.score  # a threshold between them keeps one and drops the other
    assert relevant.scores["attention"] > irrelevant.scores["attention"]
    # the same text scores the same alone as it does in a call of its own twice (absolute, not min-max)
    assert retriever.score_candidates(QUERY, [RELEVANT])[0].score == pytest.approx(relevant.score)


@pytest.mark.integration
def test_split_windows_share_the_scale(retriever: AttentionRetriever, monkeypatch: pytest.MonkeyPatch) -> None:
    cs = [Candidate(t) for t in [*OTHERS, RELEVANT]]
    whole = retriever.score_candidates(QUERY, cs)
    monkeypatch.setattr(cand, "TEMPLATE_MARGIN", retriever.window - 40)  # room for about two candidates per window
    split = retriever.score_candidates(QUERY, cs)
    assert max(range(len(cs)), key=lambda i: split[i].score) == 3 == max(range(len(cs)), key=lambda i: whole[i].score)
    assert split[3].score > max(split[i].score for i in range(3))
    monkeypatch.undo()
    capped = retriever.score_candidates(QUERY, cs, window_tokens=30)  # the public cap splits the same way
    assert capped[3].score > max(capped[i].score for i in range(3))


@pytest.mark.integration
def test_options_are_checked(retriever: AttentionRetriever) -> None:
    with pytest.raises(ValueError, match="pooling"):
        retriever.score_candidates(QUERY, [RELEVANT], pooling="max")
    with pytest.raises(ValueError, match="orders"):
        retriever.score_candidates(QUERY, [RELEVANT], orders=3)
    with pytest.raises(ValueError, match="window_tokens"):
        retriever.score_candidates(QUERY, [RELEVANT], window_tokens=0)
    with pytest.raises(TypeError, match="window_tokens"):
        retriever.score_candidates(QUERY, [RELEVANT], window_tokens=1.5)
    with pytest.raises(TypeError, match="query"):
        retriever.score_candidates(None, [RELEVANT])  # type: ignore[arg-type]
    two = retriever.score_candidates(QUERY, [IRRELEVANT, RELEVANT], orders=2)
    assert two[1].score > two[0].score


@pytest.mark.integration
@pytest.mark.parametrize("orders", [1, 2])
def test_shuffled_candidates_score_the_same(retriever: AttentionRetriever, orders: int) -> None:
    cs = [Candidate(t, id=f"s{i}") for i, t in enumerate([*OTHERS, RELEVANT, IRRELEVANT])]
    cs += [
        Candidate("Mary put the brass key in a drawer.", id="d0", source="diary", start=0),
        Candidate("Later she forgot where the drawer was.", id="d1", source="diary", start=36),
        Candidate(RELEVANT, id="copy"),  # the same text under a second id
    ]
    given = {h.document_id: h for h in retriever.score_candidates(QUERY, cs, orders=orders)}
    assert given["copy"].score == given["s3"].score and given["copy"].scores == given["s3"].scores
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(len(cs))
        assert list(perm) != list(range(len(cs)))
        shuffled = retriever.score_candidates(QUERY, [cs[i] for i in perm], orders=orders)
        assert [h.document_id for h in shuffled] == [cs[i].id for i in perm]
        for h in shuffled:
            before = given[h.document_id]
            assert h.score == pytest.approx(before.score, abs=1e-6)
            assert h.scores.keys() == before.scores.keys()
            assert all(h.scores[k] == pytest.approx(v, abs=1e-6) for k, v in before.scores.items())
