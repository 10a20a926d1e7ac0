"""Choose the fusion defaults on held-in questions: every view is computed once, then each candidate setting
(view weights, weighted or RRF fusion, per-query adaptive weights, entity expansion on or off and its settings, the
share of a unit's score taken from its neighbours, sentence or paragraph units) is replayed over the same scores.

    python -m benchmarks.tune_fusion                     # 8 held-in questions per built task at 1500 words
    python -m benchmarks.tune_fusion --n 12 --words 1500,6000
    python -m benchmarks.tune_fusion --tasks babi-qa1,hotpotqa,covidqa,qmsum --docs 4 --per-doc 4 \\
        --granularities sentence,paragraph --cases /tmp/held_in.pkl
    python -m benchmarks.tune_fusion --cases /tmp/held_in.pkl --check /tmp/held_out.pkl   # replay held-out too

Held-in = each built task's first questions (offset 0), the ones head detection also used, and the first third of
each real set's documents (``shared_core.evaluation.real_split``); the README's quality table is measured on later
questions and the other documents (``benchmarks.quality``), so the choice never sees the evaluation set. ``--check``
replays the same candidates over views that ``benchmarks.quality --views-out`` saved from a held-out run, so a lever
chosen on held-in is confirmed (or not) on held-out data without running the model again. Prints, per candidate,
nDCG@10 per set and overall, and its worst margin over the better of BM25 and dense on any set (the issue's goal:
ahead of both on every set), and the lever table: nDCG@10 change per set against the shipped default.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from benchmarks.quality import SYNTHETIC_TASKS, Prepared, Scorers, _deep_merge, prepare, question_metrics
from benchmarks.report import run_metadata
from shared_core.config import EntitiesConfig, FusionConfig, RetrieverConfig
from shared_core.evaluation import REAL_TASKS, group_by_document, load_examples, load_real
from shared_core.views import ranking
from shared_core.views.model_fusion import model_fusion

logger = logging.getLogger("benchmarks.tune_fusion")

VIEWS = ("attention", "dense", "lexical")
DEFAULT_NAME = "default"


@dataclass
class Case:
    """One question with every document's raw views, units and entity index, at one unit granularity."""

    task: str
    prepared: Prepared
    docs: list[tuple[dict[str, np.ndarray], Any, Any]]  # (views, units, entity index) per document
    baselines: dict[str, float]  # nDCG@10 of bm25 and dense
    granularity: str = "sentence"


@dataclass(frozen=True)
class Candidate:
    """A setting replayed over the cases: fusion and entity configs, at one unit granularity."""

    name: str
    fusion: FusionConfig
    entities: EntitiesConfig
    granularity: str = "sentence"
    lever: str = "grid"
    tags: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Collecting views


def question_jobs(
    tasks: Sequence[str],
    words: Sequence[int],
    n: int,
    seed: int,
    offset: int,
    split: str,
    docs: int,
    per_doc: int,
    max_words: dict[str, int],
) -> list[tuple[str, list[Any]]]:
    """(task, questions over one document) of the held-in (or ``split``) part of every set; a real set named in
    ``max_words`` has its documents cut after that many words (gold clipped to the kept part)."""
    jobs: list[tuple[str, list[Any]]] = []
    for task in tasks:
        if task in REAL_TASKS:
            examples = load_real(
                task,
                split=split,  # type: ignore[arg-type]
                n_documents=docs,
                per_document=per_doc,
                seed=seed,
                max_words=max_words.get(task),
            )
            jobs.extend((task, group) for group in group_by_document(examples))
        else:
            for w in words:
                jobs.extend((task, [ex]) for ex in load_examples(task, n=n, target_words=w, seed=seed, offset=offset))
    return jobs


