"""Batch jobs: read a jobs table, check each row into a `Job` (or a `JobError`), and plan batches by document.

A job asks one query of one document. Rows come from JSONL or Parquet (a local path or any URI pyarrow.fs opens) or
from memory; a bad row becomes an error record and never stops the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared_core.validation import check_query, check_top_k

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "default"
"""Name of the caller's main config; a job without a `config` field uses it."""
FIELDS = ("job_id", "query", "document", "document_path", "document_id", "top_k", "config")
BUCKET_BASE_CHARS = 8_000
"""Documents below this many characters share length bucket 0; each next bucket doubles the length."""


@dataclass(frozen=True)
class Job:
    """One checked job: a query of one document (inline text or a path/URI read by the worker)."""

    job_id: str
    query: str
    document_key: str
    """What identifies the document's content: ``sha256`` of the inline text, or ``path:<path>`` (jobs of one
    document go to one worker batch, which reads and prefills it once)."""
    document_id: str
    top_k: int
    config: str
    """The name of the config the job runs with (`--config NAME=FILE`; the default config when it names none)."""
    size: int
    """Characters of the inline text or bytes of the file: its length bucket (`BUCKET_BASE_CHARS`)."""
    document: str | None
    """The inline text (None: the worker reads `document_path`)."""
    document_path: str | None


@dataclass(frozen=True)
class JobError:
    """Why a job produced no hits: the exception's class name and message."""

    job_id: str
    error_type: str
    message: str
    document_id: str | None = None
    query: str | None = None


@dataclass
class LoadedJobs:
    """What `load_jobs` made of a jobs table: the valid jobs, the rejected rows, and repeated rows dropped."""

    jobs: list[Job]
    errors: list[JobError]
    duplicates: int


def length_bucket(size: int) -> int:
    """0 below BUCKET_BASE_CHARS, then one bucket per doubling of the length."""
    return 0 if size < BUCKET_BASE_CHARS else int(math.log2(size / BUCKET_BASE_CHARS)) + 1


def read_rows(source: str | Path | Sequence[Mapping[str, Any]] | Any) -> list[tuple[int, Mapping[str, Any] | str]]:
    """(row number, row) for each row of `source`; a JSONL line that does not parse comes back as its error text.

    `source` is a `.jsonl`/`.json` (JSON lines) or `.parquet` file (local path or URI), a pyarrow Table, or a
    sequence of mappings.
    """
    if isinstance(source, Sequence) and not isinstance(source, str | bytes):
        return list(enumerate(source, 1))
    if hasattr(source, "to_pylist") and hasattr(source, "schema"):  # a pyarrow Table
        return list(enumerate(source.to_pylist(), 1))
    if not isinstance(source, str | Path):
        raise TypeError(f"jobs must be a path/URI, a pyarrow Table or a list of dicts, got {type(source).__name__}")
    name = str(source)
    try:
        return _read_file_rows(name)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise ValueError(f"jobs file: {exc}") from None


