"""Models side by side (issue 27): head detection by depth for a model, its head-set file, and the model table.

    python -m benchmarks.models detect --config benchmarks/results/models/qwen0.5b_bf16.yaml \\
        --data covidqa --data hotpotqa --data babi-qa1 --data babi-qa2 --examples 64 \\
        --out benchmarks/results/models/detect_qwen0.5b.json
    python -m benchmarks.models head-set benchmarks/results/models/detect_qwen0.5b.json --max-layer L \\
        --out shared_core/head_sets/qwen2.5-coder-0.5b-instruct.yaml
    python -m benchmarks.models table          # the Markdown table of the quality runs in benchmarks/results/models

``detect`` runs `attnret detect-heads` unbounded (every layer) and keeps every head's score: a head is scored alone,
so the best ``top`` of layers <= L is exactly what ``--max-layer L`` detects; it prints the mean score of that set by
deepest layer L. ``head-set`` writes that set as the head-set file, recording the equivalent `detect-heads` command.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.report import command_line, run_metadata

RESULTS = Path("benchmarks/results/models")
logger = logging.getLogger("benchmarks.models")


def best_by_depth(scores: dict[str, float], top: int) -> dict[int, tuple[list[str], float]]:
    """Per deepest layer L: the best ``top`` heads of layers <= L (best first) and their mean score."""
    depth = max(int(h.split("-")[0]) for h in scores)
    ranked = sorted(scores, key=lambda h: (-scores[h], *map(int, h.split("-"))))
    out: dict[int, tuple[list[str], float]] = {}
    for layer in range(depth + 1):
        kept = [h for h in ranked if int(h.split("-")[0]) <= layer][:top]
        out[layer] = (kept, sum(scores[h] for h in kept) / len(kept))
    return out


def detect_command(args: dict[str, Any], max_layer: int | None) -> str:
    """The `attnret detect-heads` line equivalent to this detection (bounded at ``max_layer``)."""
    parts = ["attnret detect-heads", *(f"--data {d}" for d in args["data"])]
    parts += [f"--config {args['config']}", f"--examples {args['examples']}", f"--words {args['words']}"]
    parts += [f"--per-doc {args['per_doc']}", f"--real-max-words {args['real_max_words']}", f"--seed {args['seed']}"]
    parts += [f"--top {args['top']}"]
    if max_layer is not None:
        parts.append(f"--max-layer {max_layer}")
    return " ".join(parts)


def cmd_detect(args: argparse.Namespace) -> int:
    """Unbounded detection; every head's score and the by-depth summary go to ``--out``."""
    from shared_core.config import RetrieverConfig
    from shared_core.training.data_options import labelled_examples
    from shared_core.training.head_detection import detect_heads, detection_examples

    cfg = RetrieverConfig.coerce(args.config)
    examples = labelled_examples(args, detection_examples)
    result = detect_heads(examples, cfg, top=args.top, show_progress=True, sources=args.data)
    settings = {k: getattr(args, k) for k in ("data", "config", "examples", "words", "per_doc", "real_max_words")}
    settings.update(seed=args.seed, top=args.top)
    by_depth = best_by_depth(result.scores, args.top)
    data = {
        "note": "Every head's mean nDCG@10 of the unbounded detection; the best `top` of layers <= L are what "
        "--max-layer L detects.",
        "command": command_line("benchmarks.models", sys.argv[1:]),
        "detect_command": detect_command(settings, None),
        "settings": settings,
        "model": result.model,
        "n_examples": result.n_examples,
        "template": result.template,
        "scoring_rule": result.scoring_rule,
        "versions": result.versions,
        "meta": run_metadata(),
        "by_depth": {str(layer): {"mean": round(m, 6), "heads": h} for layer, (h, m) in by_depth.items()},
        "scores": {h: round(s, 6) for h, s in result.scores.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    sys.stdout.write(depth_table(data) + "\n")
    return 0


def depth_table(data: dict[str, Any]) -> str:
    """Markdown: mean detection score of the best set by deepest layer, and its share of the unbounded set's."""
    rows = data["by_depth"]
    full = rows[max(rows, key=int)]["mean"]
    lines = [
        "| deepest layer L | mean nDCG@10 of the best 16 of layers <= L | share of unbounded |",
        "|---:|---:|---:|",
    ]
    for layer in sorted(rows, key=int):
        lines.append(f"| {layer} | {rows[layer]['mean']:.3f} | {rows[layer]['mean'] / full:.2f} |")
    return "\n".join(lines)


def cmd_head_set(args: argparse.Namespace) -> int:
    """Write the best heads of layers <= ``--max-layer`` from a ``detect`` JSON as a head-set file."""
    from shared_core.training.head_detection import DetectionResult

    data = json.loads(Path(args.detection).read_text(encoding="utf-8"))
    by_depth = best_by_depth(data["scores"], data["settings"]["top"])
    if args.max_layer == "auto":
        full = by_depth[max(by_depth)][1]
        args.max_layer = min(layer for layer, (_, mean) in by_depth.items() if mean >= args.keep * full)
        logger.info("shallowest layer keeping %.2f of the unbounded mean: %d", args.keep, args.max_layer)
    args.max_layer = int(args.max_layer)
    heads, _ = by_depth[args.max_layer]
    result = DetectionResult(
        heads=heads,
        scores=data["scores"],
        model=data["model"],
        metric="ndcg",
        k=10,
        n_examples=data["n_examples"],
        template=data["template"],
        scoring_rule=data["scoring_rule"],
        versions=data["versions"],
        sources=data["settings"]["data"],
        command=detect_command(data["settings"], args.max_layer) + f" --out {args.out}",
        max_layer=args.max_layer,
    )
    header = "".join(f"# {line}\n" for line in args.comment)
    Path(args.out).write_text(header + result.to_yaml(), encoding="utf-8")
    sys.stdout.write(f"wrote {len(heads)} heads to {args.out}: {', '.join(heads)}\n")
    return 0


@dataclass(frozen=True)
class TableModel:
    """One row of the model table: its name there, the model whose timings it shows (``settings_<timing>.json``),
    and where its held-in fused nDCG@10 is (a ``benchmarks.learn_fusion`` result in ``training/`` and its row: the 44
    held-in validation questions of COVID-QA, QMSum, bAbI and HotpotQA, no entities, the model's shipped heads)."""

    name: str
    timing: str
    held_in_file: str
    held_in_row: str = "shipped fusion"
    cpu_setting: str | None = None
    """The ``model_settings`` setting shown as the CPU default (float32 column); None = every non-bfloat16 row."""


MODELS = {
    "smollm2": TableModel("smollm2-135m-instruct", "smollm2", "learn_fusion_smollm2-135m.json"),
    "qwen0.5b": TableModel("qwen2.5-coder-0.5b-instruct", "qwen0.5b", "learn_fusion_qwen2.5-coder-0.5b.json"),
    "qwen1.5b": TableModel(
        "qwen2.5-coder-1.5b-instruct, bfloat16, default fusion",
        "qwen1.5b",
        "learn_fusion_qwen2.5-coder-1.5b-trained.json",
    ),
    "qwen1.5b_learned_fusion": TableModel(
        "qwen2.5-coder-1.5b-instruct, bfloat16, learned fusion",
        "qwen1.5b",
        "learn_fusion_qwen2.5-coder-1.5b-trained.json",
        "learned lsepair, minmax",
    ),
    "qwen1.5b_by_name": TableModel(
        "qwen2.5-coder-1.5b-instruct (default): by name, int8 on CPU, its shipped fusion",
        "chunk_qwen1.5b",
        "learn_fusion_qwen2.5-coder-1.5b-trained.json",
        "learned lsepair, minmax",
        cpu_setting="int8+p512",
    ),
}
"""Result-file label (``quality_<label>.json``, ``rerank_held_in_<label>.json``) -> its row."""


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _cell(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def model_rows(folder: Path = RESULTS) -> list[dict[str, Any]]:
    """One row per model with results in ``folder``: held-out nDCG@10 per set and method (``quality_<label>.json``),
    the held-in fused nDCG@10 (`TableModel`), held-in rerank nDCG@10 (``rerank_held_in_<label>.json``: HotpotQA
    questions 0-19, BM25 top 20 and own 10), first-query seconds and peak RSS per dtype (``settings_<timing>.json``)."""
    rows = []
    for label, model in MODELS.items():
        quality = _read(folder / f"quality_{label}.json")
        if quality is None:
            continue
        row: dict[str, Any] = {"label": label, "model": model.name, "commit": quality["meta"]["commit"]}
        for r in quality["results"]:
            if r["task"] in ("covidqa", "qmsum"):
                row[f"{r['task']}/{r['method']}"] = r["ndcg@10"]
                row[f"{r['task']}/{r['method']}/n"] = r["n"]
                row[f"{r['task']}/{r['method']}/s"] = r["sec_per_doc"]
        learned = _read(folder.parent / "training" / model.held_in_file)
        if learned is not None:
            row["held_in"] = next(r["validation"] for r in learned["rows"] if r["row"].startswith(model.held_in_row))
        rerank = _read(folder / f"rerank_held_in_{label}.json")
        for s in (rerank or {}).get("summary", []):
            row[f"rerank/{s['setting']}"] = s["metrics"]["attnret"]["ndcg@10"]
        settings = _read(folder / f"settings_{model.timing}.json")
        for s in (settings or {}).get("results", []):
            if model.cpu_setting and s["setting"] != model.cpu_setting:
                continue
            key = "bf16" if s["dtype"] == "bfloat16" else "fp32"
            row[f"first_s/{key}"] = s["first_query_s"]
            row[f"further_s/{key}"] = s["further_query_s"]
            row[f"rss/{key}"] = s["peak_rss_gb"]
            row["doc_tokens"] = s["doc_tokens"]
        rows.append(row)
    return rows


def seconds_per_question(row: dict[str, Any]) -> float | None:
    """The default's seconds per question, mean of the two sets: the methods share each document's read, so the
    first method to need a view pays for it (MiniLM in ``dense``, the model's read in ``qr-heads``); the default's
    cost is the sum of the three."""
    per_set = []
    for task in ("covidqa", "qmsum"):
        parts = [row.get(f"{task}/{m}/s") for m in ("dense", "qr-heads", "fused+entities")]
        if any(p is None for p in parts):
            return None
        per_set.append(sum(float(p) for p in parts if p is not None))
    return sum(per_set) / len(per_set)


def model_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per model the held-in fused and rerank nDCG@10, held-out nDCG@10 (attention alone, fused, BM25,
    MiniLM) per set, seconds per question of the fused default, first query on a ~5k-token paper (float32 / bfloat16),
    peak RSS."""
    head = (
        "| model | held-in fused | held-in rerank, top 20 / own 10 | COVID-QA: attention | fused | BM25 | MiniLM | "
        "QMSum: attention | fused | BM25 | MiniLM | s/question (default, all views) | "
        "first query, 5k-token paper, float32 / bfloat16 s | peak RSS GB |"
    )
    lines = [head, "|---|---:|---|" + "---:|" * 11]
    for r in rows:
        rerank = " / ".join(_cell(r.get(f"rerank/{k}")) for k in ("top20", "own"))
        cells = [r["model"], _cell(r.get("held_in")), rerank]
        for task in ("covidqa", "qmsum"):
            cells += [_cell(r.get(f"{task}/{m}")) for m in ("qr-heads", "fused+entities", "bm25", "dense")]
        cells.append(_cell(seconds_per_question(r), 2))
        cells.append(f"{_cell(r.get('first_s/fp32'), 1)} / {_cell(r.get('first_s/bf16'), 1)}")
        cells.append(" / ".join(_cell(r.get(f"rss/{k}"), 1) for k in ("fp32", "bf16") if r.get(f"rss/{k}")) or "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class SideBySide:
    """One model's held-out runs on the same questions as every other model's (files under ``benchmarks/results``):
    the built sets at 1,500 words (``built``: 8 questions per task from offset 50) and 6,000 words (``built6k``), the
    real sets (``real``: 6 documents per set, 22 COVID-QA and 22 QMSum questions at 4,000 words) and reranking
    (``rerank``: HotpotQA questions 20-39, BM25 top 20). None = not measured."""

    name: str
    built: str
    real: str
    built6k: str | None
    rerank: str
    all_heads: str | None = None
    """Another quality file of the same questions with the ``attention`` method (every head of the layer band)."""
    settings: str | None = None
    """A ``model_settings`` result file, and which of its settings is the model's CPU default (first query on the
    ~5k-token paper, peak RSS)."""
    setting: str = "default"
    real_skip: tuple[str, ...] = ()
    """Methods of the ``real`` file that are not this row's (``qr-heads`` read with another head set): shown as –."""


SIDE_BY_SIDE = (
    SideBySide(
        "smollm2-135m-instruct",
        "quality_readme.json",
        "models/quality_real6_smollm2.json",
        "models/quality_built6k_smollm2.json",
        "rerank.json",
        all_heads="models/quality_attention_smollm2.json",
        settings="models/settings_smollm2.json",
    ),
    SideBySide(
        "gemma-3-270m (no head set: the 8 heads of its full-attention layers 11 and 17)",
        "models/quality_gemma.json",
        "models/quality_gemma.json",
        "models/quality_built6k_gemma.json",
        "models/rerank_held_out_gemma.json",
        settings="models/settings_gemma.json",
    ),
    SideBySide(
        "qwen2.5-coder-0.5b-instruct (quality read in bfloat16)",
        "models/quality_qwen0.5b_6docs.json",
        "models/quality_qwen0.5b_6docs.json",
        "models/quality_built6k_qwen0.5b.json",
        "models/rerank_held_out_qwen0.5b.json",
        settings="models/settings_qwen0.5b.json",
    ),
    SideBySide(
        "qwen2.5-coder-1.5b-instruct (int8, the first trained head set, before `fusion.context`)",
        "models/quality_qwen1.5b_by_name.json",
        "models/quality_qwen1.5b_by_name.json",
        "models/quality_built6k_qwen1.5b_by_name.json",
        "models/rerank_held_out_qwen1.5b_by_name.json",
        all_heads="models/quality_attention_qwen1.5b.json",
        settings="models/settings_chunk_qwen1.5b.json",
        setting="int8+p512",
    ),
    SideBySide(
        "qwen2.5-coder-1.5b-instruct (default: by name, int8; the head set trained on whole meetings)",
        "models/quality_readme_qwen1.5b_whole.json",
        "models/quality_qwen1.5b_whole_heads.json",
        "models/quality_built6k_qwen1.5b_whole_heads.json",
        "models/rerank_held_out_qwen1.5b_whole_heads.json",
        all_heads="models/quality_attention_qwen1.5b.json",
        settings="models/settings_chunk_qwen1.5b.json",
        setting="int8+p512",
        real_skip=("qr-heads",),
    ),
)
"""The rows of `side_by_side_table`, smallest model first."""

SIDE_COLUMNS = (("built", "overall", 1500), ("built6k", "overall", 6000), ("real", "covidqa", 0), ("real", "qmsum", 0))


def _quality_cells(path: Path, task: str, words: int) -> dict[str, tuple[float, int]]:
    """Method -> (nDCG@10, n) of one task and length of a quality result file (empty if the file is missing)."""
    data = _read(path)
    if data is None:
        return {}
    return {r["method"]: (r["ndcg@10"], r["n"]) for r in data["results"] if r["task"] == task and r["words"] == words}


def side_by_side_rows(folder: Path = RESULTS.parent, models: Sequence[SideBySide] = SIDE_BY_SIDE) -> list[list[str]]:
    """Table cells: a baseline row (the better of BM25 and MiniLM, from the last model's files: every model's
    questions and units are the same), then per model, per set: all heads / shipped heads / the fused default."""
    rows: list[list[str]] = []
    baseline: list[str] = ["better of BM25 / MiniLM"]
    for i, model in enumerate(models):
        cells = [model.name]
        for attr, task, words in SIDE_COLUMNS:
            name = getattr(model, attr)
            got = _quality_cells(folder / name, task, words) if name else {}
            if attr == "real":
                got = {m: v for m, v in got.items() if m not in model.real_skip}
            if model.all_heads and "attention" not in got:
                extra = _quality_cells(folder / model.all_heads, task, words).get("attention")
                got.update({"attention": extra} if extra else {})
            parts = [got.get(m) for m in ("attention", "qr-heads", "fused+entities")]
            cells.append(" / ".join(_cell(p and p[0]) for p in parts) if got else "–")
            if i == len(models) - 1:
                best = max((got[m] for m in ("bm25", "dense") if m in got), default=None)
                baseline.append(f"{_cell(best and best[0])} (n = {best[1]})" if best else "–")
        rerank = _read(folder / model.rerank)
        top20 = next((s["metrics"] for s in (rerank or {}).get("summary", []) if s["setting"] == "top20"), None)
        cells.append(f"{top20['attention']['ndcg@10']:.3f} / {top20['attnret']['ndcg@10']:.3f}" if top20 else "–")
        if i == len(models) - 1:
            baseline.append(
                f"{max(top20['bm25']['ndcg@10'], top20['dense']['ndcg@10']):.3f} (n = 20)" if top20 else "–"
            )
            baseline.append("")
        timing = (_read(folder / model.settings) or {}) if model.settings else {}
        run = next((r for r in timing.get("results", []) if r["setting"] == model.setting), None)
        cells.append(f"{run['first_query_s']:.1f} s / {run['peak_rss_gb']:.1f} GB" if run else "–")
        rows.append(cells)
    return [baseline, *rows]


def side_by_side_table(folder: Path = RESULTS.parent) -> str:
    """Markdown: held-out nDCG@10 of every model on the same questions (per set: every head of the band / the
    shipped heads / the fused default; reranking: shipped heads / fused), and its CPU first query and peak RSS."""
    head = (
        "| model | built 1.5k words | built 6k words | COVID-QA | QMSum | rerank, BM25 top 20 | "
        "first query, 5k-token paper (CPU default) / peak RSS |\n"
        "|---|---:|---:|---:|---:|---:|---:|"
    )
    return "\n".join([head, *("| " + " | ".join(cells) + " |" for cells in side_by_side_rows(folder))])


def cmd_table(args: argparse.Namespace) -> int:
    """Print the model table of the results in ``--folder`` and the side-by-side table of held-out runs."""
    sys.stdout.write(model_table(model_rows(Path(args.folder))) + "\n\n")
    sys.stdout.write(side_by_side_table(Path(args.folder).parent) + "\n")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Subcommands: detect, head-set, table."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("detect", help="unbounded detection, every head's score kept")
    d.add_argument("--config", required=True, help="RetrieverConfig YAML naming the model")
    d.add_argument("--data", action="append", required=True)
    d.add_argument("--examples", type=int, default=64)
    d.add_argument("--words", type=int, default=1500)
    d.add_argument("--per-doc", type=int, default=4)
    d.add_argument("--real-max-words", type=int, default=4000)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--offset", type=int, default=0, help="skip this many questions of each built task or file")
    d.add_argument("--top", type=int, default=16)
    d.add_argument("--out", required=True)
    d.set_defaults(func=cmd_detect)
    h = sub.add_parser("head-set", help="write the head-set file of a depth from a detect JSON")
    h.add_argument("detection")
    h.add_argument("--max-layer", required=True, help="deepest layer, or 'auto': the shallowest one keeping --keep")
    h.add_argument(
        "--keep",
        type=float,
        default=0.94,
        help="share of the unbounded set's mean score --max-layer auto keeps (default 0.94: SmolLM2's shipped depth "
        "18 kept 0.401/0.426)",
    )
    h.add_argument("--out", required=True)
    h.add_argument("--comment", action="append", default=[], help="a comment line for the file's head")
    h.set_defaults(func=cmd_head_set)
    t = sub.add_parser("table", help="the model table of the results folder")
    t.add_argument("--folder", default=str(RESULTS))
    t.set_defaults(func=cmd_table)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
