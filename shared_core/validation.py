"""Input checks shared by the core, the CLI and both adapters: one message and one exception type per mistake."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from typing import Any

from shared_core.document import Document, default_id


def check_text(text: str, name: str) -> str:
    """Text must be encodable as UTF-8: a lone surrogate (e.g. from a bad decode) is a ValueError naming its index."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{name} contains a lone surrogate {text[exc.start]!a} at index {exc.start}, which is not text; decode "
            "the input with errors='replace' or fix it at its source"
        ) from None
    return text


def check_query(query: Any) -> str:
    """A query must be a non-blank str of encodable text; returns it unchanged."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    if not query.strip():
        raise ValueError("query is empty or whitespace")
    return check_text(query, "query")


def check_top_k(top_k: Any, name: str = "top_k") -> int:
    """A result count must be a positive int (numpy ints too; bool is refused: `True` is not 1 result)."""
    if isinstance(top_k, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(top_k)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(top_k).__name__}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def coerce_document(document: Any, index: int, allow_blank: bool = False) -> Document:
    """A str or core Document with non-blank text (blank allowed where a caller has a result for it), as a Document;
    one without an id (a plain str, or `id=None`) gets `default_id(text)`, a content hash."""
    if isinstance(document, Document):
        doc = document
    elif isinstance(document, str):
        doc = Document(text=document)
    else:
        raise TypeError(f"document {index} must be a str or shared_core.Document, got {type(document).__name__}")
    if not isinstance(doc.text, str):
        raise TypeError(f"document {index} text must be a str, got {type(doc.text).__name__}")
    if not doc.text.strip() and not allow_blank:
        raise ValueError(f"document {index} is empty or whitespace")
    check_text(doc.text, f"document {index}")
    return doc if doc.id is not None else dataclasses.replace(doc, id=default_id(doc.text))


def check_sequence(value: Any, name: str, items: str, single: tuple[type, ...], hint: str) -> Sequence[Any]:
    """A non-empty sequence named `name` of `items`; a bare item (one of `single`) is refused with `hint`."""
    if isinstance(value, single):
        raise TypeError(f"{name} must be a sequence of {items} ({hint})")
    if not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of {items}, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} is empty")
    return value


def coerce_documents(documents: Any, allow_blank: bool = False) -> list[Document]:
    """A non-empty sequence of documents (a bare str or Document is refused: wrap it in a list)."""
    documents = check_sequence(
        documents, "documents", "str/Document", (str, Document), "wrap a single document in a list"
    )
    return [coerce_document(d, i, allow_blank) for i, d in enumerate(documents)]


def check_queries(queries: Any) -> list[str]:
    """A non-empty sequence of queries (a bare str is refused: use `retrieve` or wrap it in a list)."""
    queries = check_sequence(queries, "queries", "str", (str,), "use retrieve() for one query, or wrap it in a list")
    out = []
    for i, q in enumerate(queries):
        try:
            out.append(check_query(q))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"queries[{i}]: {exc}") from None
    return out
