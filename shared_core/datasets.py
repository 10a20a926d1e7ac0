"""Labelled long-document retrieval examples: bAbI scattered BABILong-style, HotpotQA buried, real documents
(COVID-QA papers, QMSum meeting transcripts) kept whole, or a JSONL file.

Used by the tests, the benchmarks and head detection. Everything is deterministic for a given seed and needs only
numpy and the standard library. Gold evidence is always given as exact character spans into the built documents.

Design choices (see DESIGN.md, "The trap"): bAbI needles are hidden among *facts of other bAbI stories of the same
file* whose people and objects are renamed, so the needles cannot be told apart by style and the filler never mentions
the question's people, objects or the places named in the query. The story's facts are spread in order at random
positions over the first 50-90% of the document, so filler always continues after the last fact and the gold facts are
not simply the latest story-looking sentences. HotpotQA paragraphs are rendered as ``"Title\\nsentence sentence ..."``
and paragraphs (in both builders) are separated by a blank line.

Real documents (``load_real``) are kept whole, paragraphs (a paper's, or a transcript's turns) separated by a blank
line, so the core's paragraph units are a paper's paragraphs or a meeting's turns and its sentence units never cross
them. Their documents are split by id: the first third (sorted) is held in for tuning, the rest held out.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .segmentation import paragraph_spans

logger = logging.getLogger(__name__)

__all__ = [
    "REAL_TASKS",
    "BabiFact",
    "BabiQuestion",
    "BabiStory",
    "GoldSpan",
    "LabelledExample",
    "babi_task_name",
    "babilong_examples",
    "content_words",
    "covidqa_examples",
    "gold_units",
    "group_by_document",
    "hotpot_examples",
    "load_babi",
    "load_examples",
    "load_jsonl",
    "load_real",
    "qmsum_examples",
    "real_split",
    "resolve_task_path",
    "shared_data_dir",
    "shares_content_word",
    "word_count",
]


@dataclass(frozen=True)
class GoldSpan:
    """A gold evidence span: character offsets ``[start, end)`` into ``documents[document_index]``."""

    document_index: int
    start: int
    end: int


@dataclass(frozen=True)
class LabelledExample:
    """A query over one or more documents with its gold evidence spans (and answer, when known)."""

    id: str
    query: str
    documents: list[str]
    gold: list[GoldSpan]
    task: str
    answer: str | None = None
    document_id: str | None = None
    """The source document's id for real documents (several questions share one), else None."""

    def gold_texts(self) -> list[str]:
        """The text of each gold span, in ``gold`` order (handy for checks and reports)."""
        return [self.documents[g.document_index][g.start : g.end] for g in self.gold]


# ---------------------------------------------------------------------------------------------------------------
# Locating the shared data


def shared_data_dir() -> Path | None:
    """The evaluation data folder: ``$ATTNRET_DATA`` if set, else ``<repo>/../shared/data``; None when absent."""
    env = os.environ.get("ATTNRET_DATA")
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            return path
        logger.warning("ATTNRET_DATA=%s is not a folder", env)
        return None
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return path if path.is_dir() else None


_BABI_TASK_RE = re.compile(r"^qa(\d+)_")
_REAL_FILES = {"covidqa": "covidqa/covidqa_dev.json", "qmsum": "qmsum/qmsum_val.jsonl"}
REAL_TASKS = tuple(_REAL_FILES)
"""Real-document sets: questions grouped by document, loaded with ``load_real``."""


def babi_task_name(path: str | Path) -> str:
    """Task name of a bAbI file, e.g. ``qa2_two-supporting-facts_test.txt`` -> ``babi-qa2``."""
    m = _BABI_TASK_RE.match(Path(path).name)
    return f"babi-qa{m.group(1)}" if m else f"babi-{Path(path).stem}"


def resolve_task_path(name: str, data_dir: Path | None = None) -> Path:
    """Map a task name (``babi-qa2``, ``hotpotqa``) to its file in the shared data folder; error if missing."""
    root = data_dir or shared_data_dir()
    if root is None:
        raise FileNotFoundError(
            "shared data folder not found: set ATTNRET_DATA to the folder holding babi/ and hotpotqa/"
        )
    if name == "hotpotqa":
        path = root / "hotpotqa" / "hotpot_dev_distractor_100.json"
        if not path.is_file():
            raise FileNotFoundError(f"HotpotQA file missing: {path}")
        return path
    if name in _REAL_FILES:
        path = root / _REAL_FILES[name]
        if not path.is_file():
            raise FileNotFoundError(f"{name} file missing: {path}")
        return path
    m = re.fullmatch(r"babi-qa(\d+)", name)
    if m:
        matches = sorted((root / "babi").glob(f"qa{m.group(1)}_*test.txt"))
        if not matches:
            raise FileNotFoundError(f"no bAbI file for task {name!r} under {root / 'babi'}")
        return matches[0]
    raise ValueError(f"unknown task name {name!r}: expected 'babi-qaN', 'hotpotqa', 'covidqa' or 'qmsum'")


# ---------------------------------------------------------------------------------------------------------------
# bAbI parsing


@dataclass(frozen=True)
class BabiFact:
    """One statement line of a bAbI story, with its line number inside the story."""

    number: int
    text: str


