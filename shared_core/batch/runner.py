"""Run a table of retrieval jobs on Ray Data: one model per actor, resumable, failures recorded per job.

The driver checks the jobs, skips those whose results an earlier run already wrote, packs the rest into batches
(questions on one document together, one length bucket per batch), maps them over a pool of `RetrieveBatch` actors
and writes each finished batch as one part file. Ray is imported here only, when a run starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared_core.batch.jobs import DEFAULT_CONFIG, Job, JobError, load_jobs, plan_batches, read_rows
from shared_core.config import RetrieverConfig

logger = logging.getLogger(__name__)

LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2
"""Object store of a local (in-process) Ray: batches carry text and hits only, so a small one is plenty."""


@dataclass(frozen=True)
class BatchSummary:
    """What a run did: jobs in the table, done now, failed now, skipped (done by an earlier run), hits written."""

    jobs: int
    done: int
    failed: int
    skipped: int
    duplicates: int
    hits: int
    seconds: float

    @property
    def jobs_per_s(self) -> float:
        """Jobs finished (done or failed) by this run per second of wall time."""
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """One-line human summary, as the CLI prints it."""
        dup = f", {self.duplicates} repeated rows dropped" if self.duplicates else ""
        return (
            f"{self.jobs} jobs: {self.done} done, {self.failed} failed, {self.skipped} skipped as already done{dup}; "
            f"{self.hits} hits in {self.seconds:.1f} s ({self.jobs_per_s:.2f} jobs/s)"
        )


def _fingerprint(config: RetrieverConfig) -> str:
    return hashlib.sha256(config.model_dump_json().encode("utf-8")).hexdigest()[:16]


def _part_name(job_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(job_ids)).encode("utf-8")).hexdigest()[:20]


def _payload(batch: list[Job]) -> str:
    documents = {j.document_key: j.document for j in batch if j.document is not None}
    jobs = [{k: v for k, v in asdict(j).items() if k != "document"} for j in batch]  # as it travels to the workers
    return json.dumps({"documents": documents, "jobs": jobs}, ensure_ascii=False)


def _check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def default_errors_path(out: str) -> str:
    """Where errors go when no errors folder is named: next to `out`, `<out without suffix>.errors.jsonl`."""
    stripped = out.rstrip("/")
    base = stripped.rsplit(".", 1)[0] if "." in stripped.rsplit("/", 1)[-1] else stripped
    return base + ".errors.jsonl"


def _start_ray(address: str | None, num_cpus: int | None, show_progress: bool) -> bool:
    """Connect to (or start) Ray; True when this call started it and must shut it down."""
    try:
        import ray
    except ImportError:
        raise ValueError('the batch runner needs Ray Data: pip install "attnret[ray]"') from None
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = show_progress
    ctx.print_on_execution_start = show_progress
    if not show_progress:  # Ray Data logs each execution's plan and progress at INFO on its own handler
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
    if address is None:
        ray.init(address="local", num_cpus=num_cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
    else:
        if num_cpus is not None:
            raise ValueError("num_cpus sizes a local Ray only; a cluster (ray_address) brings its own CPUs")
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as exc:
            raise ValueError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    return True


def run_batch(
    jobs: str | Path | Sequence[Mapping[str, Any]] | Any,
    out: str | Path,
    *,
    errors: str | Path | None = None,
    config: RetrieverConfig | dict[str, Any] | str | Path | None = None,
    configs: Mapping[str, RetrieverConfig | dict[str, Any] | str | Path] | None = None,
    top_k: int = 10,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    concurrency: int | None = None,
    num_cpus_per_worker: float = 1,
    num_gpus_per_worker: float = 0,
    batch_size: int = 16,
    batch_chars: int = 400_000,
    max_document_tokens: int | None = None,
    show_progress: bool = False,
    trust_remote_code: bool = False,
) -> BatchSummary:
    """Run every job of `jobs` not already done in `out`/`errors`; write hits to `out` and failures to `errors`.

    `jobs`: a JSONL/Parquet file (path or URI) or rows with `query`, `document` (text) or `document_path`, and
    optionally `job_id`, `document_id`, `top_k` (default `top_k`) and `config` (a name in `configs`; default
    `config`). `out`/`errors`: folders of part files (Parquet, or JSON lines when the name ends in .jsonl).
    Without `ray_address`, Ray starts in-process on `num_cpus` CPUs (default: all); with one ("auto", "ray://...")
    the run joins that cluster. `concurrency` actors (default 1, or one per GPU when `num_gpus_per_worker` > 0) each
    load the models once; `batch_size` jobs at most per batch, questions on one document kept together.
    A job whose document has more than `max_document_tokens` tokens fails with DocumentTooLongError.
    """
    started = time.perf_counter()
    _check_positive("top_k", top_k)
    _check_positive("batch_size", batch_size)
    _check_positive("batch_chars", batch_chars)
    _check_positive("concurrency", concurrency, allow_none=True)
    _check_positive("num_cpus", num_cpus, allow_none=True)
    _check_positive("max_document_tokens", max_document_tokens, allow_none=True)
    if not isinstance(num_gpus_per_worker, int | float) or num_gpus_per_worker < 0:
        raise ValueError(f"num_gpus_per_worker must be >= 0, got {num_gpus_per_worker!r}")
    if not isinstance(num_cpus_per_worker, int | float) or num_cpus_per_worker <= 0:
        raise ValueError(f"num_cpus_per_worker must be > 0, got {num_cpus_per_worker!r}")
    named = dict(configs or {})
    if DEFAULT_CONFIG in named:
        raise ValueError(f"configs may not be named {DEFAULT_CONFIG!r}: that name is the `config` argument's")
    resolved = {DEFAULT_CONFIG: RetrieverConfig.coerce(config)}
    resolved.update({name: RetrieverConfig.coerce(c) for name, c in named.items()})

    import pyarrow.compute as pc

    from shared_core.batch.storage import ERROR_SCHEMA, HIT_SCHEMA, PartFolder, file_size

    out = str(out)
    hits_folder = PartFolder(out, HIT_SCHEMA)
    errors_folder = PartFolder(str(errors) if errors is not None else default_errors_path(out), ERROR_SCHEMA)
    if hits_folder.root == errors_folder.root:
        raise ValueError("the hits and errors outputs must be different folders")
    for folder in (hits_folder, errors_folder):
        if n := folder.remove_temporaries():
            logger.info("removed %d unfinished part files of an earlier run from %s", n, folder.path)
    done = hits_folder.job_ids() | errors_folder.job_ids()

    loaded = load_jobs(
        read_rows(jobs), top_k=top_k, fingerprints={n: _fingerprint(c) for n, c in resolved.items()}, stat=file_size
    )
    new_errors = [e for e in loaded.errors if e.job_id not in done]
    pending = [j for j in loaded.jobs if j.job_id not in done]
    skipped = len(loaded.jobs) + len(loaded.errors) - len(pending) - len(new_errors)
    if new_errors:
        _write_errors(errors_folder, new_errors)
    done_now: set[str] = set()
    failed_now = {e.job_id for e in new_errors}
    hits = 0
    if pending:
        batches = plan_batches(pending, batch_size, batch_chars)
        logger.info("%d jobs to run in %d batches (%d skipped as done)", len(pending), len(batches), skipped)
        address = None if ray_address in (None, "local") else str(ray_address)
        we_started = _start_ray(address, num_cpus, show_progress)
        try:
            for table in _execute(
                batches,
                resolved,
                concurrency=concurrency,
                num_cpus_per_worker=num_cpus_per_worker,
                num_gpus_per_worker=num_gpus_per_worker,
                max_document_tokens=max_document_tokens,
                trust_remote_code=trust_remote_code,
            ):
                failed = pc.is_valid(table.column("error_type"))
                hit_table, error_table = table.filter(pc.invert(failed)), table.filter(failed)
                if error_table.num_rows:
                    ids = error_table.column("job_id").to_pylist()
                    errors_folder.write(error_table.select(ERROR_SCHEMA.names), _part_name(ids))
                    failed_now.update(ids)
                if hit_table.num_rows:
                    ids = hit_table.column("job_id").to_pylist()
                    hits_folder.write(hit_table.select(HIT_SCHEMA.names), _part_name(sorted(set(ids))))
                    done_now.update(ids)
                    hits += hit_table.num_rows
        finally:
            if we_started:
                import ray

                ray.shutdown()
    summary = BatchSummary(
        jobs=len(loaded.jobs) + len(loaded.errors),
        done=len(done_now),
        failed=len(failed_now - done_now),
        skipped=skipped,
        duplicates=loaded.duplicates,
        hits=hits,
        seconds=time.perf_counter() - started,
    )
    logger.info("batch run: %s", summary.line())
    return summary


def _write_errors(folder: Any, errors: list[JobError]) -> None:
    import pyarrow as pa

    table = pa.Table.from_pylist([asdict(e) for e in errors], schema=folder.schema)
    folder.write(table, _part_name([e.job_id for e in errors]))


def _execute(
    batches: list[list[Job]],
    configs: dict[str, RetrieverConfig],
    *,
    concurrency: int | None,
    num_cpus_per_worker: float,
    num_gpus_per_worker: float,
    max_document_tokens: int | None,
    trust_remote_code: bool,
) -> Any:
    """Yield one output table (hits and failed jobs) per finished batch, as the actors produce them."""
    import ray

    from shared_core.batch.worker import RetrieveBatch

    if num_gpus_per_worker > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < num_gpus_per_worker:
            raise ValueError(
                f"asked for {num_gpus_per_worker} GPU(s) per worker but the Ray cluster has {gpus:g}; "
                "run without --num-gpus-per-worker to use CPUs"
            )
        concurrency = concurrency or max(1, int(gpus // num_gpus_per_worker))
    concurrency = min(concurrency or 1, len(batches))
    dataset = ray.data.from_items([{"payload": _payload(b)} for b in batches], override_num_blocks=len(batches))
    results = dataset.map_batches(
        RetrieveBatch,
        fn_constructor_kwargs={
            "configs": {name: c.model_dump(mode="json") for name, c in configs.items()},
            "default": DEFAULT_CONFIG,
            "max_document_tokens": max_document_tokens,
            "trust_remote_code": trust_remote_code,
            "cpu_threads": max(1, int(num_cpus_per_worker)),
        },
        batch_size=1,
        batch_format="pyarrow",
        # Ray restarts a worker killed mid-batch (OOM killer, preemption) and retries its batch; a restarted run
        # resumes after the batches already written either way
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus_per_worker,
        num_gpus=num_gpus_per_worker or None,
    )
    yield from results.iter_batches(batch_size=None, batch_format="pyarrow")
