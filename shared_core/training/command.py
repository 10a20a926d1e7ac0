"""`attnret detect-heads`, `train-heads` and `train-adapter`: their arguments and handlers (the CLI adds them with
`add_parsers`). All read labelled examples the same way (`data_options`) and write a head-set file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shared_core.terminal import arguments, output_file, show_progress
from shared_core.training.data_options import (
    COUNTS,
    add_data_arguments,
    check_counts,
    command_line,
    config_of,
    labelled_examples,
)
from shared_core.training.objectives import OBJECTIVES


def add_parsers(sub: Any) -> None:
    """Add the `detect-heads`, `train-heads` and `train-adapter` subcommands to the CLI's subparsers."""
    _add_detect_parser(sub)
    _add_train_parser(sub)
    _add_adapter_parser(sub)


def _add_detect_parser(sub: Any) -> None:
    detect = sub.add_parser("detect-heads", help="find the query-focused retrieval heads of a model")
    add_data_arguments(detect)
    detect.add_argument("--metric", choices=["ndcg", "gold_score"], default="ndcg", help="per-head quality measure")
    detect.add_argument("--k", type=int, default=10, help="cut-off of nDCG (default 10)")
    detect.set_defaults(func=cmd_detect_heads)


def _add_train_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train-heads",
        help="learn a weight per retrieval head from labelled examples (writes a weighted head-set file)",
        description="Capture every head's per-unit score on labelled examples (cached), keep the best --top heads "
        "and fit one non-negative weight per head with a multi-positive objective, early-stopped on validation "
        "documents. The file loads as attention.heads: FILE; its heads combine by their weights.",
    )
    add_data_arguments(p)
    p.add_argument("--objective", choices=OBJECTIVES, default="lsepair", help="training objective (default lsepair)")
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


ADAPTER_OPTIONS = (
    ("rank", int, "LoRA rank"),
    ("alpha", float, "LoRA alpha; the update is scaled alpha/rank"),
    ("lr", float, "AdamW learning rate"),
    ("weight_decay", float, "AdamW weight decay"),
    ("temperature", float, "scale of the z-scored unit scores in the loss"),
    ("accumulate", int, "questions per optimiser step"),
    ("epochs", int, "most epochs"),
    ("patience", int, "epochs without a validation gain before stopping"),
    ("validation", float, "share of examples (whole documents) validating"),
)
"""`train-adapter`'s numeric options: name, type and help (defaults from `AdapterSettings`)."""


def _add_adapter_parser(sub: Any) -> None:
    from shared_core.training.adapter_training import AdapterSettings

    d = AdapterSettings()
    p = sub.add_parser(
        "train-adapter",
        help="train a query adapter (LoRA on the query part) for a head set from labelled examples",
        description="Read each example's document once with the frozen model, then train LoRA pairs on the "
        "attention projections that only the question runs through, so the head set's unit scores rank the gold "
        "units first (LSEPair, early-stopped on validation documents). Writes the head-set file --out and the "
        "adapter beside it (<stem>.adapter.safetensors); attention.heads: FILE uses both. Documents must fit the "
        "model's window.",
    )
    add_data_arguments(p, heads=False)
    for name, kind, text in ADAPTER_OPTIONS:
        default = getattr(d, name)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=f"{text} (default {default:g})")
    p.add_argument(
        "--targets",
        default=",".join(d.targets),
        help=f"projections adapted, comma-separated (default {','.join(d.targets)})",
    )
    p.set_defaults(func=cmd_train_adapter)


def _prepare(args: argparse.Namespace, counts: tuple[str, ...], loader: Any) -> tuple[Path, Any, dict[str, Any]]:
    """What every command starts with: checked counts, the output file, the labelled examples, and the config and
    run options they hand on (config, progress, data sources, command line)."""
    check_counts(args, (*COUNTS, *counts))
    out = output_file(args.out)
    cfg = config_of(args).model_copy(update={"show_progress": show_progress(args)})
    run = {"config": cfg, "show_progress": cfg.show_progress, "sources": args.data, "command": command_line()}
    return out, labelled_examples(args, loader), run


def cmd_detect_heads(args: argparse.Namespace) -> int:
    """Detect the retrieval heads of a model on labelled examples and write a head-set file."""
    from shared_core.training.head_detection import detect_heads, detection_examples

    out, examples, run = _prepare(args, ("top", "k"), detection_examples)
    result = detect_heads(examples, **run, **arguments(args, ("top", "metric", "k", "max_layer")))
    result.save(out)
    sys.stdout.write(f"wrote {len(result.heads)} heads to {args.out}: {', '.join(result.heads)}\n")
    return 0


def cmd_train_heads(args: argparse.Namespace) -> int:
    """Train head weights on labelled examples and write a weighted head-set file."""
    from shared_core.training.head_training import TrainSettings, train_heads, training_examples

    settings = TrainSettings(**arguments(args, ("objective", "top", "select", "validation", "l2", "steps", "seed")))
    settings.check()  # before the examples are read
    out, examples, run = _prepare(args, ("top", "steps"), training_examples)
    result = train_heads(examples, settings=settings, cache_dir=args.cache_dir, max_layer=args.max_layer, **run)
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


def cmd_train_adapter(args: argparse.Namespace) -> int:
    """Train a query adapter on labelled examples; write the head-set file naming it and the adapter beside it."""
    from shared_core.training.adapter_training import AdapterSettings, train_adapter
    from shared_core.training.head_training import training_examples

    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    settings = AdapterSettings(**arguments(args, [n for n, _, _ in ADAPTER_OPTIONS]), targets=targets, seed=args.seed)
    settings.check()  # before the examples are read
    out, examples, run = _prepare(args, (), training_examples)
    result = train_adapter(examples, settings=settings, **run)
    adapter_path = result.save(out)
    t = result.training
    none = "; no gain: the adapter is the frozen model" if t["best_epoch"] == 0 else ""
    sys.stdout.write(
        f"examples: {result.n_examples} used, {len(result.skipped)} skipped "
        f"({t['train_examples']} train / {t['validation_examples']} validation, split by document)\n"
        f"validation nDCG@10: {t['validation_ndcg_frozen']:.3f} frozen, {t['validation_ndcg']:.3f} with the adapter "
        f"(epoch {t['best_epoch']} of {t['epochs_run']}{none})\n"
        f"wrote {out} and its adapter {adapter_path.name} (use: attention.heads: {out})\n"
    )
    return 0