@dataclass(frozen=True)
class BabiQuestion:
    """One question line: question text, answer and the line numbers of its supporting facts."""

    number: int
    question: str
    answer: str
    supporting: tuple[int, ...]


@dataclass(frozen=True)
class BabiStory:
    """A bAbI story: its facts and questions, both keeping their line numbers."""

    facts: tuple[BabiFact, ...]
    questions: tuple[BabiQuestion, ...]

    def facts_before(self, question: BabiQuestion) -> list[BabiFact]:
        """The story's facts that precede ``question``, in order."""
        return [f for f in self.facts if f.number < question.number]


def load_babi(path: str | Path) -> list[BabiStory]:
    """Parse a bAbI file; numbering restarts at 1 per story, question fields are split by a tab or ``|``."""
    stories: list[BabiStory] = []
    facts: list[BabiFact] = []
    questions: list[BabiQuestion] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                continue
            number_text, _, rest = line.partition(" ")
            if not number_text.isdigit():
                raise ValueError(f"{path}:{lineno}: a bAbI line starts with its number, got {line!r}")
            number = int(number_text)
            if number == 1 and (facts or questions):
                stories.append(BabiStory(tuple(facts), tuple(questions)))
                facts, questions = [], []
            if "\t" in rest or "|" in rest:
                parts = [p.strip() for p in re.split(r"[\t|]", rest)]
                if len(parts) < 3:
                    raise ValueError(f"{path}:{lineno}: question line needs question, answer and supporting ids")
                support = tuple(int(s) for s in parts[2].split())
                questions.append(BabiQuestion(number, parts[0], parts[1], support))
            else:
                facts.append(BabiFact(number, rest.strip()))
    if facts or questions:
        stories.append(BabiStory(tuple(facts), tuple(questions)))
    return stories


# ---------------------------------------------------------------------------------------------------------------
# bAbI lexicon and renaming

_NOT_NAMES = frozenset(
    "the this that these those then yesterday afterwards after following is are was were where what who how why "
    "does do did he she they it his her their there a an in on".split()
)
_HANDLING_RE = re.compile(
    r"\b(?:got|grabbed|picked up|took|dropped|left|put down|discarded|gave|handed|passed)\s+the\s+([a-z]+)\b"
)
_THE_NOUN_RE = re.compile(r"\bthe\s+([a-z]+)\b")
_WORD_RE = re.compile(r"[A-Za-z]+")
_PRONOUN_START_RE = re.compile(
    r"^(?:(?:then|after that|afterwards|following that|after this),?\s+)?(?:he|she|they|it)\b", re.IGNORECASE
)

# Replacement vocabulary added to each file's own names/objects (none of these occur in bAbI files).
_EXTRA_NAMES = (
    "Alice Oliver Clara Victor Hannah Lucas Nora Peter Sophie Martin Ruth Simon Agnes Tobias Greta Hugo Ingrid Leon "
    "Marta Felix Irene Oscar Helen Arthur"
).split()
_EXTRA_OBJECTS = "book umbrella newspaper kite guitar camera wallet banana bottle hat candle ladder".split()
_EXTRA_PLACES = "attic cellar library garage porch balcony studio pantry".split()


@dataclass(frozen=True)
class _Lexicon:
    """People, objects and other ``the``-nouns (mostly places) seen in a bAbI file's facts."""

    people: frozenset[str]
    objects: frozenset[str]
    things: frozenset[str]


def _lexicon(stories: Sequence[BabiStory]) -> _Lexicon:
    """People = capitalised words never seen in lower case; objects = nouns after handling verbs; things = the rest."""
    texts = [f.text for s in stories for f in s.facts]
    lower_words = {w for t in texts for w in _WORD_RE.findall(t) if w.islower()}
    people = {
        w
        for t in texts
        for w in _WORD_RE.findall(t)
        if w[0].isupper() and w.lower() not in _NOT_NAMES and w.lower() not in lower_words
    }
    objects = {m for t in texts for m in _HANDLING_RE.findall(t)}
    things = {m for t in texts for m in _THE_NOUN_RE.findall(t)} - objects
    return _Lexicon(frozenset(people), frozenset(objects), frozenset(things))


def _words_lower(text: str) -> set[str]:
    return {w.lower() for w in _WORD_RE.findall(text)}


def _story_entities(story: BabiStory, lex: _Lexicon) -> tuple[set[str], set[str]]:
    """People and objects (lower case) mentioned anywhere in a story, questions included."""
    words = set().union(
        *(_words_lower(f.text) for f in story.facts), *(_words_lower(q.question) for q in story.questions)
    )
    people = {p.lower() for p in lex.people} & words
    objects = set(lex.objects) & words
    return people, objects


def _rename(text: str, mapping: dict[str, str]) -> str:
    """Replace whole words per ``mapping`` (keys are lower case; a capitalised source keeps its capital)."""
    if not mapping:
        return text
    pattern = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)) + r")\b", re.I)

    def sub(m: re.Match[str]) -> str:
        new = mapping[m.group(0).lower()]
        return new[:1].upper() + new[1:] if m.group(0)[0].isupper() else new

    return pattern.sub(sub, text)