def _read_file_rows(name: str) -> list[tuple[int, Mapping[str, Any] | str]]:
    """Rows of a JSONL or Parquet jobs file (by its suffix)."""
    from shared_core.batch.storage import open_input

    suffix = name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""
    if suffix == "parquet":
        import pyarrow.parquet as pq

        with open_input(name, "jobs file") as f:
            return list(enumerate(pq.read_table(f).to_pylist(), 1))
    if suffix not in ("jsonl", "json", "ndjson"):
        raise ValueError(f"jobs file {name!r}: unknown format; name it *.jsonl (JSON lines) or *.parquet")
    with open_input(name, "jobs file") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"jobs file {name!r} is not UTF-8 text (byte {exc.start})") from None
    rows: list[tuple[int, Mapping[str, Any] | str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append((number, f"line {number} is not JSON: {exc.msg} (column {exc.colno})"))
            continue
        rows.append(
            (number, row if isinstance(row, dict) else f"line {number} is a {type(row).__name__}, not an object")
        )
    return rows


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()


def _optional_str(row: Mapping[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{name} must be a non-empty string when given, got {value!r:.60}")
    return value


def check_row(row: Mapping[str, Any], *, top_k: int, fingerprints: Mapping[str, str], stat: Any = None) -> Job:
    """A valid row as a Job; raises TypeError/ValueError/KeyError/OSError naming the field at fault.

    `fingerprints` maps each config name to a hash of its content (part of the default job id); `stat(path)`
    returns a file's size in bytes (raises when it cannot be read), or is None to skip the check.
    """
    query = check_query(row.get("query"))
    config = _optional_str(row, "config") or DEFAULT_CONFIG
    if config not in fingerprints:
        raise KeyError(f"config {config!r} is not among the configs given ({', '.join(sorted(fingerprints))})")
    k = row.get("top_k")
    k = top_k if k is None else check_top_k(k)
    text, path = row.get("document"), _optional_str(row, "document_path")
    if (text is None) == (path is None):
        raise ValueError("give exactly one of `document` (the text) and `document_path` (a path or URI)")
    if text is not None:
        if not isinstance(text, str):
            raise TypeError(f"document must be a str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError("document is empty or whitespace")
        key, size = hashlib.sha256(text.encode("utf-8")).hexdigest(), len(text)
        default_id = f"sha256:{key[:16]}"
    else:
        assert path is not None
        key, size, default_id = f"path:{path}", (stat(path) if stat is not None else 0), path
        if stat is not None and size == 0:
            raise ValueError(f"document_path {path!r} is an empty file")
    document_id = _optional_str(row, "document_id") or default_id
    job_id = _optional_str(row, "job_id") or _hash(query, key, k, fingerprints[config])[:24]
    return Job(
        job_id=job_id,
        query=query,
        document_key=key,
        document_id=document_id,
        top_k=k,
        config=config,
        size=size,
        document=text,
        document_path=path,
    )


def load_jobs(
    rows: Iterable[tuple[int, Mapping[str, Any] | str]],
    *,
    top_k: int,
    fingerprints: Mapping[str, str],
    stat: Any = None,
) -> LoadedJobs:
    """Check every row: valid ones become jobs (a repeated job id keeps its first row), the rest errors."""
    jobs: list[Job] = []
    errors: list[JobError] = []
    seen: set[str] = set()
    duplicates = 0
    unknown: set[str] = set()
    for number, row in rows:
        if isinstance(row, str):
            errors.append(JobError(job_id=f"row-{number}", error_type="JSONDecodeError", message=row))
            continue
        if not isinstance(row, Mapping):
            errors.append(
                JobError(f"row-{number}", "TypeError", f"row {number} is a {type(row).__name__}, not a mapping")
            )
            continue
        unknown.update(set(row) - set(FIELDS))
        try:
            job = check_row(row, top_k=top_k, fingerprints=fingerprints, stat=stat)
        except (TypeError, ValueError, KeyError, OSError) as exc:
            given = row.get("job_id")
            job_id = given if isinstance(given, str) and given.strip() else f"row-{number}-{_hash(repr(row))[:12]}"
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            query = row.get("query") if isinstance(row.get("query"), str) else None
            document_id = row.get("document_id") if isinstance(row.get("document_id"), str) else None
            errors.append(JobError(job_id, type(exc).__name__, f"row {number}: {message}", document_id, query))
            continue
        if job.job_id in seen:
            duplicates += 1
            logger.warning("row %d repeats job id %s: kept the first row with that id", number, job.job_id)
            continue
        seen.add(job.job_id)
        jobs.append(job)
    if unknown:
        logger.warning("jobs table: ignored columns %s (known: %s)", sorted(unknown), ", ".join(FIELDS))
    return LoadedJobs(jobs, errors, duplicates)


def plan_batches(jobs: Sequence[Job], batch_size: int, batch_chars: int) -> list[list[Job]]:
    """Jobs packed into batches: the questions on one document stay together, one length bucket per batch.

    Longest documents first (they take longest, so they should not be the stragglers at the end); a batch holds at
    most `batch_size` jobs and, past its first document, at most `batch_chars` characters of documents. A document
    with more than `batch_size` questions is split into consecutive batches.
    """
    groups: dict[tuple[str, str, str], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.config, job.document_key, job.document_id), []).append(job)
    ordered = sorted(groups.items(), key=lambda kv: (-length_bucket(kv[1][0].size), kv[0]))
    batches: list[list[Job]] = []
    current: list[Job] = []
    chars, bucket = 0, -1
    for _, group in ordered:
        for i in range(0, len(group), batch_size):
            chunk = group[i : i + batch_size]
            size, b = chunk[0].size, length_bucket(chunk[0].size)
            if current and (b != bucket or len(current) + len(chunk) > batch_size or chars + size > batch_chars):
                batches.append(current)
                current, chars = [], 0
            current.extend(chunk)
            chars += size
            bucket = b
    if current:
        batches.append(current)
    return batches
