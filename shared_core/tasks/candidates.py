"""Candidate-set scoring: rerank the short candidates of one query (chunks from any number of sources) together.

A reranker's input is a handful of short texts from many documents. Scoring each in its own context and min-max
normalising inside it gives a lone candidate a constant score and makes the scores of different documents
incomparable. Here, as in ICR and QRHead, every candidate of the query goes into ONE prompt (grouped by source, in
document order where the source and offsets are known, separated by a blank line so each candidate's char span in
the joined text is exact) and is scored by the calibrated attention mass the query pays it; the dense and lexical
views are computed over the same set. The prompt order is canonical, a function of the query and the set alone
(never of the order given): sources by ascending reciprocal rank fusion of the in-set BM25 and the dense cosine
(`order_relevance`; the most relevant read nearest the query), ties by text, so a shuffled input gets the same
scores. Each view is mapped to an absolute [0, 1] scale (see `ViewScales`) and fused with the configured
`fusion.weights` (`Hit.scores["fused"]`: 0 = no evidence of relevance in any weighted view, 1 = every view
saturated). `Hit.score` is that fused score mapped to an estimate
of P(relevant) (`tasks.calibration`, Platt scaling fitted on held-in labelled candidates; strictly increasing in the
fused score, so the ranking is the fused one): comparable across the candidates of one call and across calls, so a
single candidate gets a real score and a threshold such as 0.5 means "more likely relevant than not".
Identical texts (the same chunk under two ids) are read once and share one score.

Candidates whose joined text does not fit the model window are read in several windows (consecutive groups in prompt
order); each window has its own "N/A" calibration and its attention is expressed in multiples of that window's
uniform share, which is what makes the windows comparable. A candidate that alone exceeds the window is read
through the cascade by `AttentionRetriever.token_scores`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import bm25s
import numpy as np

from shared_core.document import Document, Hit, default_id
from shared_core.engine.scoring import pool, unit_token_ranges
from shared_core.tasks.calibration import probability
from shared_core.validation import check_query, check_sequence
from shared_core.views.lexical import LexicalIndex
from shared_core.views.ranking import REASON_TOP

if TYPE_CHECKING:
    from shared_core.engine.prompt import DocumentTokens
    from shared_core.tasks.scorer import Scorer

logger = logging.getLogger(__name__)

SEPARATOR = "\n\n"
"""Between two candidates in the joined prompt text (a paragraph break: the model reads them as separate passages)."""
TEMPLATE_MARGIN = 160
"""Tokens kept free in each window for the prompt template around the document and the query part."""
WINDOW_TOKENS: int | None = 4096
"""Most candidate tokens read in one prompt (None = as many as the model window holds). 4,096: on held-in BM25
top-50 sets (~8k tokens) the same nDCG as one full window at ~25 % less time (attention cost grows with the window),
and windows near the ~3k tokens the position bias was measured at; see docs/rerank.md."""
POSITION_BIAS = 1.6
"""Recency bias of the calibrated attention: log of how many times more a candidate read at the end of the prompt
gets than the same candidate read at its start, measured by reading held-in candidate sets in two opposite orders
(docs/rerank.md). `attention_multiples` divides it out: m · exp(-bias · (p - 0.5)), p = relative position."""

Pooling = Literal["mean", "sum"]


@dataclass(frozen=True)
class Candidate:
    """One text to rerank: its text, an optional caller id, its source document and its char offset in that source.

    Candidates sharing a `source` are read next to each other, ordered by `start` (those without come after, by
    text); the sources and the candidates without one are read in a canonical order (`prompt_order`).
    """

    text: str
    id: str | None = None
    source: str | None = None
    start: int | None = None


@dataclass(frozen=True)
class ViewScales:
    """How each view's raw score maps to an absolute [0, 1] scale (fixed, not relative to the other candidates).

    - attention: `1 - exp(-max(m, 0) / attention_scale)`, where `m` is the calibrated attention the query pays the
      candidate, in multiples of a uniform share (1.0 = exactly what a uniform spread over the prompt's text would
      give it; calibrated: minus the same share under the query "N/A"). 0 = no more than "N/A" gives it.
    - dense: the cosine similarity clipped to [0, 1] (0 = orthogonal or opposite, 1 = same direction).
    - lexical: BM25 over the candidate set divided by the query's ideal BM25 (the sum of its terms' IDF, terms
      absent from every candidate included): the IDF-weighted, term-frequency-saturated share of the query's terms
      that the candidate holds, then `lexical_power`-th root (spreads the typical 0.1–0.4 range).
    """

    attention_scale: float = 2.0
    lexical_power: float = 1.0
    position_bias: float = POSITION_BIAS

    def attention(self, multiples: np.ndarray) -> np.ndarray:
        """Attention multiples of a uniform share -> [0, 1]."""
        return 1.0 - np.exp(-np.maximum(multiples, 0.0) / self.attention_scale)

    @staticmethod
    def dense(cosine: np.ndarray) -> np.ndarray:
        """Cosine similarity -> [0, 1]."""
        return np.clip(cosine, 0.0, 1.0)

    def lexical(self, share: np.ndarray) -> np.ndarray:
        """Share of the query's ideal BM25 -> [0, 1]."""
        return np.clip(share, 0.0, 1.0) ** (1.0 / self.lexical_power)


