"""Every benchmark in one command: quality, speed/memory, the cascade needle, then the plots; the README's tables
are rewritten between their markers and the plots land in docs/.

    python -m benchmarks --readme README.md         # the full run (hours on a 2-core CPU; use a GPU)
    python -m benchmarks --quick --results /tmp/b --docs /tmp/b   # a few minutes: the whole pipeline, tiny sizes

Each benchmark keeps its own command-line options (``python -m benchmarks.quality --help`` etc.); this runs them
with their defaults, or their ``--quick`` forms, writing JSON into ``--results``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks import cascade_needle, perf, plots, quality
from benchmarks.report import update_readme_section

logger = logging.getLogger("benchmarks")

QUICK_ARGS = {
    "quality": ["--quick", "--n", "2", "--tasks", "babi-qa2,hotpotqa", "--no-progress"],
    "perf": ["--quick"],
    "cascade": ["--quick", "--sizes", "1500", "--depths", "0.5"],
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the three benchmarks and the plots; stop at the first that fails."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline end to end in minutes")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"), help="folder for the JSON results")
    p.add_argument("--docs", type=Path, default=Path("docs"), help="folder for the plots")
    p.add_argument("--readme", default=None, help="README whose benchmark sections are rewritten")
    args = p.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    readme = ["--readme", args.readme] if args.readme else []
    runs = (
        ("quality", quality.main, ["--out", str(args.results / "quality.json"), *readme]),
        ("perf", perf.main, ["--out", str(args.results / "perf.json"), *readme]),
        ("cascade", cascade_needle.main, ["--out", str(args.results / "cascade_needle.json"), *readme]),
    )
    for name, run, extra in runs:
        logger.info("== %s", name)
        code = run([*(QUICK_ARGS[name] if args.quick else []), *extra])
        if code != 0:
            logger.error("%s failed (exit %d)", name, code)
            return code
    code = plots.main(["--results", str(args.results), "--out", str(args.docs)])
    if code == 0 and args.readme:
        update_readme_section(args.readme, plots.readme_block(_relative(args.docs, Path(args.readme).parent)), "plots")
    return code


def _relative(folder: Path, base: Path) -> str:
    """`folder` as the README links it (relative to the README's folder when possible)."""
    try:
        return folder.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return folder.resolve().as_posix()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main(sys.argv[1:]))