def _blocks(sentences: Sequence[str]) -> list[list[int]]:
    """Group sentence indices so that a sentence starting with a pronoun stays with the sentence before it."""
    blocks: list[list[int]] = []
    for i, s in enumerate(sentences):
        if blocks and _PRONOUN_START_RE.match(s):
            blocks[-1].append(i)
        else:
            blocks.append([i])
    return blocks


def _ensure_period(sentence: str) -> str:
    s = sentence.strip()
    return s if s.endswith((".", "?", "!")) else s + "."


# ---------------------------------------------------------------------------------------------------------------
# Document assembly shared by the bAbI builder


@dataclass
class _Piece:
    """A run of sentences placed together; ``needles`` holds the fact index of each sentence (None for filler)."""

    sentences: list[str]
    needles: list[int | None]
    paragraph_end: bool = False


def _assemble(
    pieces: Sequence[_Piece], rng: np.random.Generator, natural_paragraphs: bool
) -> tuple[str, dict[int, tuple[int, int]]]:
    """Render pieces into paragraphs ("\\n\\n"-separated, sentences joined by a space); return text and needle spans.

    With ``natural_paragraphs`` a paragraph ends where a filler piece says so (HotpotQA filler); otherwise paragraphs
    hold 3-6 sentences, never splitting a piece (a pronoun sentence stays with its antecedent).
    """
    paragraphs: list[list[tuple[str, int | None]]] = [[]]
    size = int(rng.integers(3, 7))
    for piece in pieces:
        paragraphs[-1].extend(zip(piece.sentences, piece.needles, strict=True))
        closes = piece.paragraph_end if natural_paragraphs else len(paragraphs[-1]) >= size
        if closes:
            paragraphs.append([])
            size = int(rng.integers(3, 7))
    spans: dict[int, tuple[int, int]] = {}
    parts: list[str] = []
    pos = 0
    for para in (p for p in paragraphs if p):
        if parts:
            parts.append("\n\n")
            pos += 2
        for j, (sentence, needle) in enumerate(para):
            if j:
                parts.append(" ")
                pos += 1
            if needle is not None:
                spans[needle] = (pos, pos + len(sentence))
            parts.append(sentence)
            pos += len(sentence)
    return "".join(parts), spans


def _insert_needles(filler: list[_Piece], needles: list[_Piece], rng: np.random.Generator) -> list[_Piece]:
    """Insert needle pieces, in order, at random filler positions within the first 50-90% of the filler.

    Filler therefore always continues after the last needle, so gold is never simply "the latest story sentences".
    A needle joins the paragraph of the filler piece it precedes (needles never end a paragraph themselves).
    """
    m = len(filler)
    limit = max(1, round(m * float(rng.uniform(0.5, 0.9))))
    positions = np.sort(rng.integers(0, limit, size=len(needles)))
    out: list[_Piece] = []
    k = 0
    for i, piece in enumerate(filler):
        while k < len(needles) and positions[k] == i:
            out.append(needles[k])
            k += 1
        out.append(piece)
    out.extend(needles[k:])
    return out


def word_count(text: str) -> int:
    """Whitespace word count, the unit of every ``target_words`` argument."""
    return len(text.split())


# ---------------------------------------------------------------------------------------------------------------
# bAbI -> BABILong-style examples


