"""Shared fixtures: the real default models, loaded once per test session, and the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared_core import AttentionRetriever, RetrieverConfig
from shared_core.evaluation import shared_data_dir

# The tests run on the 0.1 GB SmolLM2 wherever a config leaves model.name unset (the product default is the 1.5B,
# `registry.DEFAULT_MODEL`; its own tests name it and are in the slow tier). Set ATTNRET_MODEL to run them on another.
os.environ.setdefault("ATTNRET_MODEL", "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared evaluation data folder (../shared/data); skips when it is absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is absent (set ATTNRET_DATA to the folder holding babi/ and hotpotqa/)")
    return path


@pytest.fixture(scope="session")
def retriever() -> AttentionRetriever:
    """AttentionRetriever with the tests' model (SmolLM2, `ATTNRET_MODEL`) and the default config, warmed up once."""
    r = AttentionRetriever(RetrieverConfig())
    r.warm_up()
    return r
