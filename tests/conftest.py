"""Shared fixtures: the real default models, loaded once per test session, and the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared_core import AttentionRetriever, RetrieverConfig


def _shared_data_dir() -> Path | None:
    env = os.environ.get("ATTNRET_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return next((c for c in candidates if c.is_dir()), None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared evaluation data folder (../shared/data); skips when it is absent."""
    path = _shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is absent (set ATTNRET_DATA to the folder holding babi/ and hotpotqa/)")
    return path


@pytest.fixture(scope="session")
def retriever() -> AttentionRetriever:
    """AttentionRetriever with the embedded default model and the default config, warmed up once."""
    r = AttentionRetriever(RetrieverConfig())
    r.warm_up()
    return r