def babilong_examples(
    task_file: str | Path,
    *,
    n: int,
    target_words: int,
    seed: int,
    filler: str = "stories",
    hotpot_path: str | Path | None = None,
    rename_story: bool = True,
    offset: int = 0,
) -> list[LabelledExample]:
    """Hide each sampled question's story facts, in order, among filler to about ``target_words`` words.

    ``filler="stories"``: renamed facts of other stories of the same file (same style as the needles);
    ``filler="hotpot"``: HotpotQA paragraphs (``hotpot_path`` or the shared file) that mention none of the story's
    people or objects. With ``rename_story`` (default) the question's own story (query and answer included) is renamed
    from the same name/object pools as the filler, so no name marks the needles across examples. Gold = the
    supporting facts, as exact spans. Questions are taken in the order of a permutation seeded by ``seed`` alone,
    from position ``offset`` on (so a smaller ``n`` gives a prefix of a larger one, and ``offset`` keeps head-detection
    and evaluation questions disjoint); each document is seeded by ``(seed, story, question)``.
    """
    if filler not in ("stories", "hotpot"):
        raise ValueError(f"filler must be 'stories' or 'hotpot', got {filler!r}")
    if n <= 0 or target_words <= 0 or offset < 0:
        raise ValueError("n and target_words must be positive and offset non-negative")
    stories = load_babi(task_file)
    task = babi_task_name(task_file)
    lex = _lexicon(stories)
    hotpot_paragraphs: list[list[str]] = []
    if filler == "hotpot":
        path = Path(hotpot_path) if hotpot_path else resolve_task_path("hotpotqa")
        hotpot_paragraphs = [
            [s.strip() for s in sents if s.strip()] for q in _load_hotpot(path) for _, sents in q["context"]
        ]
    pairs = [(si, qi) for si, s in enumerate(stories) for qi in range(len(s.questions))]
    order = np.random.default_rng(seed).permutation(len(pairs))[offset:]
    examples: list[LabelledExample] = []
    skipped = 0

    def budget(facts: Sequence[BabiFact]) -> int:
        return target_words - sum(word_count(f.text) for f in facts)

    for idx in order:
        if len(examples) >= n:
            break
        si, qi = pairs[int(idx)]
        story, question = stories[si], stories[si].questions[qi]
        facts = story.facts_before(question)
        if sum(word_count(f.text) for f in facts) > target_words // 2:
            skipped += 1
            continue
        rng = np.random.default_rng([seed, si, question.number])
        people, objects = _story_entities(story, lex)
        mapping = _story_mapping(people, objects, lex, rng) if rename_story else {}
        query = _rename(question.question, mapping)
        banned_people = people | {v for k, v in mapping.items() if k in people}
        banned_objects = objects | {v for k, v in mapping.items() if k in objects}
        query_things = _words_lower(query) & set(lex.things)
        if filler == "stories":
            pieces = _story_filler(stories, si, lex, banned_people, banned_objects, query_things, budget(facts), rng)
        else:
            banned = banned_people | banned_objects | query_things
            pieces = _hotpot_filler(hotpot_paragraphs, banned, budget(facts), rng)
        needles = _needle_pieces([_rename(f.text, mapping) for f in facts])
        text, spans = _assemble(_insert_needles(pieces, needles, rng), rng, natural_paragraphs=filler == "hotpot")
        index_of = {f.number: i for i, f in enumerate(facts)}
        missing = [num for num in question.supporting if num not in index_of]
        if missing:
            raise ValueError(f"{task} story {si}: supporting lines {missing} are not facts before the question")
        gold = sorted((GoldSpan(0, *spans[index_of[num]]) for num in question.supporting), key=lambda g: g.start)
        examples.append(
            LabelledExample(
                id=f"{task}-s{si}-l{question.number}",
                query=query,
                documents=[text],
                gold=gold,
                task=task,
                answer=_rename(question.answer, mapping),
            )
        )
    if skipped:
        logger.warning("%s: skipped %d questions whose facts exceed half of %d words", task, skipped, target_words)
    return examples


def _needle_pieces(texts: Sequence[str]) -> list[_Piece]:
    """The story's facts as pieces (a pronoun fact stays with its antecedent); needles index into ``texts``."""
    sentences = [_ensure_period(t) for t in texts]
    return [_Piece([sentences[i] for i in block], list(block)) for block in _blocks(sentences)]


def _pick(pool: Sequence[str], sources: set[str], rng: np.random.Generator, tag: str) -> dict[str, str]:
    """Map each source word to a distinct random word of ``pool``."""
    if len(sources) > len(pool):
        raise ValueError(f"not enough replacement {tag} to rename a story ({len(sources)} > {len(pool)})")
    chosen = rng.choice(len(pool), size=len(sources), replace=False)
    return {s: pool[int(c)] for s, c in zip(sorted(sources), chosen, strict=True)}


def _story_mapping(people: set[str], objects: set[str], lex: _Lexicon, rng: np.random.Generator) -> dict[str, str]:
    """Rename the question's own story from the same pools as the filler, so no name or object marks the needles."""
    name_pool = sorted({p.lower() for p in lex.people} | {x.lower() for x in _EXTRA_NAMES})
    object_pool = sorted(set(lex.objects) | set(_EXTRA_OBJECTS))
    return _pick(name_pool, people, rng, "names") | _pick(object_pool, objects, rng, "objects")


def _cycle_permutations(n: int, rng: np.random.Generator) -> Iterator[int]:
    """Endless stream of indices: a fresh random permutation of ``range(n)`` each pass.

    Long targets may need more filler than a file holds; a story used again gets a new renaming each time.
    """
    while True:
        yield from (int(i) for i in rng.permutation(n))


def _story_filler(
    stories: Sequence[BabiStory],
    own: int,
    lex: _Lexicon,
    banned_people: set[str],
    banned_objects: set[str],
    query_things: set[str],
    budget: int,
    rng: np.random.Generator,
) -> list[_Piece]:
    """Facts of other stories, each renamed away from the question story's people/objects and the query's places.

    Stories are drawn from repeated random permutations of the file, so any target length can be reached.
    """
    name_pool = sorted(({p.lower() for p in lex.people} | {x.lower() for x in _EXTRA_NAMES}) - banned_people)
    object_pool = sorted((set(lex.objects) | set(_EXTRA_OBJECTS)) - banned_objects)
    place_pool = sorted(set(lex.things) - query_things - set(lex.objects)) or list(_EXTRA_PLACES)
    pieces: list[_Piece] = []
    words = 0
    if budget > 0 and len(stories) < 2:
        raise ValueError("story filler needs at least one other story in the file")
    for si in _cycle_permutations(len(stories), rng):
        if words >= budget:
            break
        if si == own:
            continue
        other = stories[si]
        people, objects = _story_entities(other, lex)
        mapping = _pick(name_pool, people, rng, "names") | _pick(object_pool, objects, rng, "objects")
        for thing in sorted(query_things):
            mapping[thing] = place_pool[int(rng.integers(len(place_pool)))]
        texts = [_ensure_period(_rename(f.text, mapping)) for f in other.facts]
        words = _add_filler_blocks(pieces, texts, words, budget)
    return pieces


