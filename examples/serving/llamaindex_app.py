"""A LlamaIndex query engine with `AttentionRerank` behind a FastAPI route. Runs offline.

    uvicorn llamaindex_app:app --app-dir examples/serving --host 127.0.0.1 --port 8000
    curl -s -X POST http://127.0.0.1:8000/query -H 'Content-Type: application/json' \
         -d '{"question": "In which town was the first Kestrel seismometer prototype built?"}'

The engine is `examples/llamaindex_vector_index.py`'s (a vector index over the example report, embedded with the
bundled MiniLM, then `AttentionRerank` at sentence granularity, no LLM). It is built once, in the app's lifespan,
and its models are loaded there by a first query, so the server answers `/health` only when it is ready and the
first request pays no load time. FastAPI runs the sync route in its thread pool; the reranker's model is shared and
safe to call from several threads (docs/serving.md).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

EXAMPLES = Path(__file__).resolve().parents[1]
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))  # so that the example engine below imports when run from anywhere

import llamaindex_vector_index as example  # noqa: E402

logger = logging.getLogger(__name__)


class QueryRequest(BaseModel):
    """A question about the indexed report."""

    question: str = Field(min_length=1, description="The question.")
    top_n: int | None = Field(default=None, gt=0, le=50, description="Sentences to return; None = the engine's.")


class Context(BaseModel):
    """One reranked sentence, with its character offsets in the report and its score in [0, 1]."""

    text: str
    score: float | None
    start: int | None
    end: int | None
    reasons: list[str]


class QueryResponse(BaseModel):
    """The reranked sentences, best first (the context an LLM would be given)."""

    question: str
    contexts: list[Context]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Build the index and the engine once, and load every model with a first query, before serving."""
    index = example.build_index()
    app.state.index = index
    app.state.engine = example.build_query_engine(index)
    example.retrieve(example.QUESTION, app.state.engine)  # warm-up: the reranker's models load here
    logger.info("llamaindex app ready")
    yield


app = FastAPI(title="attnret LlamaIndex query engine", lifespan=lifespan)


@app.get("/health")
def health() -> dict[str, str]:
    """Ready check: answers only once the lifespan has built the engine."""
    return {"status": "ok"}


@app.post("/query")
def query(body: QueryRequest, request: Request) -> QueryResponse:
    """Retrieve the nearest chunks and return their best sentences by `AttentionRerank`."""
    if not body.question.strip():
        raise HTTPException(status_code=422, detail="question is blank")
    engine: Any = request.app.state.engine
    if body.top_n is not None:
        engine = example.build_query_engine(request.app.state.index, top_n=body.top_n)
    result = example.retrieve(body.question, engine)
    return QueryResponse(
        question=body.question,
        contexts=[
            Context(text=s["text"], score=s["score"], start=s["start"], end=s["end"], reasons=s["reasons"])
            for s in result["sentences"]
        ],
    )