def collect(
    tasks: Sequence[str],
    words: Sequence[int],
    n: int,
    seed: int,
    offset: int,
    *,
    split: str = "held-in",
    docs: int = 4,
    per_doc: int = 4,
    granularities: Sequence[str] = ("sentence",),
    max_words: dict[str, int] | None = None,
    base_config: dict[str, Any] | None = None,
) -> list[Case]:
    """Compute every view of every held-in question once per unit granularity (the model's document cache and the
    cascade's per-query results are shared between granularities, so a second granularity costs no prefill).
    ``base_config``: the retriever config the views come from (e.g. another model), the defaults when None."""
    base = base_config or {}
    scorers = {g: Scorers(_deep_merge(base, {"units": {"granularity": g}})) for g in granularities}
    first = scorers[granularities[0]]
    for s in scorers.values():
        if s is not first:
            s.default.share_caches(first.default)
        s.default.warm_up()
    cases: list[Case] = []
    jobs = question_jobs(tasks, words, n, seed, offset, split, docs, per_doc, max_words or {})
    for _task, group in tqdm(jobs, desc="held-in documents"):
        for g, s in scorers.items():
            prepared = [p for p in (prepare(ex, s.segment) for ex in group) if p.gold]
            if not prepared:
                continue
            records = []
            for name in ("bm25", "dense", "fused+entities"):
                if len(prepared[0].example.documents) == 1:
                    scores = s.score_many(name, prepared)
                else:
                    scores = [s.score(name, p) for p in prepared]
                for p, sc in zip(prepared, scores, strict=True):
                    records.append({"id": p.example.id, "method": name, **question_metrics(sc, p)})
            cases.extend(_case(c, g) for c in s.view_cases(prepared, records))
    return cases


def _case(saved: dict[str, Any] | Case, granularity: str = "sentence") -> Case:
    """A Case from ``benchmarks.quality``'s saved views (plain dicts) or an earlier Case."""
    if isinstance(saved, Case):
        return saved
    return Case(saved["task"], saved["prepared"], saved["docs"], saved["baselines"], granularity)


def load_cases(path: Path) -> list[Case]:
    """Cases pickled by this script or by ``benchmarks.quality --views-out`` (files this project wrote: trusted)."""
    return [_case(c) for c in pickle.loads(path.read_bytes())]


# ---------------------------------------------------------------------------------------------------------------
# Per-query adaptive weights: agreement of the views is the library's (fusion.adaptive = "agreement"); lexical
# overlap is replayed here only (it lost on held-in, docs/quality.md)


def overlap_weights(
    views: dict[str, np.ndarray], weights: dict[str, float], strength: float, coverage: float
) -> dict[str, float]:
    """Lexical (and dense) weight scaled by the query's lexical coverage ``c`` (the largest share of its content
    words that one unit holds), attention's by ``1 + strength * (1 - c)``: words that the document does not
    share with the query make the lexical view a weaker witness, and attention the one to trust."""
    out = dict(weights)
    if "lexical" in out:
        out["lexical"] = out["lexical"] * coverage**strength
    if "attention" in out:
        out["attention"] = out["attention"] * (1.0 + strength * (1.0 - coverage))
    return out


def _coverage(case: Case, doc_index: int) -> float:
    from shared_core.evaluation import content_words

    query = content_words(case.prepared.example.query)
    if not query:
        return 0.0
    units = case.docs[doc_index][1]
    return max((len(query & content_words(u.text)) / len(query) for u in units), default=0.0)


# ---------------------------------------------------------------------------------------------------------------
# Replaying candidates


def replay(case: Case, fusion: FusionConfig, entities: EntitiesConfig, tags: dict[str, Any] | None = None) -> float:
    """nDCG@10 of one question under one candidate setting (documents concatenated as the benchmark does)."""
    tags = tags or {}
    scores = []
    for d, (views, units, index) in enumerate(case.docs):
        config = fusion
        if tags.get("adaptive") == "overlap":
            weights = overlap_weights(views, fusion.view_weights, tags["strength"], _coverage(case, d))
            config = fusion.model_copy(update={"weights": weights})
        used = {k: v for k, v in views.items() if config.view_weights.get(k, 0) > 0}
        ranked = ranking.rank_units(used, units, index, config, entities, case.prepared.example.query)
        scores.append(ranked.final)
    return question_metrics(np.concatenate(scores), case.prepared)["ndcg@10"]


