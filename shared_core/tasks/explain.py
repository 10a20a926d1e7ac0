"""Explanations of a retrieval: per-unit scores, reasons and entity links as data, and as a self-contained HTML page."""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shared_core.document import Document, Hit, default_id
from shared_core.views.entities import EntityIndex

logger = logging.getLogger(__name__)


@dataclass
class ExplainedMention:
    """One entity mention inside a unit: entity key, display name and document char offsets."""

    entity: str
    name: str
    start: int
    end: int


@dataclass
class ExplainedUnit:
    """A unit's fused score, per-view scores, reasons and entity mentions; `hit_rank` is its 1-based rank, if a hit."""

    index: int
    start: int
    end: int
    score: float
    scores: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    entities: list[ExplainedMention] = field(default_factory=list)
    hit_rank: int | None = None


@dataclass
class ExplainedDocument:
    """A document's text, its scored units, and its entities (key -> name, label, units)."""

    id: str
    text: str
    units: list[ExplainedUnit] = field(default_factory=list)
    entities: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Explanation:
    """Everything the HTML page shows, as plain data: the query, every scored unit of every document, the hits."""

    query: str
    documents: list[ExplainedDocument] = field(default_factory=list)
    hits: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (what `attnret explain --json` would print)."""
        return asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        """JSON text that `from_json` turns back into an equal Explanation."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Explanation:
        """Inverse of `to_dict`."""
        documents = []
        for doc in data.get("documents", []):
            units = [
                ExplainedUnit(
                    index=int(u["index"]),
                    start=int(u["start"]),
                    end=int(u["end"]),
                    score=float(u["score"]),
                    scores={k: float(v) for k, v in u.get("scores", {}).items()},
                    reasons=list(u.get("reasons", [])),
                    entities=[ExplainedMention(**m) for m in u.get("entities", [])],
                    hit_rank=u.get("hit_rank"),
                )
                for u in doc.get("units", [])
            ]
            documents.append(ExplainedDocument(str(doc["id"]), doc["text"], units, dict(doc.get("entities", {}))))
        return cls(query=data["query"], documents=documents, hits=[dict(h) for h in data.get("hits", [])])

    @classmethod
    def from_json(cls, text: str) -> Explanation:
        """Parse `to_json` output."""
        return cls.from_dict(json.loads(text))


def build_explanation(
    query: str,
    documents: Sequence[Document],
    scored_units: Sequence[Sequence[Hit]],
    hits: Sequence[Hit],
    entity_indexes: Sequence[EntityIndex | None],
) -> Explanation:
    """Collect per-unit scores (one Hit per unit of each document), the final hits and entity mentions into data."""
    if not len(documents) == len(scored_units) == len(entity_indexes):
        raise ValueError(
            f"need one scored-unit list and one entity index (or None) per document: got {len(documents)} documents, "
            f"{len(scored_units)} scored-unit lists, {len(entity_indexes)} entity indexes"
        )
    for hit in hits:
        if not 0 <= hit.document_index < len(documents):
            raise ValueError(f"hit refers to document_index {hit.document_index}, but {len(documents)} were given")
    explained_documents = []
    for position, (document, units, index) in enumerate(zip(documents, scored_units, entity_indexes, strict=True)):
        doc_hits = [(rank, hit) for rank, hit in enumerate(hits, start=1) if hit.document_index == position]
        explained_units = []
        for unit in sorted(units, key=lambda u: (u.start, u.end)):
            mentions = []
            if index is not None:
                for m in index.mentions_in(unit.unit_index):
                    mentions.append(ExplainedMention(m.entity, index.display_name(m.entity), m.start, m.end))
            explained_units.append(
                ExplainedUnit(
                    index=unit.unit_index,
                    start=unit.start,
                    end=unit.end,
                    score=float(unit.score),
                    scores={name: float(value) for name, value in unit.scores.items()},
                    reasons=list(unit.reasons),
                    entities=mentions,
                    hit_rank=_hit_rank(unit, doc_hits),
                )
            )
        entities: dict[str, dict[str, Any]] = {}
        if index is not None:
            for key in index.entities:
                entities[key] = {
                    "name": index.display_name(key),
                    "label": index.labels.get(key, ""),
                    "units": index.units_of(key),
                }
        doc_id = document.id if document.id is not None else default_id(document.text)
        explained_documents.append(ExplainedDocument(doc_id, document.text, explained_units, entities))
    return Explanation(query=query, documents=explained_documents, hits=[hit.to_dict() for hit in hits])


