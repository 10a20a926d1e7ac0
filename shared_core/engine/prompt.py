"""Prompt layout: document first, query last, so the document's KV cache is query-independent.

The prompt is cut into a document part (template head + document) and a query part (instruction,
query, template tail). Each part is tokenized on its own, with offsets, so token→character
alignment comes from the tokenizer, never from string search.

Document, instruction and query text are always encoded as plain text (`split_special_tokens=True`): a
document containing `<|im_end|>` gets the tokens of those characters, never the control token, so
content cannot change the prompt's structure. Only the template's own pieces carry special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shared_core.validation import check_text

_DOC = "\x00ATTNRET_DOCUMENT\x00"
_QUERY = "\x00ATTNRET_QUERY\x00"


@dataclass(frozen=True)
class DocumentTokens:
    """Token ids of the document part; `offsets[i]` are the char offsets of document token i in the text."""

    ids: list[int]
    doc_start: int  # index in `ids` of the first document token
    offsets: np.ndarray  # [n_doc_tokens, 2] char offsets into the document text

    @property
    def n_doc_tokens(self) -> int:
        """Number of tokens that belong to the document text itself."""
        return len(self.offsets)


@dataclass(frozen=True)
class QueryTokens:
    """Token ids of the query part and the rows (indices in `ids`) that count as query tokens."""

    ids: list[int]
    rows: list[int]


class PromptLayout:
    """Splits the (chat or plain) prompt around the document and query, once per tokenizer."""

    def __init__(self, tokenizer: Any, mode: str, instruction: str) -> None:
        self.tokenizer = tokenizer
        template = getattr(tokenizer, "chat_template", None)
        self.chat = mode == "chat" or (mode == "auto" and bool(template))
        if mode == "chat" and not template:
            raise ValueError("model.prompt is 'chat' but the tokenizer has no chat template; use 'plain' or 'auto'")
        user = f"Here is a document:\n\n{_DOC}\n\n{instruction}\nQuery: {_QUERY}"
        if self.chat:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
            self.head_special = False  # the template already renders BOS/special tokens as text
        else:
            text = user + "\nRelevant passages:"
            self.head_special = True
        head, rest = text.split(_DOC)
        self.head, self.tail = head, rest.split(_QUERY)[1]
        self.mid = rest.split(_QUERY)[0]
        self.key = f"{'chat' if self.chat else 'plain'}|{head}|{self.mid}|{self.tail}"
        # the tail's text up to its first control token is tokenized with the query, as the tokenizer would (it
        # splits text at control tokens first); the rest keeps the template's control tokens
        cut = _first_control(self.tail, _control_strings(tokenizer))
        self.tail_text, self.tail_template = self.tail[:cut], self.tail[cut:]
        template = self.tail_template
        self._tail_ids = list(self.tokenizer(template, add_special_tokens=False)["input_ids"]) if template else []

    def document(self, text: str) -> DocumentTokens:
        """Tokenize the template head and the document text as plain text (with offsets)."""
        check_text(text, "document")
        head_ids = self.tokenizer(self.head, add_special_tokens=self.head_special)["input_ids"]
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        if len(offsets) == 0:
            raise ValueError(
                f"the document ({len(text)} characters) gives no tokens: this tokenizer drops every character of it "
                "(e.g. control or unassigned characters); remove them or use another model"
            )
        return DocumentTokens(ids=list(head_ids) + list(enc["input_ids"]), doc_start=len(head_ids), offsets=offsets)

    def query(self, query: str, rows: str) -> QueryTokens:
        """Tokenize instruction + query + template tail, the text parts as plain text; `rows` = 'query' (its own
        tokens) or 'all'. A query that gives no token of its own is a ValueError."""
        text = self.mid + check_text(query, "query") + self.tail_text
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
        ids = list(enc["input_ids"]) + self._tail_ids
        q0, q1 = len(self.mid), len(self.mid) + len(query)
        picked = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < q1 and e > q0]
        if not picked:
            raise ValueError(
                f"the query ({len(query)} characters) gives no tokens of its own: this tokenizer drops every "
                "character of it; rephrase it with visible text"
            )
        if rows == "all":
            return QueryTokens(ids=ids, rows=list(range(len(ids))))
        return QueryTokens(ids=ids, rows=picked)


def _control_strings(tokenizer: Any) -> list[str]:
    """Text forms of the tokenizer's added tokens (control tokens), which it matches before anything else."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    strings = {getattr(t, "content", str(t)) for t in added.values()}
    strings.update(getattr(tokenizer, "all_special_tokens", None) or [])
    return [s for s in strings if s]


def _first_control(text: str, controls: list[str]) -> int:
    """Index of the first control-token string in `text` (len(text) when there is none)."""
    found = [i for i in (text.find(c) for c in controls) if i >= 0]
    return min(found, default=len(text))
