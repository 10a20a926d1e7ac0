"""Explanation data and HTML page: every unit once, escaping, hover scores, entity links, JSON round trip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared_core.config import EntitiesConfig
from shared_core.document import Document, Hit, Unit
from shared_core.tasks.explain import Explanation, build_explanation, render_html, write_html
from shared_core.views.entities import EntityIndex, expand, load_nlp

SENTENCES = [
    "Sandra Smith got the milk.",
    "The weather stayed mild <script>alert('x')</script> & calm.",
    "John went to the office.",
    "Sandra went to the garden.",
]
QUERY = "Where is the <milk>?"


@pytest.fixture(scope="module")
def nlp() -> Any:
    """The default spaCy pipeline, loaded once for this module."""
    return load_nlp()


def _document(doc_id: str, sentences: list[str]) -> tuple[Document, list[Unit]]:
    """A document of space-joined sentences with its units (offsets computed while joining)."""
    text, units = "", []
    for sentence in sentences:
        if text:
            text += " "
        units.append(Unit(len(units), len(text), len(text) + len(sentence), sentence, 0))
        text += sentence
    return Document(text=text, id=doc_id), units


def _scored(
    doc_pos: int, document: Document, units: list[Unit], attention: list[float], dense: list[float]
) -> tuple[np.ndarray, list[Hit]]:
    """Per-unit Hits with attention and dense scores and their mean as the fused score."""
    fused = (np.array(attention) + np.array(dense)) / 2
    hits = [
        Hit(
            document_id=str(document.id),
            document_index=doc_pos,
            start=u.start,
            end=u.end,
            text=u.text,
            score=float(fused[u.index]),
            scores={"attention": attention[u.index], "dense": dense[u.index]},
            reasons=[],
            unit_index=u.index,
        )
        for u in units
    ]
    return fused, hits


@pytest.fixture(scope="module")
def explanation(nlp: Any) -> Explanation:
    """Two documents: a story whose garden sentence comes in through the entity Sandra, and a short second one."""
    doc_a, units_a = _document("story <1>", SENTENCES)
    doc_b, units_b = _document("other", ["Paris is large.", "Nothing else."])
    fused_a, scored_a = _scored(0, doc_a, units_a, [0.9, 0.2, 0.1, 0.0], [0.8, 0.1, 0.3, 0.1])
    _fused_b, scored_b = _scored(1, doc_b, units_b, [0.3, 0.0], [0.2, 0.1])
    index_a = EntityIndex.build(doc_a.text, units_a, nlp)
    index_b = EntityIndex.build(doc_b.text, units_b, nlp)
    direct = scored_a[0]
    direct.reasons = ["attention", "dense"]
    expansions = expand(index_a, fused_a, units_a, EntitiesConfig(top_entities=1), exclude={0})
    assert [e.unit_index for e in expansions] == [3]
    pulled = scored_a[3]
    pulled.reasons = [f"entity:{index_a.display_name(expansions[0].entity)}"]
    hits = [direct, pulled, scored_b[0]]
    return build_explanation(QUERY, [doc_a, doc_b], [scored_a, scored_b], hits, [index_a, index_b])


_VOID = frozenset({"meta", "br", "img", "link", "input", "hr", "wbr"})


class _UnitText(HTMLParser):
    """Collects the text inside each `span.u` (entity links included, rank badges not) and every element id."""

    def __init__(self) -> None:
        super().__init__()
        self.units: dict[str, str] = {}
        self.ids: list[str] = []
        self.titles: dict[str, str] = {}
        self.entity_links: list[dict[str, str | None]] = []
        self._stack: list[tuple[str | None, bool]] = []  # (enclosing unit id, inside a rank badge)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if attributes.get("id"):
            self.ids.append(str(attributes["id"]))
        unit_id, in_badge = self._stack[-1] if self._stack else (None, False)
        if tag == "span" and "u" in classes:
            unit_id = str(attributes["id"])
            self.units[unit_id] = ""
            self.titles[unit_id] = str(attributes.get("title"))
        if tag == "a" and "ent" in classes:
            self.entity_links.append(attributes)
        if tag in _VOID:
            return
        self._stack.append((unit_id, in_badge or "rank" in classes))

    def handle_endtag(self, tag: str) -> None:
        if self._stack:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        if self._stack and self._stack[-1][0] is not None and not self._stack[-1][1]:
            self.units[str(self._stack[-1][0])] += data


def _parse(page: str) -> _UnitText:
    parser = _UnitText()
    parser.feed(page)
    return parser


def test_every_unit_rendered_once_with_its_exact_text(explanation: Explanation) -> None:
    parsed = _parse(render_html(explanation))
    expected = {
        f"d{d}-u{u.index}": doc.text[u.start : u.end] for d, doc in enumerate(explanation.documents) for u in doc.units
    }
    assert parsed.units == expected
    assert len(parsed.ids) == len(set(parsed.ids))


def test_document_text_is_escaped(explanation: Explanation) -> None:
    page = render_html(explanation)
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; calm." in page
    assert "story &lt;1&gt;" in page and "Where is the &lt;milk&gt;?" in page
    assert page.count("<script>") == 1  # only the page's own inline script
    assert "http://" not in page and "https://" not in page  # self-contained, nothing fetched


def test_hover_titles_carry_per_view_scores_and_reasons(explanation: Explanation) -> None:
    parsed = _parse(render_html(explanation))
    assert parsed.titles["d0-u0"].splitlines()[0] == "fused 0.850 | attention 0.900 | dense 0.800"
    assert "hit #1" in parsed.titles["d0-u0"] and "reasons: attention, dense" in parsed.titles["d0-u0"]
    assert "reasons: entity:Sandra Smith" in parsed.titles["d0-u3"] and "hit #2" in parsed.titles["d0-u3"]
    assert "hit #" not in parsed.titles["d0-u1"]


def test_entity_mentions_are_linked(explanation: Explanation) -> None:
    page = render_html(explanation)
    parsed = _parse(page)
    sandra = [a for a in parsed.entity_links if a.get("data-entity") == "sandra smith"]
    assert len(sandra) == 2 and {a.get("data-doc") for a in sandra} == {"0"}
    assert any(a.get("data-entity") == "paris" and a.get("data-doc") == "1" for a in parsed.entity_links)
    assert ">Sandra Smith</a>" in page and ">Sandra</a>" in page


def test_shading_follows_the_fused_score(explanation: Explanation) -> None:
    page = render_html(explanation)
    alpha = {}
    for unit_id in ("d0-u0", "d0-u3"):
        fragment = page.split(f'id="{unit_id}"', 1)[1]
        alpha[unit_id] = float(fragment.split("rgba(255,165,0,", 1)[1].split(")", 1)[0])
    assert alpha["d0-u0"] > alpha["d0-u3"]


def test_top_hits_listed_with_reasons(explanation: Explanation) -> None:
    page = render_html(explanation)
    hits_part = page.split('<ol class="hits">', 1)[1].split("</ol>", 1)[0]
    assert hits_part.count("<li>") == 3
    assert hits_part.index("Sandra Smith got the milk.") < hits_part.index("Sandra went to the garden.")
    assert 'href="#d0-u3"' in hits_part and 'href="#d1-u0"' in hits_part
    assert "entity:Sandra Smith" in hits_part


def test_explanation_data_and_json_round_trip(explanation: Explanation) -> None:
    data = json.loads(explanation.to_json())
    assert data["query"] == QUERY
    assert [d["id"] for d in data["documents"]] == ["story <1>", "other"]
    first = data["documents"][0]["units"][0]
    assert set(first) >= {"index", "start", "end", "score", "scores", "reasons", "entities"}
    assert first["entities"][0]["entity"] == "sandra smith" and first["hit_rank"] == 1
    assert data["documents"][0]["entities"]["sandra smith"]["units"] == [0, 3]
    assert [h["document_index"] for h in data["hits"]] == [0, 0, 1]
    again = Explanation.from_json(explanation.to_json())
    assert again == explanation
    assert render_html(again) == render_html(explanation)


def test_build_explanation_checks_its_inputs(nlp: Any) -> None:
    doc, units = _document("a", ["One.", "Two."])
    _fused, scored = _scored(0, doc, units, [0.1, 0.2], [0.3, 0.4])
    with pytest.raises(ValueError, match="one scored-unit list"):
        build_explanation("q", [doc], [scored, scored], [], [None])
    bad_hit = Hit("a", 3, 0, 4, "One.", 1.0)
    with pytest.raises(ValueError, match="document_index 3"):
        build_explanation("q", [doc], [scored], [bad_hit], [None])
    plain = build_explanation("q", [doc], [scored], [], [None])
    assert all(u.entities == [] for u in plain.documents[0].units)
    assert "No hits." in render_html(plain)


def test_write_html(explanation: Explanation, tmp_path: Path) -> None:
    path = write_html(explanation, tmp_path / "report.html")
    assert path.read_text(encoding="utf-8") == render_html(explanation)


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install -y chromium)")
def test_page_renders_in_headless_chromium(explanation: Explanation, tmp_path: Path) -> None:
    page = write_html(explanation, tmp_path / "report.html")
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_explain_html.sh"
    shot = tmp_path / "shot.png"
    subprocess.run(["bash", str(script), str(page), str(shot)], check=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400
    # the header colour (#263445) and amber shading must both be on screen
    assert np.any(np.all(np.abs(pixels - np.array([0x26, 0x34, 0x45])) < 6, axis=-1))
    amber = (pixels[..., 0] > 240) & (pixels[..., 1] > 150) & (pixels[..., 1] < 235) & (pixels[..., 2] < 170)
    assert amber.sum() > 50
