"""The labelled-data options `attnret detect-heads`, `train-heads` and `train-adapter` share: their arguments, and
the examples and config they give."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from shared_core.config import RetrieverConfig

E = TypeVar("E")
COUNTS = ("examples", "words", "per_doc", "real_max_words")
"""The options that count something and must be positive."""


def add_data_arguments(p: argparse.ArgumentParser, heads: bool = True) -> None:
    """`--data`, `--out`, `--model`, `--examples`, `--words`, `--per-doc`, `--real-max-words`, `--seed`, `--offset`,
    `--config` and `--progress`; with `heads` (the head commands) also `--top` and `--max-layer`."""
    p.add_argument(
        "--data",
        action="append",
        required=True,
        help="labelled examples: babi-qaN, hotpotqa, covidqa, qmsum (held-in documents only), a file (repeatable)",
    )
    p.add_argument("--out", required=True, help="head-set YAML file to write (atomically)")
    if heads:
        p.add_argument("--top", type=int, default=16, help="heads to keep (default 16; train-heads then weights them)")
    p.add_argument("--model", help="hub id, folder, .gguf or named model (default: the embedded default model)")
    p.add_argument("--examples", type=int, default=128, help="examples in all, split across --data (default 128)")
    p.add_argument("--words", type=int, default=1500, help="length of built documents in words (default 1500)")
    p.add_argument("--per-doc", type=int, default=4, help="questions per held-in document of covidqa/qmsum (default 4)")
    p.add_argument(
        "--real-max-words",
        type=int,
        default=4000,
        help="cut covidqa/qmsum documents after the paragraph/turn reaching this many words, so they fit the "
        "model's window (default 4000)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of example sampling and document building")
    p.add_argument("--offset", type=int, default=0, help="skip this many questions of each built task or file")
    if heads:
        p.add_argument(
            "--max-layer",
            type=int,
            help="take heads only from layers up to this one (0-indexed; negative from the end): the forward of every "
            "query stops at the set's deepest layer, so a shallower set is faster (default: every layer)",
        )
    p.add_argument("--config", help="a RetrieverConfig YAML file (scoring rule, prompt, units, device)")
    p.add_argument("--progress", action="store_true", help="show progress bars on stderr (default: only on a terminal)")


def check_counts(args: argparse.Namespace, names: Sequence[str] = COUNTS) -> None:
    """Each counting option must be a positive integer (a ValueError naming the flag)."""
    for name in names:
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def config_of(args: argparse.Namespace) -> RetrieverConfig:
    """The config of `--config` (the defaults without one), with `--model` as its model name when given."""
    return with_model(RetrieverConfig.from_yaml(Path(args.config)) if args.config else RetrieverConfig(), args)


def with_model(config: RetrieverConfig, args: argparse.Namespace) -> RetrieverConfig:
    """`config` with `--model` as its model name, when given."""
    if not args.model:
        return config
    return config.model_copy(update={"model": config.model.model_copy(update={"name": args.model})})


def labelled_examples(args: argparse.Namespace, loader: Callable[..., list[E]]) -> list[E]:
    """The examples of `--data` through `loader` (`detection_examples` or `training_examples`), the `--examples`
    budget split evenly across the sources."""
    return loader(
        args.data,
        n=max(1, args.examples // len(args.data)),
        target_words=args.words,
        seed=args.seed,
        offset=args.offset,
        per_document=args.per_doc,
        real_max_words=args.real_max_words,
    )


def command_line() -> str | None:
    """The command as typed, recorded in the files a run writes (None when not run as `attnret`)."""
    return "attnret " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("attnret") else None


__all__ = ["add_data_arguments", "check_counts", "command_line", "labelled_examples", "with_model"]
