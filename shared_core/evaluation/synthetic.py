"""Built documents: bAbI stories scattered BABILong-style among renamed facts of other stories, and HotpotQA
paragraphs buried among other questions' paragraphs (see DESIGN.md, "The trap")."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared_core.evaluation.data import babi_task_name, resolve_task_path
from shared_core.evaluation.examples import GoldSpan, LabelledExample, word_count
from shared_core.evaluation.hotpot import load_hotpot

logger = logging.getLogger(__name__)


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
            [s.strip() for s in sents if s.strip()] for q in load_hotpot(path) for _, sents in q["context"]
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
