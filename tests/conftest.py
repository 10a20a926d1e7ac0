"""Shared fixtures: the real default models, loaded once per test session, and the shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared_core import AttentionRetriever, RetrieverConfig
from shared_core.evaluation import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared evaluation data folder (../shared/data); skips when it is absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is absent (set ATTNRET_DATA to the folder holding babi/ and hotpotqa/)")
    return path


@pytest.fixture(scope="session")
def retriever() -> AttentionRetriever:
    """AttentionRetriever with the embedded default model and the default config, warmed up once."""
    r = AttentionRetriever(RetrieverConfig())
    r.warm_up()
    return r
