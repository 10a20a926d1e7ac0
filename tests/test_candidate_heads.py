"""Candidate-set head features rebuild the product's candidate scores exactly, and the CV and chunk sets are sound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.candidate_heads import Fuser, chunk_candidates, cross_validate, main, read_features
from benchmarks.rerank import BM25Corpus, load
from shared_core import AttentionRetriever
from shared_core.evaluation import load_real
from shared_core.tasks.candidates import Candidate


@pytest.mark.integration
def test_captured_heads_rebuild_the_products_attention_and_fused_scores(
    retriever: AttentionRetriever, shared_data: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("{}\n", encoding="utf-8")  # the tests' model and its shipped head set
    out = tmp_path / "features.npz"
    selection = retriever.head_selection
    main(["capture", "--config", str(config), "--max-layer", str(selection.deepest), "--n", "1", "--out", str(out)])
    meta, records = read_features(out)
    assert [r["setting"] for r in records] == ["top20", "own"] and meta["max_layer"] == selection.deepest
    num_heads = int(meta["num_heads"])
    heads, weights = [], []
    for layer, members in selection.per_layer.items():
        members = members if members is not None else tuple(range(num_heads))
        layer_weights = selection.weights[layer] if selection.weights else (1.0,) * len(members)
        heads += [layer * num_heads + h for h in members]
        weights += list(layer_weights)
    corpus, queries = load(shared_data / "hotpotqa" / "hotpot_dev_distractor_100.json")
    bm25 = BM25Corpus(corpus)
    fuser = Fuser(retriever.fusion.candidates.view_weights)
    for record in records:
        paragraphs, _ = bm25.candidates(queries[0], record["setting"])
        assert record["relevant"].tolist() == [p.title in queries[0].gold for p in paragraphs]
        retriever.clear_cache()
        hits = retriever.score_candidates(queries[0].question, [Candidate(text=p.text) for p in paragraphs])
        attention = fuser.attention(record, heads, np.asarray(weights))
        np.testing.assert_allclose(attention, [h.scores["attention_raw"] for h in hits], rtol=1e-4, atol=1e-5)
        fused = fuser.fused(record, heads, np.asarray(weights))
        np.testing.assert_allclose(fused, [h.scores["fused"] for h in hits], rtol=1e-4, atol=1e-5)


def test_cross_validation_of_a_fixed_head_set_is_the_plain_mean() -> None:
    rng = np.random.default_rng(0)
    records = [
        {
            "question": q,
            "setting": setting,
            "x": rng.normal(size=(3, 6)),
            "relevant": np.array([True, False, False, True, False, False]),
            "n_gold": 2,
            "dense_raw": rng.uniform(size=6).tolist(),
            "lexical_share": rng.uniform(size=6).tolist(),
        }
        for q in range(7)
        for setting in ("top20", "own")
    ]
    fuser = Fuser({"attention": 1.0, "dense": 0.5, "lexical": 2.0})
    fixed = lambda _records: ([0, 2], np.array([0.25, 0.75]))  # noqa: E731
    (cv,) = cross_validate(records, fixed, [fuser], folds=3, seed=0)
    assert cv == pytest.approx(fuser.ndcg(records, [0, 2], np.array([0.25, 0.75])))
    seen: list[set[str]] = []

    def method(train: list[dict]) -> tuple[list[int], np.ndarray]:
        seen.append({r["setting"] for r in train})
        return [0], np.array([1.0])

    cross_validate(records, method, [fuser], folds=3, seed=0, data={"own"})
    assert seen == [{"own"}] * 3  # the method only ever trains on the chosen sets


def test_chunk_candidates_are_exact_sibling_chunks_with_their_gold(
    retriever: AttentionRetriever, shared_data: Path
) -> None:
    ex = load_real("covidqa", split="held-in", n_documents=1, per_document=1)[0]
    cands, relevant = chunk_candidates(ex, retriever, words=120, top=20)
    text = ex.documents[0]
    units = retriever.units(text)
    assert len(cands) == 20 and len(relevant) == 20 and any(relevant)
    starts = [c.start for c in cands]
    assert starts == sorted(starts)  # in document order, each an exact slice of its source
    for c, r in zip(cands, relevant, strict=True):
        assert c.source == ex.document_id and text[c.start : c.start + len(c.text)] == c.text
        end = c.start + len(c.text)
        inside = [u for u in units if c.start <= u.start and u.end <= end]
        assert inside[0].start == c.start and inside[-1].end == end  # whole sentences
        assert len(c.text.split()) <= 120 or len(inside) == 1  # longer only when one sentence is
        overlaps = any(g.start < c.start + len(c.text) and c.start < g.end for g in ex.gold)
        assert r == overlaps
