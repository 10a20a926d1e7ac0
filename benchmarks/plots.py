"""The README's plots, drawn from the benchmarks' JSON results (no measurement here): memory, time and quality
against document length, each captioned with the date, commit and machine of the runs it shows.

    python -m benchmarks.plots                        # benchmarks/results/*.json -> docs/*.png
    python -m benchmarks.plots --results DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

from benchmarks.naive import naive_gb

logger = logging.getLogger("benchmarks.plots")

PLOTS = ("memory_vs_length.png", "time_vs_length.png", "quality_vs_length.png")

PERF_SERIES = {
    "first_query": "attnret, first query",
    "next_query": "attnret, further query",
    "bare_prefill": "bare SDPA forward (limit)",
    "naive_eager": "naive output_attentions",
    "dense": "dense (MiniLM)",
}
CASCADE_SERIES = {
    "cascade": "attnret cascade (past the window)",
    "streaming": "StreamingLLM, same slots",
    "truncate": "truncation to the window",
}


def _load(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        logger.warning("%s not found: its series are left out", path)
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _caption(*runs: tuple[str, dict[str, Any] | None]) -> str:
    parts = []
    for name, data in runs:
        meta = (data or {}).get("meta")
        if meta:
            device = meta.get("device") or data.get("device", "")  # type: ignore[union-attr]
            parts.append(
                f"{name}: {meta['date']}, {meta['commit']}, {meta['machine']}{', ' + device if device else ''}"
            )
    return "\n".join(parts)


def _series(rows: list[dict[str, Any]], method: str, x: str, y: str) -> tuple[list[float], list[float]]:
    """Mean y per x for one method, sorted by x."""
    acc: dict[float, list[float]] = {}
    for r in rows:
        if r.get("method") == method and r.get(y) is not None:
            acc.setdefault(float(r[x]), []).append(float(r[y]))
    xs = sorted(acc)
    return xs, [sum(acc[v]) / len(acc[v]) for v in xs]


def _finish(fig: Any, ax: Any, caption: str, path: Path) -> None:
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.text(0.01, 0.01, caption, fontsize=6, va="bottom", ha="left", color="#555")
    fig.tight_layout(rect=(0, 0.06 + 0.02 * caption.count("\n"), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    logger.info("wrote %s", path)


def _flat_perf_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """perf.py's attnret group row as one row per series (first query, further query); other rows as they are."""
    out = []
    for r in rows:
        if r.get("method") != "attnret":
            out.append(r)
            continue
        out.append({**r, "method": "first_query", "seconds": r.get("first_query_s")})
        out.append({"method": "next_query", "tokens": r["tokens"], "seconds": r.get("next_query_s")})
    return out


def memory_and_time(perf: dict[str, Any] | None, cascade: dict[str, Any] | None, out: Path) -> list[Path]:
    """Peak memory and seconds per document against tokens: perf.py's methods and cascade_needle.py's."""
    perf_rows = _flat_perf_rows((perf or {}).get("rows", []))
    cascade_rows = (cascade or {}).get("rows", [])
    caption = _caption(("perf", perf), ("cascade", cascade))
    written = []
    for key, label, name in (
        ("peak_mb", "peak memory above the loaded model (MB)", PLOTS[0]),
        ("seconds", "seconds per document", PLOTS[1]),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method, text in PERF_SERIES.items():
            if key == "peak_mb" and method == "next_query":
                continue
            xs, ys = _series(perf_rows, method, "tokens", key)
            if xs:
                ax.plot(xs, ys, marker="o", label=text)
        for method, text in CASCADE_SERIES.items():
            xs, ys = _series(cascade_rows, method, "prompt_tokens", key)
            if xs:
                ax.plot(xs, ys, marker="s", linestyle="--", label=text)
        if key == "peak_mb":
            longest = max([r["tokens"] for r in perf_rows] + [r["prompt_tokens"] for r in cascade_rows] + [2000])
            xs = [1000 * 2**i for i in range(12) if 1000 * 2**i <= longest * 1.5]
            ax.plot(
                xs,
                [naive_gb(x) * 1024 for x in xs],
                color="grey",
                linestyle=":",
                label="attention maps alone (n², estimate)",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("document tokens")
        ax.set_ylabel(label)
        _finish(fig, ax, caption, out / name)
        written.append(out / name)
    return written


def quality(results: dict[str, Any] | None, out: Path) -> Path | None:
    """Overall nDCG@10 of every method against document length in words."""
    rows = [r for r in (results or {}).get("results", []) if r["task"] == "overall"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        xs, ys = _series(rows, method, "words", "ndcg@10")
        ax.plot(xs, ys, marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("document length (words)")
    ax.set_ylabel("nDCG@10 (macro over tasks)")
    ax.set_ylim(0, 1)
    _finish(fig, ax, _caption(("quality", results)), out / PLOTS[2])
    return out / PLOTS[2]


def readme_block(folder: str = "docs") -> str:
    """Markdown that shows the plots (the README's plots section)."""
    return "\n\n".join(f"![{p[:-4].replace('_', ' ')}]({folder}/{p})" for p in PLOTS)


def main(argv: Sequence[str] | None = None) -> int:
    """Draw every plot whose results exist."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="python -m benchmarks.plots", description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"), help="folder of the JSON results")
    p.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNG files")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    perf = _load(args.results / "perf.json")
    cascade = _load(args.results / "cascade_needle.json")
    written = memory_and_time(perf, cascade, args.out)
    q = quality(_load(args.results / "quality.json"), args.out)
    written += [q] if q else []
    sys.stdout.write("\n".join(str(w) for w in written) + "\n")
    return 0 if written else 1


if __name__ == "__main__":
    raise SystemExit(main())