def _add_filler_blocks(pieces: list[_Piece], texts: list[str], words: int, budget: int) -> int:
    """Append ``texts`` as filler pieces (a pronoun sentence kept with the one before) until ``budget`` words."""
    for block in _blocks(texts):
        if words >= budget:
            break
        sentences = [texts[i] for i in block]
        pieces.append(_Piece(sentences, [None] * len(sentences)))
        words += sum(word_count(s) for s in sentences)
    return words


def _hotpot_filler(
    paragraphs: Sequence[list[str]], banned: set[str], budget: int, rng: np.random.Generator
) -> list[_Piece]:
    """HotpotQA sentences (paragraphs kept, a pronoun sentence kept with the one before) avoiding ``banned`` words."""
    pieces: list[_Piece] = []
    words = 0
    for pi in rng.permutation(len(paragraphs)):
        if words >= budget:
            break
        para = paragraphs[int(pi)]
        if not para or any(_words_lower(s) & banned for s in para):
            continue
        texts = [_ensure_period(s) for s in para]
        words = _add_filler_blocks(pieces, texts, words, budget)
        pieces[-1].paragraph_end = True
    return pieces


# ---------------------------------------------------------------------------------------------------------------
# HotpotQA


def _load_hotpot(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected the HotpotQA JSON list of questions")
    return data


def hotpot_examples(
    path: str | Path, *, n: int, target_words: int, seed: int, offset: int = 0
) -> list[LabelledExample]:
    """Questions ``offset .. offset+n`` (file order), each buried among other questions' paragraphs.

    One document per question: its 10 context paragraphs plus paragraphs of other questions (titles not in its own
    context, each title once), shuffled together with a seeded generator until about ``target_words`` words. Each
    paragraph is ``"Title\\n"`` followed by its stripped sentences joined by spaces; gold = the supporting sentences.
    """
    if n <= 0 or target_words <= 0 or offset < 0:
        raise ValueError("n and target_words must be positive and offset non-negative")
    data = _load_hotpot(path)
    examples: list[LabelledExample] = []
    for qi in range(offset, min(len(data), offset + n)):
        q = data[qi]
        rng = np.random.default_rng([seed, qi])
        own_titles = {title for title, _ in q["context"]}
        own = [(title, list(sents), True) for title, sents in q["context"]]
        words = sum(_paragraph_words(title, sents) for title, sents, _ in own)
        pool: list[tuple[str, list[str], bool]] = []
        seen = set(own_titles)
        for oi in rng.permutation(len(data)):
            if words >= target_words:
                break
            if int(oi) == qi:
                continue
            for title, sents in data[int(oi)]["context"]:
                if words >= target_words:
                    break
                if title in seen:
                    continue
                seen.add(title)
                pool.append((title, list(sents), False))
                words += _paragraph_words(title, sents)
        paragraphs = own + pool
        order = rng.permutation(len(paragraphs))
        examples.append(_hotpot_example(q, [paragraphs[int(i)] for i in order]))
    return examples


def _paragraph_words(title: str, sentences: Sequence[str]) -> int:
    return word_count(title) + sum(word_count(s) for s in sentences)


def _hotpot_example(q: dict, paragraphs: Sequence[tuple[str, list[str], bool]]) -> LabelledExample:
    """Render paragraphs and map ``supporting_facts`` ``[title, sentence_index]`` of the question's own context."""
    wanted = {(title, int(i)) for title, i in q["supporting_facts"]}
    parts: list[str] = []
    pos = 0
    gold: list[GoldSpan] = []
    found: set[tuple[str, int]] = set()
    for title, sentences, own in paragraphs:
        if parts:
            parts.append("\n\n")
            pos += 2
        head = title.strip() + "\n"
        parts.append(head)
        pos += len(head)
        first = True
        for i, raw in enumerate(sentences):
            sentence = raw.strip()
            if not sentence:
                continue
            if not first:
                parts.append(" ")
                pos += 1
            first = False
            if own and (title, i) in wanted:
                gold.append(GoldSpan(0, pos, pos + len(sentence)))
                found.add((title, i))
            parts.append(sentence)
            pos += len(sentence)
    missing = wanted - found
    if missing:
        logger.warning("HotpotQA %s: supporting facts not found in context: %s", q.get("_id"), sorted(missing))
    return LabelledExample(
        id=str(q["_id"]),
        query=q["question"],
        documents=["".join(parts)],
        gold=gold,
        task="hotpotqa",
        answer=q["answer"],
    )


# ---------------------------------------------------------------------------------------------------------------
# Real documents: COVID-QA papers and QMSum meeting transcripts

Split = Literal["held-in", "held-out", "all"]
_SPLITS = ("held-in", "held-out", "all")


def real_split(ids: Sequence[str], split: Split) -> list[str]:
    """The document ids of ``split``: ids sorted (numerically when all are digits), the first third held in.

    Held-in documents are for tuning (fusion weights, head detection); tables are measured on the held-out rest,
    so no choice ever sees the documents it is judged on.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    key = (lambda i: (int(i), i)) if all(str(i).isdigit() for i in ids) else (lambda i: (0, str(i)))
    ordered = sorted(dict.fromkeys(ids), key=key)
    cut = len(ordered) // 3
    if split == "held-in":
        return ordered[:cut]
    return ordered[cut:] if split == "held-out" else ordered


def _check_real_args(n_documents: int | None, per_document: int | None, max_words: int | None) -> None:
    for name, value in (("n_documents", n_documents), ("per_document", per_document), ("max_words", max_words)):
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _pick_questions(count: int, per_document: int | None, seed: int, position: int) -> list[int]:
    """Indices of the questions kept for one document: all, or a seeded sample of ``per_document`` in file order."""
    if per_document is None or per_document >= count:
        return list(range(count))
    chosen = np.random.default_rng([seed, position]).choice(count, size=per_document, replace=False)
    return sorted(int(i) for i in chosen)


def _cut_blocks(blocks: Sequence[tuple[int, int]], text: str, max_words: int | None) -> int:
    """Number of leading blocks (paragraphs, turns) kept so the text reaches ``max_words`` words (all if None)."""
    if max_words is None:
        return len(blocks)
    words = 0
    for i, (s, e) in enumerate(blocks):
        words += word_count(text[s:e])
        if words >= max_words:
            return i + 1
    return len(blocks)


def covidqa_examples(
    path: str | Path,
    *,
    split: Split = "held-out",
    n_documents: int | None = None,
    per_document: int | None = None,
    seed: int = 0,
    max_words: int | None = None,
) -> list[LabelledExample]:
    """COVID-QA questions, grouped by paper (``document_id``); each paper kept whole as one document.

    The paper's ``context`` is the document as given (paragraphs separated by blank lines). Gold = the answer span
    ``answer_start .. answer_start + len(text)`` of each answer (checked against the text; an answer whose offset is
    off is located by its text nearest to the offset, one not found is dropped with a warning). Papers of ``split``
    in id order, the first ``n_documents``; per paper all questions or a seeded sample of ``per_document``.
    ``max_words`` cuts each paper after the paragraph that reaches it (smoke runs) and keeps the questions whose
    answers lie inside.
    """
    _check_real_args(n_documents, per_document, max_words)
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: expected the SQuAD layout {{'data': [{{'paragraphs': [...]}}]}}")
    papers = {str(p["document_id"]): p for article in data["data"] for p in article["paragraphs"]}
    wanted = real_split(list(papers), split)[:n_documents]
    examples: list[LabelledExample] = []
    for position, doc_id in enumerate(wanted):
        paper = papers[doc_id]
        text = paper["context"]
        blocks = paragraph_spans(text)
        kept = _cut_blocks(blocks, text, max_words)
        limit = blocks[kept - 1][1] if kept else 0
        if kept < len(blocks):
            text = text[:limit]
        candidates = []
        for q in paper["qas"]:
            gold = [g for g in (_covid_span(text, a, doc_id, q.get("id")) for a in q.get("answers", [])) if g]
            if gold and all(g.end <= limit for g in gold):
                candidates.append((q, gold))
        for qi in _pick_questions(len(candidates), per_document, seed, position):
            q, gold = candidates[qi]
            examples.append(
                LabelledExample(
                    id=f"covidqa-{doc_id}-{q.get('id', qi)}",
                    query=str(q["question"]).strip(),
                    documents=[text],
                    gold=sorted(set(gold), key=lambda g: (g.start, g.end)),
                    task="covidqa",
                    answer=str(q["answers"][0]["text"]),
                    document_id=doc_id,
                )
            )
    return examples


def _covid_span(text: str, answer: dict, doc_id: str, qid: object) -> GoldSpan | None:
    """The answer's exact span in ``text``: its offset when the text matches there, else the nearest occurrence."""
    answer_text = str(answer.get("text", ""))
    given = answer.get("answer_start")
    if not answer_text.strip() or not isinstance(given, int):
        return None
    start: int = given
    if text[start : start + len(answer_text)] != answer_text:
        hits = _find_all(text, answer_text)
        if not hits:
            if start + len(answer_text) <= len(text):  # only warn for answers inside the (possibly cut) text
                logger.warning("COVID-QA paper %s question %s: answer text not found; dropped", doc_id, qid)
            return None
        start = min(hits, key=lambda h: abs(h - given))
    s, e = start, start + len(answer_text)
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return GoldSpan(0, s, e)


def qmsum_examples(
    path: str | Path,
    *,
    split: Split = "held-out",
    n_documents: int | None = None,
    per_document: int | None = None,
    seed: int = 0,
    max_words: int | None = None,
) -> list[LabelledExample]:
    """QMSum specific queries, grouped by meeting; each meeting one document of ``Speaker: content`` turns.

    Turns are joined by a blank line (a turn's own whitespace collapsed to single spaces), so paragraph units are
    turns and sentence units never cross a turn. Gold = the whole turns of every ``relevant_text_span`` (turn
    numbers, both ends included), one span per turn. Meetings are numbered by file line (``qmsum-000`` ...);
    ``split`` and ``n_documents`` pick them in that order. ``max_words`` cuts each meeting after the turn that
    reaches it (smoke runs, to stay within a small model's window): gold is then clipped to the kept turns and
    queries with no gold turn left are dropped.
    """
    _check_real_args(n_documents, per_document, max_words)
    meetings: dict[str, dict] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh):
            if raw.strip():
                meetings[f"qmsum-{lineno:03d}"] = json.loads(raw)
    examples: list[LabelledExample] = []
    for position, doc_id in enumerate(real_split(list(meetings), split)[:n_documents]):
        meeting = meetings[doc_id]
        turns = meeting.get("meeting_transcripts")
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"{path}: meeting {doc_id} has no 'meeting_transcripts' turns")
        text, spans = _render_turns(turns)
        kept = _cut_blocks(spans, text, max_words)
        if kept < len(spans):
            text, spans = text[: spans[kept - 1][1]], spans[:kept]
        candidates = []
        for qi, q in enumerate(meeting.get("specific_query_list", [])):
            turn_ids = _qmsum_turns(q.get("relevant_text_span", []), len(turns), doc_id, qi)
            gold = [GoldSpan(0, *spans[t]) for t in sorted(turn_ids) if t < kept]
            if gold:
                candidates.append((qi, q, gold))
        for ci in _pick_questions(len(candidates), per_document, seed, position):
            qi, q, gold = candidates[ci]
            examples.append(
                LabelledExample(
                    id=f"{doc_id}-q{qi}",
                    query=str(q["query"]).strip(),
                    documents=[text],
                    gold=gold,
                    task="qmsum",
                    answer=q.get("answer"),
                    document_id=doc_id,
                )
            )
    return examples


