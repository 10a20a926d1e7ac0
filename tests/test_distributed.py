"""The Ray Data batch runner: same hits as `retrieve`, bad jobs recorded, a killed run resumed exactly once, the CLI.

One local Ray (2 CPUs, no dashboard) serves this module's in-process runs; in one of them a worker process is killed
mid-run. The interrupted run is a CLI subprocess that starts its own local Ray and is killed with its process group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from shared_core import AttentionRetriever, Document
from shared_core.cli import main

ray = pytest.importorskip("ray", reason='the batch runner needs the ray extra: pip install "attnret[ray]"')

from shared_core.batch import read_output, run_batch  # noqa: E402
from shared_core.batch.jobs import length_bucket, load_jobs, plan_batches  # noqa: E402

RAY_ENV = {"RAY_DEDUP_LOGS": "0", "RAY_USAGE_STATS_ENABLED": "0"}
CITIES = ["Lisbon", "Oslo", "Quito", "Hanoi", "Dakar", "Lima", "Perth", "Tunis", "Riga", "Accra", "Cusco", "Turin"]
JOBS_OF = ["a baker", "a pilot", "a nurse", "a carpenter", "a chemist", "a violinist"]


def _document(i: int) -> str:
    """A small (~150 tokens) document of three paragraphs; the answer to 'Where does Mira N live?' is one sentence."""
    city, work = CITIES[i % len(CITIES)], JOBS_OF[i % len(JOBS_OF)]
    return (
        f"The harbour district of {CITIES[(i + 3) % len(CITIES)]} was rebuilt after the flood of 19{10 + i}. "
        f"Tourists come for its markets and its old lighthouse.\n\n"
        f"Mira {i} grew up on a farm but moved to {city} when she turned twenty. She now works as {work} "
        f"and spends her weekends hiking in the hills.\n\n"
        f"The regional train line was extended in 20{10 + i % 10}, cutting the journey time by half. "
        f"A new museum of science opened near the station last spring."
    )


@pytest.fixture(scope="module")
def local_ray():
    """One in-process Ray on 2 CPUs for this module's runs (the runner joins it), shut down at the end."""
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2)
    yield
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _scores(row: dict) -> dict:
    return json.loads(row["scores"])


def _hits_by_job(out: Path) -> dict[str, list[dict]]:
    by_job: dict[str, list[dict]] = {}
    for row in read_output(str(out)).to_pylist():
        by_job.setdefault(row["job_id"], []).append(row)
    return {k: sorted(v, key=lambda r: r["rank"]) for k, v in by_job.items()}