def candidates(granularities: Sequence[str] = ("sentence",), default: FusionConfig | None = None) -> list[Candidate]:
    """The shipped default (``default``: the documents' fusion of the views' model, `model_fusion`; the plain
    defaults when None), the grid (weights per view, fusion method, entities on/off), adaptive weights, the default
    without entities and with common words expanding, and the default at every other granularity."""
    default = default or FusionConfig()
    out = [Candidate(DEFAULT_NAME, default, EntitiesConfig(), lever="default")]
    out.append(Candidate("default, entities off", default, EntitiesConfig(enabled=False), lever="entities-off"))
    common = EntitiesConfig(skip_common_words=False)
    out.append(Candidate("default, common words expand", default, common, lever="common-words"))
    for att, den, lex, method, ent in itertools.product(
        (1.0, 2.0), (0.0, 0.5, 1.0), (0.0, 0.5, 1.0, 2.0), ("weighted", "rrf"), (True, False)
    ):
        weights = {"attention": att, "dense": den, "lexical": lex}
        name = f"a{att:g}/d{den:g}/l{lex:g} {method}{' +ent' if ent else ''}"
        out.append(Candidate(name, FusionConfig(method=method, weights=weights), EntitiesConfig(enabled=ent)))
    for strength in (0.5, 1.0, 2.0):
        agreement = default.model_copy(update={"adaptive": "agreement", "adaptive_strength": strength})
        name = f"default, agreement adaptive x{strength:g}"
        out.append(Candidate(name, agreement, EntitiesConfig(), lever="adaptive-agreement"))
        tags = {"adaptive": "overlap", "strength": strength}
        name = f"default, overlap adaptive x{strength:g}"
        out.append(Candidate(name, default, EntitiesConfig(), lever="adaptive-overlap", tags=tags))
    for g in granularities:
        if g != "sentence":
            out.append(Candidate(f"default, {g} units", default, EntitiesConfig(), g, lever="units"))
    out.extend(context_candidates(default))
    out.extend(entity_candidates(default))
    return out


def entity_candidates(default: FusionConfig) -> list[Candidate]:
    """The default fusion with other entity-expansion settings: fewer units per expansion, more or fewer direct hits
    before it, whole paragraphs or the unit after a mention pulled in, mentions in document order."""
    settings: list[tuple[str, dict[str, Any]]] = [(f"max_expansions {m}", {"max_expansions": m}) for m in (1, 2, 3, 5)]
    settings += [(f"direct_hits {d}", {"direct_hits": d}) for d in (1, 3, 5)]
    settings += [("top_entities 2", {"top_entities": 2}), ("expand paragraph", {"expand": "paragraph"})]
    settings += [("neighbours", {"neighbours": True}), ("order document", {"order": "document"})]
    return [
        Candidate(f"default, entities {name}", default, EntitiesConfig(**update), lever="entity-settings")
        for name, update in settings
    ]


def context_candidates(default: FusionConfig) -> list[Candidate]:
    """The default with each unit on its own (context off), and with other shares of its neighbours' scores
    (`fusion.context`, `paragraph_context`, `context_window`: `views.context`)."""
    off = default.model_copy(update={"context": 0.0, "paragraph_context": 0.0})
    out = [Candidate("default, context off", off, EntitiesConfig(), lever="context-off")]
    shipped = (default.context, default.paragraph_context, default.context_window)
    for share, para, window in itertools.product((0.0, 0.1, 0.2, 0.3, 0.4), (0.0, 0.1, 0.2, 0.3), (2, 4, 6)):
        if share + para == 0 or share + para > 0.6 + 1e-9 or (share, para, window) == shipped:
            continue
        setting = {"context": share, "paragraph_context": para, "context_window": window}
        name = f"default, context {share:g} / paragraph {para:g} / window {window}"
        out.append(Candidate(name, default.model_copy(update=setting), EntitiesConfig(), lever="context"))
    return out


