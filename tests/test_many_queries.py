"""Many questions over one document: one read, then every further question at a fraction of it, past the window too.

Counted through `AttentionRetriever.stats` (work done), never timed: a further query past the window runs no new
document pass, kept passes survive a restart through the disk spill, and a grown document reads only its new part.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from shared_core import AttentionRetriever, Document
from shared_core.engine.attention_engine import EXTENSION_LIMIT
from shared_core.engine.cascade_state import CascadeState, ChunkRecord, ChunkTail, tail_tokens
from shared_core.engine.prompt import QueryTokens
from shared_core.engine.query_batch import QueryBatch
from shared_core.engine.state_store import StateStore, state_key
from shared_core.engine.token_kv import TokenKV

STORY = (
    "Mary moved to the bathroom. John went to the hallway. Daniel went back to the hallway. "
    "Sandra moved to the garden. John moved to the office. Sandra journeyed to the bathroom. "
    "Mary moved to the hallway. Daniel travelled to the office. John went back to the garden. "
    "John moved to the bedroom. Bill picked up the apple. Fred went to the kitchen."
)
LONG = "\n\n".join([STORY] * 6)
QUERIES = ["Who picked up the apple?", "Where is Sandra?", "Where did John go?"]
SMALL_CASCADE = {"sink_tokens": 8, "cascades": 2, "window": 32, "stride": 64}


def _past_window(tmp: Path | None = None, query_batch: int = 16, **cascade: object) -> AttentionRetriever:
    """A retriever whose window (160 tokens) puts LONG past it, with a small cascade."""
    extra = {"reuse_dir": str(tmp)} if tmp is not None else {}
    config = {"max_tokens": 160}
    return AttentionRetriever(
        {"model": config, "attention": {"query_batch": query_batch}, "cascade": {**SMALL_CASCADE, **extra, **cascade}}
    )


def _scores(hits: list) -> list[float]:
    return [h.scores["attention"] for h in hits]


def test_retrieve_many_equals_retrieve_per_query_within_the_window(retriever: AttentionRetriever) -> None:
    docs = [STORY, Document(text="Fred went to the kitchen. Bill picked up the apple.", id="b")]
    many = retriever.retrieve_many(QUERIES, docs, top_k=4)
    for query, hits in zip(QUERIES, many, strict=True):
        single = retriever.retrieve(query, docs, top_k=4)
        assert [(h.document_id, h.start, h.end) for h in hits] == [(h.document_id, h.start, h.end) for h in single]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in single], atol=1e-6)


def test_one_prefill_and_one_calibration_pass_serve_every_query() -> None:
    r = AttentionRetriever()
    r.score_units_many(QUERIES, STORY)
    assert r.stats["prefills"] == 1
    assert r.stats["calibration_passes"] == 1  # the "N/A" pass does not depend on the query
    assert r.stats["query_passes"] == len(QUERIES) + 1 and r.stats["query_batches"] == 1  # one forward for all
    r.score_units("Where is the milk?", STORY)
    assert r.stats["prefills"] == 1 and r.stats["calibration_passes"] == 1
    assert r.stats["query_passes"] == len(QUERIES) + 2


def test_queries_past_the_window_share_one_pass_and_equal_single_calls(tmp_path: Path) -> None:
    batch = _past_window(tmp_path)
    many = batch.score_units_many(QUERIES, LONG)
    assert batch.stats["cascade_passes"] == 1 and batch.stats["cascade_replays"] == 0
    single = _past_window(reuse=False)
    for query, hits in zip(QUERIES, many, strict=True):
        np.testing.assert_allclose(_scores(hits), _scores(single.score_units(query, LONG)), atol=1e-5)
    assert single.stats["cascade_passes"] == len(QUERIES)  # without reuse, each new query reads the document


def test_a_further_query_past_the_window_replays_the_kept_pass(tmp_path: Path) -> None:
    r = _past_window(tmp_path)
    r.score_units(QUERIES[0], LONG)
    tokens = r.stats["cascade_tokens"]
    replayed = r.score_units("Where is the apple?", LONG)
    assert r.stats["cascade_passes"] == 1 and r.stats["cascade_tokens"] == tokens  # no new document pass
    assert r.stats["cascade_replays"] == 1
    fresh = _past_window(reuse=False).score_units("Where is the apple?", LONG)
    np.testing.assert_allclose(_scores(replayed), _scores(fresh), atol=1e-5)  # replay is exact up to rounding
    assert [h.score for h in replayed] == pytest.approx([h.score for h in fresh], abs=1e-4)


def test_a_replay_runs_only_each_querys_own_tokens_after_the_kept_instruction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared_core.engine import cascade_state

    r = _past_window(tmp_path)
    r.score_units(QUERIES[0], LONG)  # the query and its "N/A" part share the instruction: it is kept per chunk
    past = r.engine.past
    (state,) = past.states.in_memory(past.family(r.engine.model, r.engine.prompt.key, r.engine.head_selection))
    t = len(state.lead_ids)
    assert t > 0 and state.lead_keys is not None
    dim = state.kv.segments[0].keys.shape[3]
    assert state.lead_keys.shape == (len(state.chunks), state.n_layers, state.kv.heads, t, dim)
    part = r.engine.prompt.query("Where is the apple?", "query")
    assert part.ids[:t] == state.lead_ids.tolist() and min(part.rows) >= t
    run: list[int] = []
    real = cascade_state.batched_scores

    def counting(module, cache, start, parts, *args, **kwargs):  # type: ignore[no-untyped-def]
        run.extend(len(p.ids) for p in parts)
        return real(module, cache, start, parts, *args, **kwargs)

    monkeypatch.setattr(cascade_state, "batched_scores", counting)
    suffix = [(torch.tensor(part.ids), torch.tensor(part.rows))]
    layers = r.head_selection.layers
    with torch.inference_mode():
        led = cascade_state.replay_scores(r.model.model, state, suffix, layers)
        assert set(run) == {len(part.ids) - t}  # the instruction's keys and values were not computed again
        plain = dataclasses.replace(state, lead_ids=torch.zeros(0, dtype=torch.long))
        full = cascade_state.replay_scores(r.model.model, plain, suffix, layers)
    torch.testing.assert_close(led, full, atol=1e-5, rtol=1e-4)


def test_batched_replay_equals_single_replays(tmp_path: Path) -> None:
    r = _past_window(tmp_path)
    r.score_units(QUERIES[0], LONG)
    later = ["Where is the apple?", "Who went to the kitchen?", "Where was Daniel?"]
    batched = r.score_units_many(later, LONG)  # one replay, the three queries in one forward per chunk
    assert r.stats["cascade_passes"] == 1 and r.stats["cascade_replays"] == 1
    one_by_one = _past_window(tmp_path / "other", query_batch=1)
    one_by_one.score_units(QUERIES[0], LONG)
    for query, hits in zip(later, batched, strict=True):
        np.testing.assert_allclose(_scores(hits), _scores(one_by_one.score_units(query, LONG)), atol=1e-5)


def test_a_grown_document_reads_only_its_new_part() -> None:
    within = AttentionRetriever()
    within.score_units(QUERIES[0], STORY)
    grown = STORY + " Then Mary went back to the kitchen and picked up the milk."
    before = dict(within.stats)
    hits = within.score_units("Where is the milk?", grown)
    n_old = len(within.engine.document_tokens(Document(STORY)).ids)
    n_new = len(within.engine.document_tokens(Document(grown)).ids)
    assert within.stats["prefix_tokens_reused"] >= n_old - 8  # the tokenizer may merge across the old end
    assert within.stats["prefill_tokens"] - before["prefill_tokens"] <= n_new - n_old + 8
    # the new tokens, the query and the new document's "N/A" calibration ran as one forward
    assert within.stats["forwards"] - before["forwards"] == 1
    assert within.stats["query_passes"] - before["query_passes"] == 2
    fresh = AttentionRetriever()
    np.testing.assert_allclose(_scores(hits), _scores(fresh.score_units("Where is the milk?", grown)), atol=1e-4)
    after = dict(within.stats)
    later = within.score_units("Where is the apple?", grown)  # the grown document's cache was kept
    assert within.stats["prefills"] == after["prefills"] and within.stats["forwards"] == after["forwards"] + 1
    np.testing.assert_allclose(_scores(later), _scores(fresh.score_units("Where is the apple?", grown)), atol=1e-4)

    past = _past_window(reuse_disk=False)
    past.score_units(QUERIES[0], LONG)
    longer = LONG + "\n\nThen Mary went back to the kitchen and picked up the milk."
    read_before = past.stats["cascade_tokens"]
    resumed = past.score_units("Where is the milk?", longer)
    n_longer = len(past.engine.document_tokens(Document(longer)).ids)
    assert past.stats["cascade_passes"] == 2
    n_long = len(past.engine.document_tokens(Document(LONG)).ids)
    # resumed inside the last chunk: the new tokens and the old tail only (the tokenizer may merge across the end)
    assert past.stats["cascade_tokens"] - read_before <= n_longer - n_long + tail_tokens(SMALL_CASCADE["stride"]) + 4
    fresh_past = _past_window(reuse=False).score_units("Where is the milk?", longer)
    np.testing.assert_allclose(_scores(resumed), _scores(fresh_past), atol=1e-5)  # same chunks: same scores
    family = past.engine.past.family(past.engine.model, past.engine.prompt.key, past.engine.head_selection)
    old, new = (past.engine.past.states.get(state_key(family, Document(t).content_hash)) for t in (LONG, longer))
    assert old is not None and new is not None  # the grown pass shares the earlier keys and values, not a copy
    assert new.kv.segments[0].keys.data_ptr() == old.kv.segments[0].keys.data_ptr()


SCRIPT = textwrap.dedent(
    """
    import json, sys
    from shared_core import AttentionRetriever
    doc, folder = open(sys.argv[1], encoding="utf-8").read(), sys.argv[2]
    cascade = {"sink_tokens": 8, "cascades": 2, "window": 32, "stride": 64, "reuse_dir": folder, "reuse_memory": 1}
    r = AttentionRetriever({"model": {"max_tokens": 160}, "cascade": cascade})
    hits = r.score_units("Who picked up the apple?", doc)
    print(json.dumps({"stats": r.stats, "attention": [h.scores["attention"] for h in hits]}))
    """
)


def test_the_disk_spill_survives_a_restart_is_keyed_and_rebuilt_when_corrupt(tmp_path: Path) -> None:
    doc_file = tmp_path / "doc.txt"
    doc_file.write_text(LONG, encoding="utf-8")
    folder = tmp_path / "kept"
    subprocess.run([sys.executable, "-c", SCRIPT, str(doc_file), str(folder)], check=True, capture_output=True)
    files = list(folder.glob("*.safetensors"))
    assert len(files) == 1  # a pass larger than reuse_memory is spilled, atomically (no temporary file left)
    assert not list(folder.glob("*.tmp"))

    restarted = _past_window(folder, reuse_memory=1)
    restarted.score_units("Where is the apple?", LONG)
    assert restarted.stats["cascade_passes"] == 0 and restarted.stats["cascade_replays"] == 1

    changed = _past_window(folder, reuse_memory=1)
    changed.score_units("Where is the apple?", LONG.replace("Bill", "Jeff"))
    assert changed.stats["cascade_passes"] == 1  # another text: another key, never the old pass
    other_settings = _past_window(folder, reuse_memory=1, ema_decay=0.5)
    other_settings.score_units("Where is the apple?", LONG)
    assert other_settings.stats["cascade_passes"] == 1  # other cascade settings: another key

    original = files[0].read_bytes()
    files[0].write_bytes(original[: len(original) // 2])  # a partial file (a killed write)
    partial = _past_window(folder, reuse_memory=1)
    hits = partial.score_units("Where is the apple?", LONG)
    assert partial.stats["cascade_passes"] == 1  # detected, deleted and read again, never used
    fresh = _past_window(reuse=False).score_units("Where is the apple?", LONG)
    np.testing.assert_allclose(_scores(hits), _scores(fresh), atol=1e-5)

    corrupt = bytearray(files[0].read_bytes())
    corrupt[-100] ^= 0xFF  # same size, one flipped byte in the tensor data
    files[0].write_bytes(bytes(corrupt))
    flipped = _past_window(folder, reuse_memory=1)
    flipped.score_units("Where is the apple?", LONG)
    assert flipped.stats["cascade_passes"] == 1  # the checksum catches it


def test_many_queries_on_a_grown_document_equal_fresh_reads() -> None:
    r = AttentionRetriever({"attention": {"query_batch": 2}})  # the first batch rides with the new tokens
    r.score_units(QUERIES[0], STORY)
    grown = STORY + "\n\nThen Mary went back to the kitchen and picked up the milk."
    queries = ["Where is the milk?", "Where is the apple?", "Who went to the kitchen?"]
    before = dict(r.stats)
    many = r.score_units_many(queries, grown)
    assert r.stats["prefills"] - before["prefills"] == 1 and r.stats["forwards"] - before["forwards"] == 2
    fresh = AttentionRetriever()
    for query, hits in zip(queries, many, strict=True):
        np.testing.assert_allclose(_scores(hits), _scores(fresh.score_units(query, grown)), atol=1e-4)
    selection = r.head_selection
    shallow = type(selection)({min(selection.per_layer): None}, "test")  # as head detection: other heads, a prefill
    _, per_query = r.engine.head_token_scores(["Where is Bill?"], Document(grown + " Bill left."), shallow)
    assert per_query[0].keys() == shallow.per_layer.keys() and r.stats["forwards"] - before["forwards"] == 4
    longer = grown + "\n\n" + LONG + "\n\n" + LONG  # over EXTENSION_LIMIT new tokens: a prefill, then the query
    before = dict(r.stats)
    hits = r.score_units("Where is the milk?", longer)
    n_new = len(r.engine.document_tokens(Document(longer)).ids) - len(r.engine.document_tokens(Document(grown)).ids)
    assert n_new > EXTENSION_LIMIT
    assert (
        r.stats["forwards"] - before["forwards"] == 2
        and r.stats["prefix_tokens_reused"] > before["prefix_tokens_reused"]
    )
    np.testing.assert_allclose(_scores(hits), _scores(fresh.score_units("Where is the milk?", longer)), atol=1e-4)


@pytest.mark.parametrize(
    "turn",
    [
        " Then she took the milk.\n\nBill picked up the apple. Fred went to the kitchen.",
        "\n\nBill picked up the apple.",
    ],
    ids=["last-paragraph-grew", "new-paragraph"],
)
def test_a_grown_document_reuses_the_analysis_of_its_unchanged_paragraphs(turn: str) -> None:
    first = "Mary moved to the bathroom. John went to the hallway.\n\nSandra moved to the garden."
    grown = first + turn
    r = AttentionRetriever()
    r.units(first)
    units = r.units(grown)
    fresh = AttentionRetriever().units(grown)
    assert [(u.start, u.end, u.paragraph, u.index) for u in units] == [
        (u.start, u.end, u.paragraph, u.index) for u in fresh
    ]
    assert all(grown[u.start : u.end] == u.text for u in units)
    embedded = r.analyser.analyse(Document(grown)).states["dense"]
    expected = AttentionRetriever().analyser.analyse(Document(grown)).states["dense"]
    assert embedded is not None and expected is not None
    np.testing.assert_allclose(embedded, expected, atol=1e-5)
    grown_index, fresh_index = r.entity_index(grown), AttentionRetriever().entity_index(grown)
    assert grown_index is not None and fresh_index is not None
    assert grown_index.to_dict() == fresh_index.to_dict()


def _fake_state(n: int, seed: int) -> CascadeState:
    g = torch.Generator().manual_seed(seed)
    kept = torch.zeros(2, 1, 0, dtype=torch.int32)
    chunk = ChunkRecord(0, n, kept, torch.zeros(2, 1, 0), (0, (0,), (0,), 0))
    keys, values = torch.randn(2, 1, n, 4, generator=g), torch.randn(2, 1, n, 4, generator=g)
    tail = ChunkTail(n - 2, torch.rand(2, 1, n - 2, generator=g), 3)
    return CascadeState(ids=torch.arange(n), kv=TokenKV.whole(keys, values), chunks=(chunk,), tail=tail)


def test_spilled_passes_stay_within_the_disk_limit_and_round_trip(tmp_path: Path) -> None:
    first, second = _fake_state(64, 0), _fake_state(64, 1)
    store = StateStore(memory_bytes=0, folder=tmp_path, disk_bytes=first.nbytes + 4096)  # room for one file
    store.put("a", "family", first)
    loaded = StateStore(0, tmp_path).get("a")
    assert loaded is not None and all(map(torch.equal, loaded.kv.dense(), first.kv.dense()))
    assert loaded.tail is not None and first.tail is not None and torch.equal(loaded.tail.mass, first.tail.mass)
    assert (loaded.tail.cut, loaded.tail.rows) == (first.tail.cut, first.tail.rows)
    assert [(c.start, c.end, c.structure) for c in loaded.chunks] == [
        (c.start, c.end, c.structure) for c in first.chunks
    ]
    store.put("b", "family", second)
    assert sorted(p.stem for p in tmp_path.glob("*.safetensors")) == ["b"]  # the older pass was trimmed
    assert StateStore(0, tmp_path).get("a") is None


def test_packed_parts_share_their_common_prefix_and_see_only_their_own_tokens() -> None:
    parts = [QueryTokens(ids=[7, 8, 1, 2], rows=[0, 2, 3]), QueryTokens(ids=[7, 8, 3], rows=[2])]
    batch = QueryBatch.of(parts)
    assert batch.ids.tolist() == [[7, 8, 1, 2, 3]]  # the shared instruction tokens run once
    assert batch.offsets.tolist() == [[0, 1, 2, 3, 2]]  # each part at the positions of its own pass
    assert batch.mask is not None
    assert batch.mask.int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # the second part's token sees the shared tokens, never the first part's
    ]
    assert batch.rows.tolist() == [0, 2, 3, 4]
    torch.testing.assert_close(batch.weights, torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0], [0.0, 0.0, 0.0, 1.0]]))
    mask = batch.attention_mask(3, torch.device("cpu"))
    assert mask is not None and mask.shape == (1, 1, 5, 8) and bool(mask[..., :3].all())
    assert QueryBatch.of(parts[:1]).mask is None  # one part: the model's own causal mask
    tailed = QueryBatch.of([QueryTokens(ids=[7, 8, 1, 2, 9, 9], rows=[2, 3]), QueryTokens(ids=[7, 5, 9], rows=[1])])
    assert tailed.ids.tolist() == [[7, 8, 1, 2, 5]]  # tokens after a part's last row cannot change its rows