def _render_turns(turns: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """``Speaker: content`` per turn, joined by blank lines; the span of each turn's line."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for turn in turns:
        line = f"{' '.join(str(turn.get('speaker', '')).split())}: {' '.join(str(turn.get('content', '')).split())}"
        if parts:
            parts.append("\n\n")
            pos += 2
        spans.append((pos, pos + len(line)))
        parts.append(line)
        pos += len(line)
    return "".join(parts), spans


def _qmsum_turns(ranges: object, n_turns: int, doc_id: str, qi: int) -> set[int]:
    """Turn indices of a query's ``relevant_text_span`` ranges (inclusive); ranges past the meeting are clipped."""
    out: set[int] = set()
    if not isinstance(ranges, list):
        raise ValueError(f"QMSum {doc_id} query {qi}: relevant_text_span must be a list of [first, last] pairs")
    for pair in ranges:
        try:
            first, last = (int(x) for x in pair)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"QMSum {doc_id} query {qi}: bad relevant_text_span entry {pair!r}") from exc
        if last >= n_turns:
            logger.warning("QMSum %s query %d: span %s past the %d turns; clipped", doc_id, qi, pair, n_turns)
        out.update(range(max(0, first), min(last, n_turns - 1) + 1))
    return out


def load_real(
    name: str,
    *,
    split: Split = "held-out",
    n_documents: int | None = None,
    per_document: int | None = None,
    seed: int = 0,
    max_words: int | None = None,
    data_dir: Path | None = None,
) -> list[LabelledExample]:
    """Questions of a real-document set (``covidqa``, ``qmsum``) from the shared data, grouped by document."""
    if name not in _REAL_FILES:
        raise ValueError(f"unknown real-document set {name!r}; known: {list(_REAL_FILES)}")
    loader = covidqa_examples if name == "covidqa" else qmsum_examples
    return loader(
        resolve_task_path(name, data_dir),
        split=split,
        n_documents=n_documents,
        per_document=per_document,
        seed=seed,
        max_words=max_words,
    )