@pytest.mark.slow
def test_hits_equal_retrieve_and_bad_jobs_are_recorded(local_ray, retriever: AttentionRetriever, tmp_path: Path):
    docs = [_document(i) for i in range(2)]
    doc_file = tmp_path / "doc1.txt"
    doc_file.write_text(docs[1], encoding="utf-8")
    long_doc = " ".join(f"Sentence {i} talks about the weather in town number {i}." for i in range(60))
    jobs = [
        {"job_id": "a", "query": "Where does Mira 0 live?", "document": docs[0], "top_k": 3, "document_id": "d0"},
        {"job_id": "b", "query": "What is Mira 0's job?", "document": docs[0], "top_k": 2, "document_id": "d0"},
        {"job_id": "c", "query": "When was the train line extended?", "document_path": str(doc_file)},
        {"job_id": "bad-query", "query": "   ", "document": docs[0]},
        {"job_id": "bad-both", "query": "Where?", "document": docs[0], "document_path": str(doc_file)},
        {"job_id": "bad-config", "query": "Where?", "document": docs[0], "config": "nope"},
        {"job_id": "missing-file", "query": "Where?", "document_path": str(tmp_path / "absent.txt")},
        {"job_id": "too-long", "query": "What is the weather?", "document": long_doc},
    ]
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text("".join(json.dumps(j) + "\n" for j in jobs) + "{not json\n", encoding="utf-8")
    out, errors = tmp_path / "hits.parquet", tmp_path / "errors.jsonl"

    summary = run_batch(jobs_file, out, errors=errors, top_k=4, max_document_tokens=400, batch_size=4)

    assert (summary.jobs, summary.done, summary.failed, summary.skipped) == (9, 3, 6, 0)
    by_job = _hits_by_job(out)
    assert set(by_job) == {"a", "b", "c"}
    expected = {
        "a": retriever.retrieve("Where does Mira 0 live?", [Document(docs[0], id="d0")], top_k=3),
        "b": retriever.retrieve("What is Mira 0's job?", [Document(docs[0], id="d0")], top_k=2),
        "c": retriever.retrieve("When was the train line extended?", [Document(docs[1], id=str(doc_file))], top_k=4),
    }
    for job_id, hits in expected.items():
        rows = by_job[job_id]
        assert [r["rank"] for r in rows] == list(range(1, len(hits) + 1))
        assert [(r["start"], r["end"], r["text"], r["document_id"]) for r in rows] == [
            (h.start, h.end, h.text, h.document_id) for h in hits
        ]
        for r, h in zip(rows, hits, strict=True):
            assert r["score"] == pytest.approx(h.score, rel=1e-5, abs=1e-6)
            assert _scores(r) == pytest.approx(h.scores, rel=1e-5, abs=1e-6)
            assert r["reasons"] == h.reasons
    assert "Mira 0" in by_job["a"][0]["text"] and "moved to" in by_job["a"][0]["text"]

    failed = {r["job_id"]: r for r in read_output(str(errors), errors=True).to_pylist()}
    assert set(failed) == {"bad-query", "bad-both", "bad-config", "missing-file", "too-long", "row-9"}
    assert failed["row-9"]["error_type"] == "JSONDecodeError"
    assert "query is empty" in failed["bad-query"]["message"]
    assert "exactly one of" in failed["bad-both"]["message"]
    assert failed["bad-config"]["error_type"] == "KeyError" and "'nope'" in failed["bad-config"]["message"]
    assert failed["missing-file"]["error_type"] == "FileNotFoundError"
    assert failed["too-long"]["error_type"] == "DocumentTooLongError"
    assert "max_document_tokens=400" in failed["too-long"]["message"]

    again = run_batch(jobs_file, out, errors=errors, top_k=4, max_document_tokens=400)
    assert (again.done, again.failed, again.skipped, again.hits) == (0, 0, 9, 0)