def evaluate(
    cases: list[Case], cands: Sequence[Candidate] | None = None, default: FusionConfig | None = None
) -> list[dict[str, Any]]:
    """Per candidate (`candidates` around ``default`` when None): nDCG@10 per set and overall (macro), and the worst
    margin over max(BM25, dense) (at the candidate's own granularity: the baselines rank the same units)."""
    grans = sorted({c.granularity for c in cases})
    cands = list(cands) if cands is not None else candidates(grans, default)
    tasks = list(dict.fromkeys(c.task for c in cases))
    base = {
        g: {
            t: {b: float(np.mean([c.baselines[b] for c in cases if c.task == t and c.granularity == g])) for b in BASES}
            for t in tasks
            if any(c.task == t and c.granularity == g for c in cases)
        }
        for g in grans
    }
    rows = []
    for cand in tqdm(cands, desc="candidates", disable=len(cands) < 20):
        own = [c for c in cases if c.granularity == cand.granularity]
        if not own:
            continue
        per_task = {
            t: float(np.mean([replay(c, cand.fusion, cand.entities, cand.tags) for c in own if c.task == t]))
            for t in tasks
            if any(c.task == t for c in own)
        }
        margins = {t: per_task[t] - max(base[cand.granularity][t].values()) for t in per_task}
        rows.append(
            {
                "candidate": cand.name,
                "lever": cand.lever,
                "granularity": cand.granularity,
                "fusion": cand.fusion.model_dump(),
                "entities": cand.entities.enabled,
                "tags": cand.tags,
                "overall": float(np.mean(list(per_task.values()))),
                "worst_margin": min(margins.values()),
                "per_task": per_task,
                "margins": margins,
                "n": {t: sum(1 for c in own if c.task == t) for t in per_task},
            }
        )
    rows.append({"candidate": "baselines", "per_task": base.get("sentence", {}), "by_granularity": base})
    return rows


BASES = ("bm25", "dense")


def lever_table(rows: list[dict[str, Any]], tasks: Sequence[str], held_in: list[dict[str, Any]] | None = None) -> str:
    """Markdown: per lever, nDCG@10 change against the shipped default per set (units: change of the margin over
    the better baseline, since another granularity is another ranking task). The grid's representative is the
    candidate that ``held_in`` (or these rows) rank best overall."""
    by_name = {r["candidate"]: r for r in rows if r["candidate"] != "baselines"}
    default = by_name[DEFAULT_NAME]
    chooser = {r["candidate"]: r for r in (held_in or rows) if r["candidate"] != "baselines"}

    def best(lever: str) -> str | None:
        """The candidate of a lever family that the chooser rows rank best overall (None: no such family)."""
        family = [r for r in chooser.values() if r["lever"] == lever]
        return max(family, key=lambda r: r["overall"])["candidate"] if family else None

    picks: list[tuple[str, str]] = []
    if grid := best("grid"):
        picks.append((f"(a) best grid setting on held-in: {grid}", grid))
    picks.append(("(a) RRF, default weights", "a1/d0.5/l2 rrf +ent"))
    for mode in ("agreement", "overlap"):
        if adaptive := best(f"adaptive-{mode}"):
            picks.append((f"(b) {adaptive}", adaptive))
    for r in chooser.values():
        if r["lever"] == "units":
            picks.append((f"(c) {r['granularity']} units (margin change)", r["candidate"]))
    picks.append(
        ("(d) entities off", "default, entities off" if "default, entities off" in by_name else "a1/d0.5/l2 weighted")
    )
    picks.append(("(e) common words expand (entities.skip_common_words off)", "default, common words expand"))
    picks.append(("(f) context off (fusion.context and paragraph_context 0)", "default, context off"))
    if context := best("context"):
        picks.append((f"(f) best other context setting on held-in: {context.removeprefix('default, ')}", context))
    if entity := best("entity-settings"):
        picks.append((f"(g) best other entity setting on held-in: {entity.removeprefix('default, entities ')}", entity))
    shown = [t for t in tasks if t in default["per_task"]]
    lines = ["| lever | " + " | ".join(shown) + " | overall |", "|---|" + "---:|" * (len(shown) + 1)]
    base_cells = " | ".join(f"{default['per_task'][t]:.3f} ({default['margins'][t]:+.3f})" for t in shown)
    lines.append(f"| default nDCG@10 (margin over max(BM25, dense)) | {base_cells} | {default['overall']:.3f} |")
    for label, name in picks:
        r = by_name.get(name)
        if r is None:
            continue
        key = "margins" if r["lever"] == "units" else "per_task"
        deltas = [r[key][t] - default[key][t] if t in r[key] else None for t in shown]
        cells = " | ".join("–" if d is None else f"{d:+.3f}" for d in deltas)
        valid = [d for d in deltas if d is not None]
        lines.append(f"| {label} | {cells} | {np.mean(valid):+.3f} |")
    return "\n".join(lines)