def _hit_rank(unit: Hit, doc_hits: Sequence[tuple[int, Hit]]) -> int | None:
    """Best rank of a hit covering this unit (by character overlap, so paragraph hits mark their sentences)."""
    ranks = [rank for rank, hit in doc_hits if hit.start < unit.end and unit.start < hit.end]
    if not ranks and unit.start == unit.end:
        ranks = [rank for rank, hit in doc_hits if hit.unit_index == unit.unit_index]
    return min(ranks) if ranks else None


_CSS = """
body{font:15px/1.55 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232a;background:#fafafa}
header{padding:14px 24px;background:#263445;color:#fff}
header h1{font-size:18px;margin:0 0 4px}
header .q{font-size:16px}
main{display:flex;gap:20px;padding:16px 24px;align-items:flex-start}
#hits{flex:0 0 360px;position:sticky;top:12px;max-height:92vh;overflow:auto}
#docs{flex:1;min-width:0}
section.doc{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:12px 16px;margin-bottom:18px}
section.doc h2{font-size:15px;margin:0 0 8px;color:#3b4a5c}
.text{white-space:pre-wrap;overflow-wrap:anywhere}
.u{border-radius:3px;cursor:default}
.u.hit{outline:2px solid #c0392b;outline-offset:1px}
.u:hover,.u.focus{outline:2px solid #2f6fb3}
.rank{display:inline-block;font-size:11px;font-weight:600;background:#c0392b;color:#fff;border-radius:8px;
padding:0 5px;margin-right:3px;vertical-align:1px}
a.ent{color:inherit;text-decoration:none;border-bottom:2px solid #6c5ce7;font-weight:600}
a.ent.linked{background:#d9d2ff}
ol.hits{padding-left:22px;margin:0}
ol.hits li{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:6px 8px;margin-bottom:8px}
.meta{font-size:12px;color:#5b6775}
.tag{display:inline-block;font-size:11px;border-radius:8px;padding:0 6px;margin:1px 2px;background:#e7edf3}
.tag.entity{background:#e6e1ff}
#panel{font-size:12px;color:#3b4a5c;background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:6px 8px;
margin-bottom:10px;min-height:3em;white-space:pre-wrap}
.legend{font-size:12px;color:#dfe6ee}
.legend span{display:inline-block;width:26px;height:10px;margin:0 1px;vertical-align:middle}
.ents{font-size:12px;margin:-2px 0 8px}
"""

_JS = """
(function(){
  var panel=document.getElementById('panel');
  function mark(key,on){
    document.querySelectorAll('a.ent').forEach(function(a){
      if(a.getAttribute('data-entity')===key){a.classList.toggle('linked',on);}
    });
  }
  document.querySelectorAll('.u').forEach(function(u){
    u.addEventListener('mouseenter',function(){panel.textContent=u.getAttribute('title');});
  });
  document.querySelectorAll('a.ent').forEach(function(a){
    var key=a.getAttribute('data-entity');
    a.addEventListener('mouseenter',function(){mark(key,true);});
    a.addEventListener('mouseleave',function(){mark(key,false);});
    a.addEventListener('click',function(ev){
      ev.preventDefault();
      var all=Array.prototype.filter.call(document.querySelectorAll('a.ent[data-doc="'+a.getAttribute('data-doc')+'"]'),
        function(x){return x.getAttribute('data-entity')===key;});
      var next=all[(all.indexOf(a)+1)%all.length];
      if(next){next.scrollIntoView({block:'center'});next.focus();}
    });
  });
})();
"""


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def _shade(score: float, low: float, high: float) -> str:
    """Background colour for a score: transparent at the lowest score of the page, deep amber at the highest."""
    level = 0.0 if high <= low else (score - low) / (high - low)
    return f"rgba(255,165,0,{0.04 + 0.71 * max(0.0, min(1.0, level)):.3f})"


def _unit_title(unit: ExplainedUnit) -> str:
    parts = [f"fused {_fmt(unit.score)}"] + [f"{name} {_fmt(value)}" for name, value in unit.scores.items()]
    lines = [" | ".join(parts)]
    if unit.hit_rank is not None:
        lines.append(f"hit #{unit.hit_rank}")
    if unit.reasons:
        lines.append("reasons: " + ", ".join(unit.reasons))
    names = list(dict.fromkeys(m.name for m in unit.entities))
    if names:
        lines.append("entities: " + ", ".join(names))
    return "\n".join(lines)


