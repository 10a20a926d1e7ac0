"""The `attnret batch` subcommand: its arguments and a handler that hands them to `run_batch`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shared_core.terminal import arguments, show_progress

EPILOG = (
    "Jobs: one JSON object per line (or Parquet rows) with `query` and `document` (text) or `document_path` (path "
    "or URI), optionally `job_id`, `document_id`, `top_k`, `config` (a NAME given with --config NAME=FILE). "
    "Outputs are folders of part files; rerunning the same command skips the jobs already written."
)

RUN_OPTIONS = (
    "top_k",
    "ray_address",
    "num_cpus",
    "concurrency",
    "num_cpus_per_worker",
    "num_gpus_per_worker",
    "batch_size",
    "max_document_tokens",
)
"""The options handed to `run_batch` under their own names."""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add `batch` to the `attnret` subparsers."""
    p = sub.add_parser("batch", help="run a table of (query, document) jobs on Ray Data, resumably", epilog=EPILOG)
    p.add_argument("--jobs", required=True, help="jobs table: *.jsonl or *.parquet (local path or URI)")
    p.add_argument("--out", required=True, help="hits output folder (*.parquet: Parquet parts; *.jsonl: JSON lines)")
    p.add_argument("--errors", help="failed-jobs output folder (default: next to --out, <name>.errors.jsonl)")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="[NAME=]FILE",
        help="RetrieverConfig YAML: FILE is the default config, NAME=FILE one that jobs name in `config` (repeatable)",
    )
    p.add_argument("--top-k", type=int, default=10, help="hits per job when the job gives no top_k (default 10)")
    p.add_argument("--ray-address", help="join this Ray cluster ('auto', 'ray://host:10001'); default: local Ray")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--concurrency", type=int, help="actors, each with its own model (default 1, or one per GPU)")
    p.add_argument("--num-cpus-per-worker", type=float, default=1, help="CPUs reserved per actor (default 1)")
    p.add_argument("--num-gpus-per-worker", type=float, default=0, help="GPUs per actor (default 0: CPU)")
    p.add_argument("--batch-size", type=int, default=16, help="jobs per batch at most (default 16)")
    p.add_argument("--max-document-tokens", type=int, help="fail jobs whose document is longer (memory budget)")
    p.add_argument(
        "--progress",
        action="store_true",
        help="show Ray Data's progress bars on stderr; the default shows them only on a terminal",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the batch and print its summary; exit status 1 when any job failed."""
    from shared_core.batch.runner import run_batch

    default, named = None, {}
    for item in args.config:
        name, sep, path = item.partition("=")
        if not sep:
            if default is not None:
                raise ValueError("--config FILE given twice; name the others --config NAME=FILE")
            default = item
        elif not name or not path:
            raise ValueError(f"--config {item!r}: expected FILE or NAME=FILE")
        else:
            named[name] = path
    summary = run_batch(
        args.jobs,
        args.out,
        errors=args.errors,
        config=default,
        configs=named,
        show_progress=show_progress(args),
        **arguments(args, RUN_OPTIONS),
    )
    sys.stdout.write(summary.line() + "\n")
    return 1 if summary.failed else 0
