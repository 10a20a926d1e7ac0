"""The serving examples over HTTP on 127.0.0.1: Hayhooks deploying the example Haystack pipeline, and the LlamaIndex
query engine behind FastAPI/uvicorn. Each test starts its server with the shipped script on a free loopback port,
polls a ready check (bounded), asks one question, and stops the server (its whole process group) in teardown.
Each takes ~15 s on a quiet 2-core CPU (integration, not slow)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVING = ROOT / "examples" / "serving"
REPORT = (ROOT / "examples" / "data" / "calloway_venn_annual_report.txt").read_text(encoding="utf-8")
QUESTION = "In which town was the first Kestrel seismometer prototype built?"
FACT_A = "The first working prototype of the Kestrel seismometer was built over the winter by the instrument group"
FACT_B = "Odile Brannigan's group works from a converted boathouse on the harbour quay at Pellingford."
READY_TIMEOUT_S = 120.0
QUERY_TIMEOUT_S = 300.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> tuple[int, Any]:
    """GET (or POST `body` as JSON) `url`; returns the status and the decoded JSON body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@contextmanager
def _server(script: str, env: dict[str, str], ready: Callable[[], bool], log: Path) -> Iterator[None]:
    """Run `script` in its own process group until `ready()`; always stop the group on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", str(SERVING / script)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _poll(ready):
            if process.poll() is not None:
                pytest.fail(f"{script} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{script} not ready after {READY_TIMEOUT_S:.0f} s:\n{log.read_text()[-4000:]}")
            time.sleep(1.0)
        yield
    finally:
        _stop(process)


def _poll(ready: Callable[[], bool]) -> bool:
    try:
        return ready()
    except (OSError, ValueError):  # not listening yet, or an answer that is not JSON yet
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL it if it has not exited after 30 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _assert_reranked(contexts: list[dict[str, Any]]) -> None:
    """The ranker's sentences, best first: the builder's sentence leads, where the builder works is among them."""
    for item in contexts:
        assert REPORT[item["start"] : item["end"]] == item["text"]
    assert FACT_A in contexts[0]["text"], "the builder's sentence is not first"
    assert any(FACT_B in item["text"] for item in contexts), "where the builder works was not retrieved"
    scores = [item["score"] for item in contexts]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.integration
def test_hayhooks_serves_the_example_haystack_pipeline(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{_free_port()}"
    port = base.rsplit(":", 1)[1]

    def deployed() -> bool:
        status, body = _request(f"{base}/status")
        return status == 200 and "attnret_report" in body.get("pipelines", [])

    with _server("serve_hayhooks.sh", {"HAYHOOKS_PORT": port}, deployed, tmp_path / "hayhooks.log"):
        status, body = _request(f"{base}/attnret_report/run", {"question": QUESTION}, timeout=QUERY_TIMEOUT_S)
        assert status == 200, body
        result = body["result"]
        assert result["question"] == QUESTION
        assert isinstance(result["answer"], str) and result["answer"]
        _assert_reranked(result["ranked"])  # BM25's long units came in; the ranker's sentences came out
        # the LM read the same sentences, reordered by lost-in-the-middle (the strongest at the ends)
        assert sorted(c["text"] for c in result["context"]) == sorted(r["text"] for r in result["ranked"])
        assert result["context"][0]["text"] == result["ranked"][0]["text"]
        status, body = _request(f"{base}/attnret_report/run", {}, timeout=10)
        assert status == 422  # the request model comes from run_api's signature


@pytest.mark.integration
def test_llamaindex_query_engine_behind_fastapi(tmp_path: Path) -> None:
    port = str(_free_port())
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        return _request(f"{base}/health") == (200, {"status": "ok"})

    with _server("serve_llamaindex.sh", {"PORT": port}, healthy, tmp_path / "uvicorn.log"):
        status, body = _request(f"{base}/query", {"question": QUESTION}, timeout=QUERY_TIMEOUT_S)
        assert status == 200, body
        assert body["question"] == QUESTION
        assert len(body["contexts"]) == 5
        _assert_reranked(body["contexts"])
        status, body = _request(f"{base}/query", {"question": QUESTION, "top_n": 2}, timeout=QUERY_TIMEOUT_S)
        assert status == 200 and len(body["contexts"]) == 2
        assert FACT_A in body["contexts"][0]["text"]
        for bad in ({"question": "   "}, {"question": ""}, {"question": QUESTION, "top_n": 0}):
            assert _request(f"{base}/query", bad, timeout=10)[0] == 422