def _render_unit(doc_pos: int, document: ExplainedDocument, unit: ExplainedUnit, low: float, high: float) -> str:
    """One unit as a shaded span with its scores in the title and its entity mentions as links."""
    text = document.text
    pieces: list[str] = []
    cursor = unit.start
    for mention in sorted(unit.entities, key=lambda m: (m.start, m.end)):
        start, end = max(mention.start, cursor), min(mention.end, unit.end)
        if start >= end:
            continue
        pieces.append(html.escape(text[cursor:start]))
        pieces.append(
            f'<a class="ent" href="#" data-doc="{doc_pos}" data-entity="{html.escape(mention.entity)}" '
            f'title="{html.escape("entity: " + mention.name)}">{html.escape(text[start:end])}</a>'
        )
        cursor = end
    pieces.append(html.escape(text[cursor : unit.end]))
    classes = "u hit" if unit.hit_rank is not None else "u"
    badge = f'<span class="rank">{unit.hit_rank}</span>' if unit.hit_rank is not None else ""
    return (
        f'<span class="{classes}" id="d{doc_pos}-u{unit.index}" data-score="{_fmt(unit.score)}" '
        f'style="background:{_shade(unit.score, low, high)}" title="{html.escape(_unit_title(unit))}">'
        f"{badge}{''.join(pieces)}</span>"
    )


def _render_document(doc_pos: int, document: ExplainedDocument, low: float, high: float) -> str:
    """The document text in order: gaps between units as plain text, each unit once."""
    out: list[str] = []
    cursor = 0
    for unit in sorted(document.units, key=lambda u: (u.start, u.end)):
        if unit.start < cursor:
            logger.warning("unit %d of document %s overlaps the previous one; shown as is", unit.index, document.id)
        out.append(html.escape(document.text[cursor : unit.start]))
        out.append(_render_unit(doc_pos, document, unit, low, high))
        cursor = max(cursor, unit.end)
    out.append(html.escape(document.text[cursor:]))
    chips = "".join(
        f'<span class="tag entity" title="{html.escape(info.get("label", ""))}">{html.escape(info["name"])} '
        f"×{len(info.get('units', []))}</span>"
        for info in sorted(document.entities.values(), key=lambda i: -len(i.get("units", [])))[:30]
    )
    return (
        f'<section class="doc" id="doc{doc_pos}"><h2>Document {html.escape(document.id)} '
        f'<span class="meta">({len(document.units)} units)</span></h2>'
        + (f'<div class="ents">{chips}</div>' if chips else "")
        + f'<div class="text">{"".join(out)}</div></section>'
    )


def _render_hits(explanation: Explanation) -> str:
    """The ranked hits with scores, reasons and a link to the unit in its document."""
    items = []
    for rank, hit in enumerate(explanation.hits, start=1):
        doc_pos = int(hit["document_index"])
        scores = " ".join(
            f'<span class="tag">{html.escape(str(name))} {_fmt(float(v))}</span>' for name, v in hit["scores"].items()
        )
        reasons = " ".join(
            f'<span class="tag{" entity" if str(r).startswith("entity:") else ""}">{html.escape(str(r))}</span>'
            for r in hit["reasons"]
        )
        items.append(
            f'<li><div class="meta">#{rank} · score {_fmt(float(hit["score"]))} · document '
            f'{html.escape(str(hit["document_id"]))} · <a href="#d{doc_pos}-u{int(hit["unit_index"])}">show</a></div>'
            f'<div class="hittext">{html.escape(str(hit["text"]))}</div><div>{reasons}</div><div>{scores}</div></li>'
        )
    return '<ol class="hits">' + "".join(items) + "</ol>" if items else "<p>No hits.</p>"


def render_html(explanation: Explanation) -> str:
    """A self-contained HTML page (inline CSS/JS, no network): shaded units, hover scores, entity links, top hits."""
    all_scores = [u.score for d in explanation.documents for u in d.units]
    low, high = (min(all_scores), max(all_scores)) if all_scores else (0.0, 1.0)
    legend = "".join(
        f'<span style="background:{_shade(low + (high - low) * i / 4, low, high)}"></span>' for i in range(5)
    )
    documents = "".join(_render_document(pos, doc, low, high) for pos, doc in enumerate(explanation.documents))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>attnret: {html.escape(explanation.query)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>attnret explanation</h1><div class="q">Query: <b>{html.escape(explanation.query)}</b></div>'
        f'<div class="legend">fused score {_fmt(low)} {legend} {_fmt(high)} · hover a sentence for its per-view '
        "scores, an entity for its other mentions (click to jump)</div></header>"
        f'<main><aside id="hits"><div id="panel">Hover a sentence to see its scores.</div><h2>Top hits</h2>'
        f'{_render_hits(explanation)}</aside><div id="docs">{documents}</div></main>'
        f"<script>{_JS}</script></body></html>"
    )


def write_html(explanation: Explanation, path: str | Path) -> Path:
    """Write `render_html(explanation)` to a UTF-8 file and return its path."""
    target = Path(path)
    target.write_text(render_html(explanation), encoding="utf-8")
    logger.info("wrote explanation page %s", target)
    return target
