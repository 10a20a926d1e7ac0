"""A view registered from outside the package, through the public protocol only, is computed and fused."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from shared_core import AttentionRetriever, Document, Unit
from shared_core.views import View, register_view, registered_views, unregister_view

STORY = (
    "Mary moved to the bathroom. John went to the hallway. Sandra moved to the garden. "
    "Daniel travelled to the office. Bill picked up the apple. Fred went to the kitchen."
)


class KeywordView:
    """Scores 1 for units holding a configured word: a stand-in for a cross-encoder or late-interaction view."""

    name = "keyword"

    def __init__(self, word: str) -> None:
        self.word = word
        self.prepared = 0

    def prepare(self, document: Document, units: Sequence[Unit], reuse: tuple[int, Any] | None = None) -> Any:
        self.prepared += 1
        return np.array([float(self.word in u.text.lower()) for u in units])

    def score(self, queries: Sequence[str], document: Document, units: Sequence[Unit], state: Any) -> list[np.ndarray]:
        return [state.copy() for _ in queries]


@pytest.fixture
def keyword_view() -> Iterator[list[KeywordView]]:
    built: list[KeywordView] = []

    def factory(retriever: AttentionRetriever, options: dict[str, Any]) -> View:
        view = KeywordView(str(options["word"]))
        built.append(view)
        return view

    register_view("keyword", factory)
    yield built
    unregister_view("keyword")


def test_a_registered_view_is_fused_with_no_change_to_core_files(keyword_view: list[KeywordView]) -> None:
    assert "keyword" in registered_views()
    config = {
        "views": {"keyword": {"word": "kitchen"}},
        "fusion": {"weights": {"attention": 1, "dense": 0.5, "lexical": 2, "keyword": 50}},
        "entities": {"enabled": False},
    }
    r = AttentionRetriever(config)
    hits = r.retrieve("Who picked up the apple?", [STORY], top_k=3)
    assert hits[0].text == "Fred went to the kitchen."  # the plug-in's weight decides the ranking
    assert hits[0].scores["keyword"] == 1.0 and "keyword" in hits[0].reasons
    assert all("keyword" in h.scores for h in r.score_units("Who picked up the apple?", STORY))
    r.score_units("Where is Mary?", STORY)
    assert keyword_view[0].prepared == 1  # prepared once per document, whatever the number of queries
    base = AttentionRetriever({"entities": {"enabled": False}}).retrieve("Who picked up the apple?", [STORY], 1)
    assert base[0].text != "Fred went to the kitchen." and "keyword" not in base[0].scores


def test_plugin_view_errors_are_clear(keyword_view: list[KeywordView]) -> None:
    with pytest.raises(ValueError, match="no view named 'nope' is registered"):
        AttentionRetriever({"views": {"nope": {}}})
    with pytest.raises(ValueError, match="already registered"):
        register_view("keyword", lambda r, o: KeywordView("x"))
    with pytest.raises(ValueError, match="built-in"):
        register_view("dense", lambda r, o: KeywordView("x"))
    r = AttentionRetriever({"views": {"keyword": {"word": "apple"}}})  # no fusion weight for it
    with pytest.raises(ValueError, match="no fusion weight for view"):
        r.retrieve("Who picked up the apple?", [STORY])


def test_a_view_returning_bad_scores_is_refused(keyword_view: list[KeywordView]) -> None:
    class Broken(KeywordView):
        def score(self, queries: Sequence[str], document: Document, units: Sequence[Unit], state: Any) -> list:
            return [np.full(len(units), np.nan) for _ in queries]

    register_view("broken", lambda r, o: Broken("x"))
    try:
        r = AttentionRetriever({"views": {"broken": {}}, "fusion": {"weights": {"attention": 1, "broken": 1}}})
        with pytest.raises(ValueError, match="view 'broken' must return one finite score per unit"):
            r.score_units("Who picked up the apple?", STORY)
    finally:
        unregister_view("broken")
