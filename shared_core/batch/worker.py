"""The Ray Data UDF of a batch run: one `AttentionRetriever` per actor, one `retrieve_many` per document group.

Each input row is one planned batch (a JSON payload of jobs and the inline texts they share); each output row is a
hit or, with `error_type` set, a failed job. A failure is caught per document group (and, when the group call
fails, per job), so one bad job never takes the batch or the actor down.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pyarrow as pa

from shared_core.batch.storage import ERROR_SCHEMA, HIT_SCHEMA, read_text
from shared_core.config import RetrieverConfig
from shared_core.document import Document
from shared_core.retriever import AttentionRetriever

logger = logging.getLogger(__name__)

OUTPUT_SCHEMA = pa.schema(list(HIT_SCHEMA) + [f for f in ERROR_SCHEMA if f.name not in HIT_SCHEMA.names])
"""What the UDF returns: the hit columns, plus `error_type`/`message` (set only on the row of a failed job)."""


class DocumentTooLongError(ValueError):
    """The document has more tokens than the run's memory budget (`max_document_tokens`) allows."""


def hit_rows(job: dict[str, Any], hits: list[Any]) -> list[dict[str, Any]]:
    """Output rows of a job's hits, ranked from 1."""
    return [
        {
            "job_id": job["job_id"],
            "document_id": h.document_id,
            "query": job["query"],
            "rank": rank,
            "start": h.start,
            "end": h.end,
            "text": h.text,
            "score": h.score,
            "scores": json.dumps(h.scores, sort_keys=True),
            "reasons": list(h.reasons),
        }
        for rank, h in enumerate(hits, 1)
    ]


def error_row(job: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """Output row of a failed job."""
    return {
        "job_id": job["job_id"],
        "document_id": job.get("document_id"),
        "query": job.get("query"),
        "error_type": type(exc).__name__,
        "message": str(exc) or repr(exc),
    }


class RetrieveBatch:
    """Callable class for `Dataset.map_batches`: loads the models once in `__init__`, then serves batches."""

    def __init__(
        self,
        configs: dict[str, dict[str, Any]],
        default: str,
        max_document_tokens: int | None = None,
        trust_remote_code: bool = False,
        cpu_threads: int | None = None,
    ) -> None:
        if cpu_threads is not None:  # the actor's CPU share; torch would otherwise use every core of the node
            import torch

            torch.set_num_threads(cpu_threads)
        self._configs = {name: RetrieverConfig.coerce(c) for name, c in configs.items()}
        self._retrievers: dict[str, AttentionRetriever] = {}
        self._max_tokens = max_document_tokens
        self._trust = trust_remote_code
        self.retriever(default).warm_up()

    def retriever(self, name: str) -> AttentionRetriever:
        """The retriever of config `name`, built on first use (the default one in `__init__`)."""
        if name not in self._retrievers:
            self._retrievers[name] = AttentionRetriever(self._configs[name], trust_remote_code=self._trust)
        return self._retrievers[name]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict[str, Any]] = []
        for payload in batch.column("payload").to_pylist():
            rows.extend(self.run_payload(json.loads(payload)))
        return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)

    def run_payload(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows of one planned batch: its jobs grouped by (config, document), one `retrieve_many` per group."""
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for job in payload["jobs"]:
            groups.setdefault((job["config"], job["document_key"], job["document_id"]), []).append(job)
        rows: list[dict[str, Any]] = []
        for (config, key, document_id), jobs in groups.items():
            rows.extend(self._run_group(config, document_id, payload["documents"].get(key), jobs))
        return rows

    def _run_group(
        self, config: str, document_id: str, text: str | None, jobs: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        try:
            retriever = self.retriever(config)
            if text is None:
                text = read_text(jobs[0]["document_path"])
            if self._max_tokens is not None:
                n = len(retriever.model.tokenizer(text, add_special_tokens=False)["input_ids"])
                if n > self._max_tokens:
                    raise DocumentTooLongError(
                        f"document {document_id!r} has {n:,} tokens; this run's budget is max_document_tokens="
                        f"{self._max_tokens:,}"
                    )
            doc = Document(text=text, id=document_id)
        except Exception as exc:  # the document itself failed: every question on it fails with the same reason
            logger.warning("document %s failed: %s: %s", document_id, type(exc).__name__, exc)
            return [error_row(j, exc) for j in jobs]
        top_k = max(j["top_k"] for j in jobs)
        try:
            per_query = retriever.retrieve_many([j["query"] for j in jobs], [doc], top_k=top_k)
        except Exception as exc:
            logger.warning("document %s: batched call failed (%s); retrying its jobs one by one", document_id, exc)
            per_query = None
        rows: list[dict[str, Any]] = []
        for i, job in enumerate(jobs):
            if per_query is not None:
                rows.extend(hit_rows(job, per_query[i][: job["top_k"]]))
                continue
            try:
                rows.extend(hit_rows(job, retriever.retrieve(job["query"], [doc], top_k=job["top_k"])))
            except Exception as exc:
                rows.append(error_row(job, exc))
        return rows