def group_by_document(examples: Sequence[LabelledExample]) -> list[list[LabelledExample]]:
    """Consecutive runs of examples over the same document (same id and text), as a user asks them."""
    groups: list[list[LabelledExample]] = []
    for ex in examples:
        if groups and groups[-1][0].document_id == ex.document_id and groups[-1][0].documents == ex.documents:
            groups[-1].append(ex)
        else:
            groups.append([ex])
    return groups


# ---------------------------------------------------------------------------------------------------------------
# JSONL


def load_jsonl(path: str | Path) -> list[LabelledExample]:
    """Load examples in the simple JSONL format, one object per line.

    ``{"id"?, "query", "documents": [str, ...] | "document": str, "gold": [{"document"?: 0, "start", "end"} |
    {"document"?: 0, "text"}], "answer"?, "task"?}``. Gold given by text must occur exactly once in the named document
    (or, without ``document``, across all documents); absent or ambiguous text is an error.
    """
    path = Path(path)
    examples: list[LabelledExample] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: invalid JSON ({exc})") from exc
            examples.append(_jsonl_example(obj, where, default_id=f"{path.stem}-{lineno}", default_task=path.stem))
    return examples


def _jsonl_example(obj: object, where: str, default_id: str, default_task: str) -> LabelledExample:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: each line must be a JSON object")
    query = obj.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"{where}: 'query' must be a non-empty string")
    if "documents" in obj:
        documents = obj["documents"]
    elif "document" in obj:
        documents = [obj["document"]]
    else:
        raise ValueError(f"{where}: needs 'documents' (list of strings) or 'document' (string)")
    if not isinstance(documents, list) or not documents or not all(isinstance(d, str) for d in documents):
        raise ValueError(f"{where}: 'documents' must be a non-empty list of strings")
    gold_raw = obj.get("gold")
    if not isinstance(gold_raw, list) or not gold_raw:
        raise ValueError(f"{where}: 'gold' must be a non-empty list")
    gold = [_jsonl_gold(g, documents, where) for g in gold_raw]
    answer = obj.get("answer")
    return LabelledExample(
        id=str(obj.get("id", default_id)),
        query=query,
        documents=list(documents),
        gold=gold,
        task=str(obj.get("task", default_task)),
        answer=None if answer is None else str(answer),
    )