DEFAULT_SCALES = ViewScales()


@dataclass(frozen=True)
class _Window:
    """Candidates (input indices, in prompt order) read in one prompt, and their char spans in its joined text."""

    members: tuple[int, ...]
    text: str
    spans: tuple[tuple[int, int], ...]


def coerce_candidates(candidates: object) -> list[Candidate]:
    """A non-empty sequence of `Candidate`s or str (a str is a candidate without id or source), as Candidates."""
    candidates = check_sequence(
        candidates, "candidates", "Candidate/str", (str, Candidate), "wrap a single candidate in a list"
    )
    out = []
    for i, c in enumerate(candidates):
        if isinstance(c, str):
            c = Candidate(text=c)
        elif not isinstance(c, Candidate):
            raise TypeError(f"candidate {i} must be a Candidate or str, got {type(c).__name__}")
        if not isinstance(c.text, str):
            raise TypeError(f"candidate {i} text must be a str, got {type(c.text).__name__}")
        if not c.text.strip():
            raise ValueError(f"candidate {i} is empty or whitespace; leave textless items out of the candidate set")
        if c.start is not None and (isinstance(c.start, bool) or not isinstance(c.start, int)):
            raise TypeError(f"candidate {i} start must be an int or None, got {type(c.start).__name__}")
        out.append(c)
    return out


def _placement(c: Candidate) -> tuple[bool, str, bool, int]:
    """Sort key of a candidate's source and offset (no source last), used to pick one copy of a repeated text."""
    return (c.source is None, c.source or "", c.start is None, c.start or 0)


def distinct_texts(candidates: Sequence[Candidate]) -> tuple[list[Candidate], list[int]]:
    """The candidates with distinct texts (in order of first occurrence; of copies with different sources or offsets,
    the first by source, then offset, whatever the input order) and, per input candidate, the index of its text
    among them: identical texts are read once and share one score wherever they were given."""
    first: dict[str, int] = {}
    distinct: list[Candidate] = []
    where = []
    for c in candidates:
        if c.text not in first:
            first[c.text] = len(distinct)
            distinct.append(c)
        elif _placement(c) < _placement(distinct[first[c.text]]):
            distinct[first[c.text]] = c
        where.append(first[c.text])
    return distinct, where


