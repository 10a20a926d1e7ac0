"""`attnret train-heads`: its arguments and handler (the CLI adds them with `add_parser`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shared_core.config import RetrieverConfig
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
    p.add_argument(
        "--data",
        action="append",
        required=True,
        help="labelled examples: babi-qaN, hotpotqa, covidqa, qmsum (held-in documents only), a file (repeatable)",
    )
    p.add_argument("--model", help="hub id, folder, .gguf or named model (default: the embedded default model)")
    p.add_argument("--out", required=True, help="head-set YAML file to write (atomically)")
    p.add_argument("--examples", type=int, default=128, help="examples in all, split across --data (default 128)")
    p.add_argument("--words", type=int, default=1500, help="length of built documents in words (default 1500)")
    p.add_argument("--per-doc", type=int, default=4, help="questions per held-in document of covidqa/qmsum")
    p.add_argument("--real-max-words", type=int, default=4000, help="cut covidqa/qmsum documents (default 4000)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling, the split and training (default 0)")
    p.add_argument("--offset", type=int, default=0, help="skip this many questions of each built task or file")
    p.add_argument(
        "--max-layer",
        type=int,
        help="read heads of layers up to this one (0-indexed; negative from the end; default every layer): the "
        "forward of every query stops at the set's deepest weighted layer",
    )
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
    p.add_argument("--config", help="a RetrieverConfig YAML file (scoring rule, prompt, units, device)")
    p.add_argument("--progress", action="store_true", help="show progress bars on stderr (default: only on a terminal)")
    p.set_defaults(func=cmd_train_heads)


def cmd_train_heads(args: argparse.Namespace) -> int:
    """Train head weights on labelled examples and write a weighted head-set file."""
    from shared_core.training.head_training import TrainSettings, train_heads, training_examples

    for flag in ("top", "examples", "words", "per_doc", "real_max_words", "steps"):
        if getattr(args, flag) <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    out = Path(args.out).expanduser()
    if not out.resolve().parent.is_dir():
        raise ValueError(f"--out {args.out}: folder {out.resolve().parent} does not exist")
    if out.is_dir():
        raise ValueError(f"--out {args.out} is a directory")
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
    cfg = cfg.model_copy(update={"show_progress": _progress(args)})
    if args.model:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": args.model})})
    examples = training_examples(
        args.data,
        n=max(1, args.examples // len(args.data)),
        target_words=args.words,
        seed=args.seed,
        offset=args.offset,
        per_document=args.per_doc,
        real_max_words=args.real_max_words,
    )
    command = "attnret " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("attnret") else None
    result = train_heads(
        examples,
        cfg,
        settings,
        max_layer=args.max_layer,
        cache_dir=args.cache_dir,
        show_progress=cfg.show_progress,
        sources=args.data,
        command=command,
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


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only with --progress or on a terminal (quiet in scripts and logs)."""
    if args.progress:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
