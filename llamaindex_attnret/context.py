"""Place LlamaIndex nodes back into their source document and map core offsets back to nodes.

Nodes that share a `ref_doc_id` are siblings: they are ordered by `start_char_idx` and joined with a
blank line into one core `Document`, so every node is read in the context of what precedes it and
every core unit (sentence or paragraph) falls inside exactly one node. A node without `ref_doc_id`
forms a context of its own ("scored alone"). Nodes without text (image nodes, empty or whitespace
text) cannot be scored; `split_scoreable` returns them separately so callers can pass them through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llama_index.core.schema import (
    BaseNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.core.schema import Document as LIDocument

from shared_core import Document, Hit
from shared_core.document import unit_meta
from shared_core.tasks.candidates import Candidate

NODE_SEPARATOR = "\n\n"
RETRIEVAL_SCORE_KEY = "retrieval_score"
"""Metadata key of the first-stage score kept by `keep_retrieval_score` (as LlamaIndex's own rerankers name it)."""


@dataclass(frozen=True)
class Member:
    """One node placed in a context: its caller position and its character span in the context text."""

    position: int
    item: NodeWithScore
    start: int
    end: int

    @property
    def node(self) -> BaseNode:
        """The LlamaIndex node."""
        return self.item.node

    def document_offset(self, context_offset: int) -> int | None:
        """Offset in the original document for an offset in the context text (None when the node has none)."""
        origin = 0 if isinstance(self.node, LIDocument) else _start(self.node)
        return None if origin is None else origin + context_offset - self.start


@dataclass(frozen=True)
class SourceContext:
    """Sibling nodes of one source document joined into one text, with each node's span in it."""

    key: str
    text: str
    members: tuple[Member, ...]

    def document(self) -> Document:
        """The core document for this context (its id is the ref doc id, or the lone node's id)."""
        return Document(text=self.text, id=self.key)

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Character spans of the members in the context text, in member order."""
        return [(m.start, m.end) for m in self.members]

    def member_at(self, start: int, end: int) -> Member:
        """The member whose span contains [start, end); the core never returns a unit across a node break."""
        for member in self.members:
            if member.start <= start and end <= member.end:
                return member
        raise RuntimeError(f"unit ({start}, {end}) of context {self.key!r} does not lie inside one node")


def node_text(node: BaseNode) -> str:
    """The node's own text, without metadata ('' for nodes without text such as image nodes)."""
    return node.get_content(metadata_mode=MetadataMode.NONE) or ""


def node_candidate(item: NodeWithScore, metadata_mode: MetadataMode) -> Candidate:
    """The node as a candidate of the candidate-set scorer: its content in `metadata_mode` (metadata the mode shows,
    then the text, as the sentence-transformers rerank reads it), grouped with its ref doc, at its start offset."""
    node = item.node
    return Candidate(
        text=node.get_content(metadata_mode=metadata_mode) or "",
        id=node.node_id,
        source=node.ref_doc_id,
        start=_start(node) if node.ref_doc_id else None,
    )


def rescored(item: NodeWithScore, score: float | None, keep_retrieval_score: bool) -> NodeWithScore:
    """A new NodeWithScore with `score`; with `keep_retrieval_score`, a copy of the node whose metadata holds the
    first-stage score under "retrieval_score" (the input node is never mutated)."""
    node = item.node
    if keep_retrieval_score:
        node = node.model_copy(update={"metadata": {**node.metadata, RETRIEVAL_SCORE_KEY: item.score}})
    return NodeWithScore(node=node, score=score)


def split_scoreable(nodes: Sequence[NodeWithScore]) -> tuple[list[tuple[int, NodeWithScore]], list[NodeWithScore]]:
    """(position, node) pairs that have text to score, and the nodes without text (in input order)."""
    scoreable: list[tuple[int, NodeWithScore]] = []
    textless: list[NodeWithScore] = []
    if isinstance(nodes, str | NodeWithScore) or not isinstance(nodes, Sequence):
        raise TypeError(f"nodes must be a list of NodeWithScore, got {type(nodes).__name__}")
    for position, item in enumerate(nodes):
        if not isinstance(item, NodeWithScore):
            raise TypeError(f"nodes must be NodeWithScore objects, got {type(item).__name__} at position {position}")
        (scoreable.append((position, item)) if node_text(item.node).strip() else textless.append(item))
    return scoreable, textless


def build_contexts(items: Sequence[tuple[int, NodeWithScore]]) -> list[SourceContext]:
    """Group nodes by ref doc (first appearance order), order siblings by start offset, join them."""
    groups: dict[str, list[tuple[int, NodeWithScore]]] = {}
    for position, item in items:
        key = item.node.ref_doc_id or item.node.node_id
        groups.setdefault(key, []).append((position, item))
    contexts = []
    for key, members in groups.items():
        ordered = sorted(members, key=_document_order)
        parts: list[str] = []
        placed: list[Member] = []
        cursor = 0
        for position, item in ordered:
            if parts:
                parts.append(NODE_SEPARATOR)
                cursor += len(NODE_SEPARATOR)
            text = node_text(item.node)
            parts.append(text)
            placed.append(Member(position=position, item=item, start=cursor, end=cursor + len(text)))
            cursor += len(text)
        contexts.append(SourceContext(key=key, text="".join(parts), members=tuple(placed)))
    return contexts


def unit_node(context: SourceContext, hit: Hit) -> NodeWithScore:
    """A new TextNode for a core hit: the unit's text, the source node's metadata and relationships.

    SOURCE points to the source node's ref doc (or to the node itself when it has none), PARENT to
    the node the unit was cut from; start/end char offsets are those of the original document. The metadata is
    the node's plus the `attnret_` keys (`shared_core.document.unit_meta`: source node id, offsets in its text,
    reasons, per-view scores), which are excluded from embedding and LLM metadata.
    """
    member = context.member_at(hit.start, hit.end)
    source = member.node
    local = (hit.start - member.start, hit.end - member.start)
    relationships: dict[NodeRelationship, RelatedNodeInfo] = {NodeRelationship.PARENT: source.as_related_node_info()}
    relationships[NodeRelationship.SOURCE] = source.source_node or source.as_related_node_info()
    added = unit_meta(hit, source.node_id, *local)
    node = TextNode(
        id_=f"{source.node_id}#{local[0]}-{local[1]}",
        text=hit.text,
        metadata={**source.metadata, **added},
        excluded_embed_metadata_keys=_excluded(source.excluded_embed_metadata_keys, added),
        excluded_llm_metadata_keys=_excluded(source.excluded_llm_metadata_keys, added),
        relationships=relationships,
        start_char_idx=member.document_offset(hit.start),
        end_char_idx=member.document_offset(hit.end),
    )
    return NodeWithScore(node=node, score=float(hit.score))


def _excluded(keys: Sequence[str], added: dict[str, object]) -> list[str]:
    """`keys` plus the added `attnret_` keys (never embedded nor shown to the LLM), each once."""
    return [*keys, *(key for key in added if key not in keys)]


def _document_order(entry: tuple[int, NodeWithScore]) -> tuple[bool, int, int]:
    position, item = entry
    start = _start(item.node)
    return (start is None, start or 0, position)


def _start(node: BaseNode) -> int | None:
    """The node's start offset in its document (Document objects and some node types have none)."""
    return getattr(node, "start_char_idx", None)