def prompt_order(candidates: Sequence[Candidate], relevance: Sequence[float] | np.ndarray | None = None) -> list[int]:
    """Input indices in reading order, independent of the input order: each source's candidates together, by
    `start` (then text); the sources (and candidates without one) by ascending `relevance` of their best candidate
    (`order_relevance`: the most relevant read nearest the query, where a causal LM reads most closely;
    docs/rerank.md), ties and `relevance=None` by their texts, so the order is total."""
    groups: dict[object, list[int]] = {}
    for i, c in enumerate(candidates):
        groups.setdefault(("source", c.source) if c.source is not None else ("alone", c.text), []).append(i)
    placed = []
    for members in groups.values():
        members = sorted(
            members, key=lambda i: (candidates[i].start is None, candidates[i].start or 0, candidates[i].text)
        )
        best = max(float(relevance[i]) for i in members) if relevance is not None else 0.0
        placed.append((best, [candidates[i].text for i in members], members))
    return [i for _, _, members in sorted(placed, key=lambda g: (g[0], g[1])) for i in members]


def _ranks(values: np.ndarray) -> np.ndarray:
    """1 + how many values are strictly greater (ties share the best rank, whatever their order)."""
    return 1 + (values[None, :] > values[:, None]).sum(axis=1)


RRF_K = 60
"""Reciprocal rank fusion constant of `order_relevance` (the usual 60)."""


def order_relevance(lexical: np.ndarray, cosine: np.ndarray | None) -> np.ndarray:
    """Per text, the prior relevance that places it in the prompt (`prompt_order`), from the order-free views only:
    the reciprocal rank fusion of the in-set BM25 and the dense cosine (BM25 alone when the dense view is off)."""
    fused = 1.0 / (RRF_K + _ranks(lexical))
    if cosine is not None:
        fused = fused + 1.0 / (RRF_K + _ranks(cosine))
    return np.asarray(fused, dtype=np.float64)


def join(texts: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The texts joined by `SEPARATOR` and each text's exact [start, end) char span in the result."""
    spans, cursor = [], 0
    for text in texts:
        spans.append((cursor, cursor + len(text)))
        cursor += len(text) + len(SEPARATOR)
    return SEPARATOR.join(texts), spans


def windows(order: Sequence[int], lengths: Sequence[int], budget: int, texts: Sequence[str]) -> list[_Window]:
    """Consecutive groups of `order` whose token `lengths` (plus separators) fit `budget` tokens each."""
    groups: list[list[int]] = []
    used = 0
    for i in order:
        need = lengths[i] + (2 if groups and groups[-1] else 0)
        if not groups or used + need > budget:
            groups.append([i])
            used = lengths[i]
        else:
            groups[-1].append(i)
            used += need
    out = []
    for members in groups:
        text, spans = join([texts[i] for i in members])
        out.append(_Window(members=tuple(members), text=text, spans=tuple(spans)))
    return out


def attention_multiples(
    retriever: Scorer, query: str, window: _Window, pooling: Pooling, position_bias: float = POSITION_BIAS
) -> dict[int, float]:
    """Per candidate of one window: calibrated attention in multiples of a uniform share (see `ViewScales`).

    'mean': the candidate's mean token score times the window's token count (its share over a length-proportional
    one); 'sum': the candidate's total mass times the number of candidates (its share over an equal split). Both are
    divided by the recency bias at the candidate's relative position in the window (`POSITION_BIAS`).
    """
    tokens, token_scores = retriever.token_scores(query, Document(text=window.text), candidates=True)
    values = window_multiples(tokens, token_scores, window, pooling, position_bias)
    return {i: float(v) for i, v in zip(window.members, values, strict=True)}


def window_multiples(
    tokens: DocumentTokens, token_scores: np.ndarray, window: _Window, pooling: Pooling, position_bias: float
) -> np.ndarray:
    """`attention_multiples`' rule on a window's token scores: [n] (one aggregated row) or [rows, n] (one row per
    head, as head training reads them) -> multiples per candidate of the window, in `window.members` order."""
    lo, hi = unit_token_ranges(tokens.offsets, list(window.spans))
    n = tokens.n_doc_tokens
    mean = pool(token_scores, lo, hi, "mean", 1, 0.0)
    values = mean * n if pooling == "mean" else mean * (hi - lo) * len(window.members)
    position = (lo + hi) / (2.0 * max(n, 1))  # 0 = start of the text, 1 = right before the query
    return np.asarray(values * np.exp(-position_bias * (position - 0.5)))


def lexical_share(query: str, texts: Sequence[str], retriever: Scorer) -> tuple[np.ndarray, np.ndarray]:
    """(raw BM25 over the candidate set, its share of the query's ideal BM25) per text."""
    lex = retriever.config.lexical
    raw = LexicalIndex.build(list(texts), lex).score(query)
    query_terms = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
    if not query_terms:
        return raw, np.zeros(len(texts))
    docs = bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)
    n = len(texts)
    df = {t: sum(t in set(d) for d in docs) for t in set(query_terms)}
    # bm25s' Lucene IDF; a term in no candidate still counts in the ideal, so missing terms lower every share
    ideal = sum(float(np.log(1.0 + (n - df[t] + 0.5) / (df[t] + 0.5))) for t in query_terms)
    return raw, raw / ideal if ideal > 0 else np.zeros(n)


