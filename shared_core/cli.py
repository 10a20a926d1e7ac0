"""The `attnret` command line: search documents (and more subcommands as the core grows)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import RetrieverConfig
from .document import Document
from .retriever import AttentionRetriever

logger = logging.getLogger("attnret")


def _read_documents(files: Sequence[str]) -> list[Document]:
    docs = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise SystemExit(f"attnret: no such file: {f}")
        docs.append(Document(text=path.read_text(encoding="utf-8"), id=str(path)))
    return docs


def _load_config(path: str | None) -> RetrieverConfig:
    cfg = RetrieverConfig.from_yaml(path) if path else RetrieverConfig()
    return cfg.model_copy(update={"show_progress": True})


def cmd_search(args: argparse.Namespace) -> int:
    """Rank the units of the given files for a query and print them."""
    retriever = AttentionRetriever(_load_config(args.config))
    hits = retriever.retrieve(args.query, _read_documents(args.file), top_k=args.top_k)
    if args.json:
        json.dump([h.to_dict() for h in hits], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    for rank, h in enumerate(hits, 1):
        views = " ".join(f"{k}={v:.4g}" for k, v in h.scores.items())
        sys.stdout.write(
            f"{rank:>3}. [{h.score:.3f}] {h.document_id}:{h.start}-{h.end} ({views}; {', '.join(h.reasons)})\n"
        )
        sys.stdout.write(f"     {h.text}\n")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Write a self-contained HTML page explaining why each sentence scored as it did."""
    from .explain import write_html

    retriever = AttentionRetriever(_load_config(args.config))
    explanation = retriever.explain(args.query, _read_documents(args.file), top_k=args.top_k)
    write_html(explanation, args.out)
    if args.json:
        Path(args.json).write_text(explanation.to_json(indent=2), encoding="utf-8")
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


def cmd_detect_heads(args: argparse.Namespace) -> int:
    """Detect the retrieval heads of a model on labelled examples and write a head-set file."""
    from .datasets import load_examples
    from .head_detection import detect_heads

    cfg = _load_config(args.config)
    if args.model:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": args.model})})
    per_source = max(1, args.examples // len(args.data))
    examples = []
    for source in args.data:
        examples.extend(
            load_examples(source, n=per_source, target_words=args.words, seed=args.seed, offset=args.offset)
        )
    command = "attnret " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("attnret") else None
    result = detect_heads(
        examples,
        cfg,
        top=args.top,
        metric=args.metric,
        k=args.k,
        show_progress=True,
        sources=args.data,
        command=command,
    )
    result.save(args.out)
    sys.stdout.write(f"wrote {len(result.heads)} heads to {args.out}: {', '.join(result.heads)}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="attnret", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    search = sub.add_parser("search", help="rank the sentences of long documents for a query")
    search.add_argument("--file", action="append", required=True, help="a text file to search (repeatable)")
    search.add_argument("--query", required=True, help="the question or query")
    search.add_argument("--config", help="a RetrieverConfig YAML file")
    search.add_argument("--top-k", type=int, default=10, help="how many units to print (default 10)")
    search.add_argument("--json", action="store_true", help="print the hits as JSON")
    search.set_defaults(func=cmd_search)

    explain = sub.add_parser("explain", help="write an HTML page showing how every sentence scored")
    explain.add_argument("--file", action="append", required=True, help="a text file (repeatable)")
    explain.add_argument("--query", required=True, help="the question or query")
    explain.add_argument("--out", required=True, help="HTML file to write")
    explain.add_argument("--json", help="also write the explanation data as JSON to this file")
    explain.add_argument("--config", help="a RetrieverConfig YAML file")
    explain.add_argument("--top-k", type=int, default=10, help="hits listed on the page (default 10)")
    explain.set_defaults(func=cmd_explain)

    detect = sub.add_parser("detect-heads", help="find the query-focused retrieval heads of a model")
    detect.add_argument(
        "--data", action="append", required=True, help="labelled examples: babi-qaN, hotpotqa, a file (repeatable)"
    )
    detect.add_argument("--model", help="hub id, folder or .gguf (default: the embedded default model)")
    detect.add_argument("--out", required=True, help="head-set YAML file to write")
    detect.add_argument("--top", type=int, default=16, help="heads to keep (default 16)")
    detect.add_argument("--examples", type=int, default=128, help="examples in all, split across --data (default 128)")
    detect.add_argument("--words", type=int, default=1500, help="length of built documents in words (default 1500)")
    detect.add_argument("--seed", type=int, default=0, help="seed of example sampling and document building")
    detect.add_argument("--offset", type=int, default=0, help="skip this many HotpotQA questions (held-out splits)")
    detect.add_argument("--metric", choices=["ndcg", "gold_score"], default="ndcg", help="per-head quality measure")
    detect.add_argument("--k", type=int, default=10, help="cut-off of nDCG (default 10)")
    detect.add_argument("--config", help="a RetrieverConfig YAML file (scoring rule, prompt, device)")
    detect.set_defaults(func=cmd_detect_heads)

    from .batch.command import add_parser as add_batch_parser  # `attnret batch`: arguments and handler there

    add_batch_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `attnret` script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except (ValueError, TypeError) as exc:
        sys.stderr.write(f"attnret: error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