def candidate_table(rows: list[dict[str, Any]], tasks: Sequence[str], top: int) -> str:
    """Markdown: the best candidates by overall nDCG@10, with the better baseline per set."""
    base = rows[-1]["per_task"]
    shown = [t for t in tasks if t in base]
    lines = ["| candidate | overall | worst margin | " + " | ".join(shown) + " |"]
    lines.append("|---|---:|---:|" + "---:|" * len(shown))
    lines.append("| max(BM25, dense) | | | " + " | ".join(f"{max(base[t].values()):.3f}" for t in shown) + " |")
    ranked = sorted((r for r in rows[:-1] if r["granularity"] == "sentence"), key=lambda r: -r["overall"])
    for r in [*ranked[:top], *(r for r in ranked[top:] if r["candidate"] == DEFAULT_NAME)]:
        cells = " | ".join(f"{r['per_task'][t]:.3f}" if t in r["per_task"] else "–" for t in shown)
        lines.append(f"| {r['candidate']} | {r['overall']:.3f} | {r['worst_margin']:+.3f} | {cells} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Collect (or load) the held-in views, replay the candidates, print the tables and write the JSON."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m benchmarks.tune_fusion", description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(SYNTHETIC_TASKS), help="built tasks and/or covidqa, qmsum")
    p.add_argument("--words", default="1500")
    p.add_argument("--n", type=int, default=8, help="held-in questions per built task and length")
    p.add_argument("--docs", type=int, default=4, help="held-in documents per real set")
    p.add_argument("--per-doc", type=int, default=4, help="questions per real document")
    p.add_argument("--granularities", default="sentence", help="unit granularities to collect: sentence,paragraph")
    p.add_argument(
        "--real-max-words",
        default="",
        help="cut held-in real documents, e.g. qmsum=4000 (a meeting within the window: no cascade per query)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None, help="base RetrieverConfig YAML the views come from (e.g. another model)")
    p.add_argument("--out", default="benchmarks/results/tune_fusion.json")
    p.add_argument("--top", type=int, default=15, help="candidates printed")
    p.add_argument(
        "--cases", type=Path, action="append", default=None, help="pickle of the computed views: reused if it exists"
    )
    p.add_argument("--check", type=Path, action="append", default=None, help="held-out views to replay the levers on")
    args = p.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    paths = args.cases or []
    base_config = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) if args.config else None
    if paths and all(path.is_file() for path in paths):
        cases = [c for path in paths for c in load_cases(path)]
    else:
        grans = [g for g in args.granularities.split(",") if g]
        cut = {k: int(v) for k, v in (item.split("=") for item in args.real_max_words.split(",") if item)}
        cases = collect(
            tasks, [int(w) for w in args.words.split(",")], args.n, args.seed, 0,
            docs=args.docs, per_doc=args.per_doc, granularities=grans, max_words=cut,
            base_config=base_config,
        )  # fmt: skip
        if paths:
            paths[0].write_bytes(pickle.dumps(cases))
    tasks = list(dict.fromkeys(c.task for c in cases))
    default = model_fusion(RetrieverConfig.coerce(base_config)).documents  # the model's own, under weights: auto
    rows = evaluate(cases, default=default)
    payload: dict[str, Any] = {"meta": run_metadata(), "settings": _settings(args), "rows": rows}
    out = [f"Held-in ({len(cases)} question views):", "", candidate_table(rows, tasks, args.top), ""]
    out += ["Levers, held-in (nDCG@10 change against the shipped default):", "", lever_table(rows, tasks), ""]
    if args.check:
        checked = [c for path in args.check for c in load_cases(path)]
        check_tasks = list(dict.fromkeys(c.task for c in checked))
        check_rows = evaluate(checked, default=default)
        payload["check"] = check_rows
        out += [f"Levers, held-out ({len(checked)} question views; settings chosen on held-in):", ""]
        out += [lever_table(check_rows, check_tasks, held_in=rows), ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    sys.stdout.write("\n".join(out))
    return 0


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return {k: plain(v) for k, v in vars(args).items()}


if __name__ == "__main__":
    raise SystemExit(main())