@dataclass(frozen=True)
class Reading:
    """How one candidate set is read: its order-free views, the canonical prompt order they give, each text's
    token count and the candidate tokens one prompt holds."""

    cosine: np.ndarray | None
    bm25: np.ndarray
    share: np.ndarray
    order: list[int]
    lengths: list[int]
    budget: int


def plan_reading(
    retriever: Scorer, query: str, candidates: Sequence[Candidate], *, dense: bool, window_tokens: int | None
) -> Reading:
    """The order-free views of distinct `candidates` (dense only when `dense`), computed over the texts sorted so
    that nothing depends on the input order, and the prompt order and window budget they fix: the set alone decides
    how it is read (`score_candidates`, and head training on candidate sets, read it this way)."""
    texts = [c.text for c in candidates]
    canon = sorted(range(len(texts)), key=texts.__getitem__)
    cosine = _scatter(retriever.dense.score(query, [texts[i] for i in canon]), canon) if dense else None
    bm25, share = (_scatter(v, canon) for v in lexical_share(query, [texts[i] for i in canon], retriever))
    order = prompt_order(candidates, order_relevance(share, cosine))
    tokenizer = retriever.model.tokenizer
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    query_len = len(tokenizer(query, add_special_tokens=False)["input_ids"])
    budget = max(retriever.window - query_len - TEMPLATE_MARGIN, 1)
    if window_tokens is not None:
        budget = min(budget, window_tokens)
    return Reading(cosine, bm25, share, order, lengths, budget)


