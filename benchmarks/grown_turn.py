"""A conversation grown by one turn, past the window: resuming inside the last chunk against reading it again.

    python -m benchmarks.grown_turn [--tokens 20000,40000] [--pairs 2] [--out benchmarks/results/grown_turn.json]

Per length, one document is read once through the cascade (kept, as the retriever keeps it); then, alternating
in one process (shared machines are noisy), the document grown by a turn (a different turn each time) is scored
for a new question and the "N/A" calibration, as `score_units` does past the window: `carried` resumes inside the
old last chunk (`resume_point`), `chunk_start` takes the same chunks but reads the old last chunk from its start
(what the pass did before). Reported: each turn's seconds and its ratio to the first read, both measured here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.perf import GROWN_TURN, QUERY, _document, _questions
from benchmarks.report import command_line, run_metadata

logger = logging.getLogger("benchmarks.grown_turn")


def measure(n_tokens: int, pairs: int) -> dict[str, Any]:
    """First read of a ~`n_tokens` document, then `pairs` alternating (carried, chunk_start) grown turns."""
    import torch

    from shared_core import AttentionRetriever, Document, RetrieverConfig
    from shared_core.engine.attention_engine import CALIBRATION_QUERY
    from shared_core.engine.cascade_scoring import cascade_token_scores
    from shared_core.engine.cascade_state import resume_point

    r = AttentionRetriever(RetrieverConfig.model_validate({"cascade": {"reuse_disk": False}}))
    r.warm_up()
    engine, model, cfg = r.engine, r.model.model, r.config.cascade
    layers, batch = r.head_selection.layers, r.config.attention.query_batch

    def suffixes(question: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        parts = [engine.prompt.query(q, r.config.attention.query_rows) for q in (question, CALIBRATION_QUERY)]
        return [(torch.tensor(p.ids), torch.tensor(p.rows)) for p in parts]

    def ids(text: str) -> torch.Tensor:
        return torch.tensor(engine.document_tokens(Document(text)).ids, dtype=torch.long)

    doc = _document(n_tokens)
    first_ids = ids(doc)
    with torch.inference_mode():
        t = time.perf_counter()
        state = cascade_token_scores(model, first_ids, suffixes(QUERY), layers, cfg, keep=True, batch_size=batch).state
        first = time.perf_counter() - t
    assert state is not None
    row: dict[str, Any] = {"tokens": len(first_ids), "first_s": first, "carried_s": [], "chunk_start_s": []}
    questions = _questions(2 * pairs)
    for i in range(2 * pairs):
        grown = ids(doc + GROWN_TURN + f" Turn {i}.")
        point = resume_point(state, grown)
        assert point is not None and point.carried > 0
        mode = "carried_s" if i % 2 == 0 else "chunk_start_s"
        if mode == "chunk_start_s":
            point = dataclasses.replace(point, carried=0)
        with torch.inference_mode():
            t = time.perf_counter()
            cascade_token_scores(
                model, grown, suffixes(questions[i]), layers, cfg, keep=True, resume=point, batch_size=batch
            )
            row[mode].append(time.perf_counter() - t)
        row.setdefault(mode.removesuffix("_s") + "_tokens_read", len(grown) - point.start)
        logger.info("%d tokens, %s: %.2fs", len(first_ids), mode, row[mode][-1])
    return row


def main(argv: Sequence[str] | None = None) -> int:
    """Measure each length and write the JSON results."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.grown_turn", description=__doc__.splitlines()[0])
    p.add_argument("--tokens", default="20000,40000", help="comma-separated document lengths (past the window)")
    p.add_argument("--pairs", type=int, default=2, help="alternating (carried, chunk_start) pairs per length")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/grown_turn.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = [measure(int(n), args.pairs) for n in args.tokens.split(",")]
    meta = {**run_metadata(), "command": command_line("benchmarks.grown_turn", argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    for row in rows:

        def cells(mode: str, row: dict[str, Any] = row) -> str:
            return ", ".join(f"{s:.2f}s ({s / row['first_s']:.1%})" for s in row[f"{mode}_s"])

        print(
            f"{row['tokens']} tokens: first read {row['first_s']:.1f}s; grown turn carried {cells('carried')}; "
            f"from the chunk start {cells('chunk_start')}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