def _jsonl_gold(g: object, documents: Sequence[str], where: str) -> GoldSpan:
    """One gold entry: explicit offsets are range-checked; text is located and must be unique."""
    if not isinstance(g, dict):
        raise ValueError(f"{where}: each gold entry must be an object")
    doc = g.get("document")
    if doc is not None and (not isinstance(doc, int) or not 0 <= doc < len(documents)):
        raise ValueError(f"{where}: gold document index {doc!r} out of range (0..{len(documents) - 1})")
    if "text" in g:
        text = g["text"]
        if not isinstance(text, str) or not text:
            raise ValueError(f"{where}: gold 'text' must be a non-empty string")
        candidates = [doc] if doc is not None else list(range(len(documents)))
        hits = [(d, s) for d in candidates for s in _find_all(documents[d], text)]
        if not hits:
            raise ValueError(f"{where}: gold text not found in the document(s): {text[:80]!r}")
        if len(hits) > 1:
            raise ValueError(
                f"{where}: gold text is ambiguous ({len(hits)} occurrences), give 'start'/'end' instead: {text[:80]!r}"
            )
        d, s = hits[0]
        return GoldSpan(d, s, s + len(text))
    start, end = g.get("start"), g.get("end")
    if not isinstance(start, int) or not isinstance(end, int):
        raise ValueError(f"{where}: a gold entry needs integer 'start' and 'end', or 'text'")
    d = doc if doc is not None else 0
    if not 0 <= start < end <= len(documents[d]):
        raise ValueError(f"{where}: gold span [{start}, {end}) outside document {d} (length {len(documents[d])})")
    return GoldSpan(d, start, end)


def _find_all(haystack: str, needle: str) -> list[int]:
    """Every start offset of ``needle`` in ``haystack`` (overlapping occurrences included)."""
    out: list[int] = []
    i = haystack.find(needle)
    while i >= 0:
        out.append(i)
        i = haystack.find(needle, i + 1)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Dispatch, gold units, lexical overlap


def load_examples(
    path_or_name: str | Path, *, n: int, target_words: int, seed: int, offset: int = 0
) -> list[LabelledExample]:
    """Examples from a task name (``babi-qa2``, ``hotpotqa``) or a file: bAbI ``.txt``, HotpotQA ``.json``, ``.jsonl``.

    ``target_words`` and ``seed`` apply to built documents; a JSONL file is returned as is. ``offset`` skips that many
    questions (of the seeded order for bAbI, of the file order otherwise), so head detection (``offset=0``) and
    evaluation (a larger offset) use disjoint questions.
    """
    if isinstance(path_or_name, str) and path_or_name in REAL_TASKS:
        raise ValueError(
            f"{path_or_name!r} is a real-document set (several questions per document, split by document): "
            "load it with load_real(name, split=...)"
        )
    path = Path(path_or_name)
    if not path.exists() and isinstance(path_or_name, str) and re.fullmatch(r"babi-qa\d+|hotpotqa", path_or_name):
        path = resolve_task_path(path_or_name)
    if not path.is_file():
        raise FileNotFoundError(f"no such example file or task: {path_or_name}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return babilong_examples(path, n=n, target_words=target_words, seed=seed, offset=offset)
    if suffix == ".json":
        return hotpot_examples(path, n=n, target_words=target_words, seed=seed, offset=offset)
    if suffix == ".jsonl":
        return load_jsonl(path)[offset : offset + n]
    raise ValueError(f"unsupported example file {path}: expected a bAbI .txt, the HotpotQA .json or a .jsonl")


def gold_units(units: Sequence[tuple[int, int]], gold: Sequence[GoldSpan], document_index: int) -> set[int]:
    """Indices of units ``(start, end)`` of one document that overlap any gold span of that document."""
    spans = [(g.start, g.end) for g in gold if g.document_index == document_index]
    return {i for i, (s, e) in enumerate(units) if any(s < ge and gs < e for gs, ge in spans)}


_STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between both
    but by can could did do does doing down during each few for from further had has have having he her here hers
    herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
    once only or other our ours ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves also s t""".split()
)


def _stem(word: str) -> str:
    """A light plural/possessive stemmer, so 'films' and 'film' count as the same content word."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_words(text: str) -> set[str]:
    """Lower-cased, lightly stemmed words of ``text`` minus English stop words (for the no-overlap recall)."""
    return {_stem(w) for w in re.findall(r"[a-z0-9]+(?:'s)?", text.lower()) if w not in _STOPWORDS and len(w) > 1}


def shares_content_word(a: str, b: str) -> bool:
    """Whether two texts share a content word: gold sentences that do not are the lexical-gap cases."""
    return bool(content_words(a) & content_words(b))