@pytest.mark.slow
def test_killed_cli_run_resumes_every_job_exactly_once(local_ray, tmp_path: Path):
    n = 10
    jobs = [{"query": f"Where does Mira {i} live?", "document": _document(i), "top_k": 2} for i in range(n)]
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text("".join(json.dumps(j) + "\n" for j in jobs), encoding="utf-8")
    out = tmp_path / "hits.parquet"
    args = ["batch", "--jobs", str(jobs_file), "--out", str(out), "--batch-size", "1", "--top-k", "3"]
    env = {**os.environ, **RAY_ENV, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared_core.cli", *args, "--num-cpus", "1"],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # the driver and the local Ray it starts share one process group: kill them all
    )
    try:
        deadline = time.monotonic() + 150
        while not list(out.glob("part-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the batch run ended before it could be killed: {proc.stderr.read()[-2000:]!r}"
        assert list(out.glob("part-*")), "no part file within 150 s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    written = {r["job_id"] for r in read_output(str(out)).to_pylist()}
    assert 1 <= len(written) < n, "the kill did not land mid-run"

    assert main([*args, "--concurrency", "2"]) == 0  # the CLI joins this module's Ray, resumes and completes

    rows = read_output(str(out)).to_pylist()
    counts = Counter(r["job_id"] for r in rows)
    assert len(counts) == n and set(counts.values()) == {2}, counts  # every job once, with its own top_k=2 hits
    assert len({(r["job_id"], r["rank"]) for r in rows}) == len(rows)
    for r in rows:
        if r["rank"] == 1:
            i = int(r["query"].split()[3])
            assert CITIES[i % len(CITIES)] in r["text"], r


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_no_job(local_ray, tmp_path: Path):
    import threading

    import psutil

    n = 8
    jobs = [{"query": f"Where does Mira {i} live?", "document": _document(i), "top_k": 2} for i in range(20, 20 + n)]
    out = tmp_path / "hits.parquet"
    killed: list[int] = []  # part files present when the worker was killed

    def kill_a_worker_after_the_first_part() -> None:
        deadline = time.monotonic() + 120
        while not list(out.glob("part-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in psutil.Process().children(recursive=True):  # only this test's own Ray processes
            try:
                if "MapWorker(MapBatches(RetrieveBatch))" in " ".join(proc.cmdline()):
                    proc.kill()
                    killed.append(len(list(out.glob("part-*"))))
                    return
            except psutil.Error:
                continue

    killer = threading.Thread(target=kill_a_worker_after_the_first_part, daemon=True)
    killer.start()
    summary = run_batch(jobs, out, batch_size=1)
    killer.join(timeout=5)
    assert killed, "no worker process was found to kill"
    assert killed[0] < n, "the kill did not land mid-run"
    assert (summary.done, summary.failed) == (n, 0), summary.line()
    counts = Counter(r["job_id"] for r in read_output(str(out)).to_pylist())
    assert len(counts) == n and set(counts.values()) == {2}, counts


def test_job_ids_are_stable_and_planning_keeps_a_documents_questions_together():
    fingerprints = {"default": "f0", "other": "f1"}
    short, long = _document(0), _document(1) * 80  # ~0.4k and ~35k characters: different length buckets
    rows = [
        {"query": "Where does Mira 0 live?", "document": short},
        {"query": "Where does Mira 0 live?", "document": short, "top_k": 3},
        {"query": "Where does Mira 0 live?", "document": short, "config": "other"},
        {"query": "What does Mira 1 do?", "document": long},
        {"query": "Where does Mira 1 live?", "document": long},
        {"query": "When was the line extended?", "document": _document(2)},
        {"query": "Where does Mira 0 live?", "document": short},  # same content as row 1: same id, dropped
    ]
    loaded = load_jobs(enumerate(rows, 1), top_k=10, fingerprints=fingerprints)
    ids = [j.job_id for j in loaded.jobs]
    assert len(ids) == len(set(ids)) == 6 and loaded.duplicates == 1 and not loaded.errors
    again = load_jobs(enumerate(rows, 1), top_k=10, fingerprints={"default": "changed", "other": "f1"})
    assert again.jobs[0].job_id != ids[0]  # the config's content is part of the id...
    assert again.jobs[2].job_id == ids[2]  # ... of the job's own config only

    batches = plan_batches(loaded.jobs, batch_size=2, batch_chars=10**6)
    assert sorted(j.job_id for b in batches for j in b) == sorted(ids)
    assert [j.query for j in batches[0]] == ["What does Mira 1 do?", "Where does Mira 1 live?"]  # longest first
    for batch in batches:
        assert len(batch) <= 2 and len({length_bucket(j.size) for j in batch}) == 1
    assert any(loaded.jobs[0] in b and loaded.jobs[1] in b for b in batches)  # one document's questions together
    assert len(plan_batches(loaded.jobs, batch_size=16, batch_chars=500)) == 4  # char cap: one document per batch


def test_parquet_jobs_and_jsonl_part_folders_round_trip(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shared_core.batch.jobs import read_rows
    from shared_core.batch.storage import HIT_SCHEMA, PartFolder

    rows = [{"query": "q1", "document": "d1", "top_k": 2}, {"query": "q2", "document": "d2", "top_k": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "jobs.parquet")
    assert [r for _, r in read_rows(str(tmp_path / "jobs.parquet"))] == rows

    folder = PartFolder(str(tmp_path / "hits.jsonl"), HIT_SCHEMA)
    hit = {"job_id": "j", "document_id": "d", "query": "q", "rank": 1, "start": 0, "end": 4, "text": "Text",
           "score": 0.5, "scores": json.dumps({"fused": 0.5}), "reasons": ["attention"]}  # fmt: skip
    (tmp_path / "hits.jsonl" / ".tmp-left-by-a-crash").write_text("{half a line", encoding="utf-8")
    assert folder.remove_temporaries() == 1
    folder.write(pa.Table.from_pylist([hit], schema=HIT_SCHEMA), "one")
    assert [p.name for p in (tmp_path / "hits.jsonl").iterdir()] == ["part-one.jsonl"]
    assert folder.job_ids() == {"j"} and read_output(str(tmp_path / "hits.jsonl")).to_pylist() == [hit]


def test_cli_batch_user_errors_are_one_line(tmp_path: Path, capsys):
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text(json.dumps({"query": "q", "document": "d"}) + "\n", encoding="utf-8")
    assert main(["batch", "--jobs", str(jobs_file), "--out", str(tmp_path / "o.parquet"), "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["attnret: error: batch_size must be a positive int, got 0"]
    assert main(["batch", "--jobs", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "o.parquet")]) == 2
    assert "jobs file" in (err := capsys.readouterr().err) and "does not exist" in err
    (tmp_path / "file.parquet").write_text("x", encoding="utf-8")
    assert main(["batch", "--jobs", str(jobs_file), "--out", str(tmp_path / "file.parquet")]) == 2
    assert "is a file" in capsys.readouterr().err
