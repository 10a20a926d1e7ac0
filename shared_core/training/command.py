"""`attnret train-heads`: its arguments and handler (the CLI adds them with `add_parser`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shared_core.config import RetrieverConfig
from shared_core.terminal import show_progress
from shared_core.training.data_options import (
    COUNTS,
    add_data_arguments,
    check_counts,
    command_line,
    labelled_examples,
    output_file,
    with_model,
)
from shared_core.training.objectives import OBJECTIVES


def add_parser(sub: Any) -> None:
    """Add the `train-heads` subcommand to the CLI's subparsers."""
    p = sub.add_parser(
        "train-heads",
        help="learn a weight per retrieval head from labelled examples (writes a weighted head-set file)",
        description="Capture every head's per-unit score on labelled examples (cached), keep the best --top heads "
        "and fit one non-negative weight per head with a multi-positive objective, early-stopped on validation "
        "documents. The file loads as attention.heads: FILE; its heads combine by their weights.",
    )
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="head-set YAML file to write (atomically)")
    p.add_argument("--objective", choices=OBJECTIVES, default="lsepair", help="training objective (default lsepair)")
    p.add_argument("--top", type=int, default=16, help="heads kept before weighting (default 16)")
    p.add_argument(
        "--select",
        choices=["detection", "l1"],
        default="detection",
        help="how the kept heads are chosen: best detection score on the train split, or an L1 path",
    )
    p.add_argument("--validation", type=float, default=0.3, help="share of examples (whole documents) validating")
    p.add_argument("--l2", type=float, default=1e-2, help="L2 penalty on the weights (default 0.01)")
    p.add_argument("--steps", type=int, default=400, help="most optimisation steps (default 400)")
    p.add_argument("--cache-dir", help="feature cache folder (default: <model cache>/train-features)")
    p.set_defaults(func=cmd_train_heads)


def cmd_train_heads(args: argparse.Namespace) -> int:
    """Train head weights on labelled examples and write a weighted head-set file."""
    from shared_core.training.head_training import TrainSettings, train_heads, training_examples

    check_counts(args, (*COUNTS, "top", "steps"))
    out = output_file(args.out)
    settings = TrainSettings(
        objective=args.objective,
        top=args.top,
        select=args.select,
        validation=args.validation,
        l2=args.l2,
        steps=args.steps,
        seed=args.seed,
    )
    settings.check()
    cfg = RetrieverConfig.from_yaml(Path(args.config)) if args.config else RetrieverConfig()
    cfg = with_model(cfg.model_copy(update={"show_progress": show_progress(args)}), args)
    examples = labelled_examples(args, training_examples)
    result = train_heads(
        examples,
        cfg,
        settings,
        max_layer=args.max_layer,
        cache_dir=args.cache_dir,
        show_progress=cfg.show_progress,
        sources=args.data,
        command=command_line(),
    )
    result.save(out)
    t = result.training
    sys.stdout.write(
        f"examples: {result.n_examples} used, {len(result.skipped)} skipped "
        f"({t['train_examples']} train / {t['validation_examples']} validation, split by document)\n"
        f"validation nDCG@{t['k']}: {t['validation_ndcg_equal_weights']:.3f} with equal weights, "
        f"{t['validation_ndcg']:.3f} trained ({t['objective']}, step {t['best_step']})\n"
        f"wrote {len(result.heads)} weighted heads to {Path(args.out)}: {', '.join(result.heads)}\n"
    )
    return 0