def score_candidates(
    retriever: Scorer,
    query: str,
    candidates: Sequence[Candidate | str],
    *,
    pooling: Pooling = "mean",
    orders: int = 1,
    scales: ViewScales = DEFAULT_SCALES,
    window_tokens: int | None = WINDOW_TOKENS,
) -> list[Hit]:
    """Score every candidate of one query read together; one `Hit` per candidate, in input order.

    `Hit.scores["fused"]` is the weighted mean (`fusion.weights`) of the enabled views on their absolute [0, 1]
    scales (`ViewScales`); `Hit.score` is its calibrated probability of relevance (`tasks.calibration`, monotone
    in the fused score). `Hit.scores` also holds each view's [0, 1] value under its name and its raw value under
    `<view>_raw` (attention multiples, cosine, BM25). Candidates with the same text are read once and share scores.
    `document_index` is the input position, `document_id` the candidate id (or `default_id(text)`), `start`/`end` the
    candidate's offsets in its source (from `start`, else 0). The scores do not depend on the order of `candidates`
    (canonical prompt order, `prompt_order`). `orders=2` also reads the candidates in the reverse of that order and
    averages the attention of both readings (corrects position bias at twice the model cost).
    """
    check_query(query)
    cands = coerce_candidates(candidates)
    if pooling not in ("mean", "sum"):
        raise ValueError(f"pooling must be 'mean' or 'sum', got {pooling!r}")
    if isinstance(orders, bool) or orders not in (1, 2):
        raise ValueError(f"orders must be 1 or 2, got {orders!r}")
    if window_tokens is not None and (isinstance(window_tokens, bool) or not isinstance(window_tokens, int)):
        raise TypeError(f"window_tokens must be an int or None, got {type(window_tokens).__name__}")
    if window_tokens is not None and window_tokens <= 0:
        raise ValueError(f"window_tokens must be positive, got {window_tokens}")
    cfg = retriever.config
    read, where = distinct_texts(cands)  # a text given twice (two ids) is read once: same text, same score
    texts = [c.text for c in read]
    fusion = retriever.fusion  # the model's shipped candidate weights and calibration under fusion.weights: auto
    weights = fusion.candidates.view_weights
    if cfg.fusion.method != "weighted":
        logger.debug("candidate scoring fuses absolute view scales by weight; fusion.method=%r is not used", cfg.fusion)
    dense_on = cfg.dense.enabled and weights.get("dense", 0.0) > 0
    plan = plan_reading(retriever, query, read, dense=dense_on, window_tokens=window_tokens)
    readings = [plan.order, plan.order[::-1]][:orders] if weights.get("attention", 0.0) > 0 else []  # 0: no read
    multiples = np.zeros(len(read))
    raw: dict[str, np.ndarray] = {}
    scaled: dict[str, np.ndarray] = {}
    for reading in readings:
        parts = windows(reading, plan.lengths, plan.budget, texts)
        if len(parts) > 1:
            logger.debug("%d candidates (%d tokens) read in %d windows", len(read), sum(plan.lengths), len(parts))
        for part in parts:
            for i, value in attention_multiples(retriever, query, part, pooling, scales.position_bias).items():
                multiples[i] += value / len(readings)

    if readings:
        raw["attention"], scaled["attention"] = multiples, scales.attention(multiples)
    if plan.cosine is not None:
        raw["dense"], scaled["dense"] = plan.cosine, scales.dense(plan.cosine)
    if cfg.lexical.enabled and weights.get("lexical", 0.0) > 0:
        raw["lexical"], scaled["lexical"] = plan.bm25, scales.lexical(plan.share)
    if not scaled:
        raise ValueError("every candidate view is off (fusion.weights 0 or view disabled); give one a positive weight")
    fused = fuse_scaled(scaled, weights)
    calibrated = probability(fused, len(read), fusion.calibration)

    tops = {name: set(np.argsort(-v, kind="stable")[:REASON_TOP].tolist()) for name, v in scaled.items()}
    hits = []
    for i, (c, j) in enumerate(zip(cands, where, strict=True)):
        scores = {name: float(v[j]) for name, v in scaled.items()}
        scores.update({f"{name}_raw": float(v[j]) for name, v in raw.items()})
        scores["fused"] = float(fused[j])
        start = c.start or 0
        hits.append(
            Hit(
                document_id=c.id if c.id is not None else default_id(c.text),
                document_index=i,
                start=start,
                end=start + len(c.text),
                text=c.text,
                score=float(calibrated[j]),
                scores=scores,
                reasons=[n for n in scaled if j in tops[n] and scaled[n][j] > 0] or ["fused"],
                unit_index=0,
            )
        )
    return hits


def _scatter(values: np.ndarray | Sequence[float], canon: Sequence[int]) -> np.ndarray:
    """Values computed over `texts[canon[k]]`, k = 0..n-1, put back at the texts' own indices (float64)."""
    out = np.zeros(len(canon))
    out[list(canon)] = np.asarray(values, dtype=np.float64)
    return out


def fuse_scaled(scaled: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Weighted mean of views already on absolute [0, 1] scales (a view without a weight is an error, as in
    `fusion.fuse`): the candidates' fused score. Unlike `views.ranking.fuse_views`, nothing is min-max normalised."""
    missing = sorted(name for name in scaled if name not in weights)
    if missing:
        raise ValueError(f"no fusion weight for view(s) {missing}; add them to fusion.weights (0 switches one off)")
    total = sum(weights[name] for name in scaled)
    if total <= 0:
        raise ValueError(f"all candidate views {sorted(scaled)} have weight 0; at least one must be positive")
    fused = sum(weights[name] * values for name, values in scaled.items())
    return np.clip(np.asarray(fused, dtype=np.float64) / total, 0.0, 1.0)
