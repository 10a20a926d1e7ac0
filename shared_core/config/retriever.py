"""The retriever's whole configuration: one pydantic model with a section per concern, and its YAML form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from shared_core.config import sections as s
from shared_core.config.cascade import CascadeConfig
from shared_core.config.reading import ConfigError, load_yaml, read_yaml_file
from shared_core.config.section import ConfigSection as _Section


class RetrieverConfig(_Section):
    """Every knob of AttentionRetriever; build from Python, a dict or YAML (`from_yaml`/`to_yaml` round-trip)."""

    model: s.ModelConfig = Field(default_factory=s.ModelConfig)
    attention: s.AttentionConfig = Field(default_factory=s.AttentionConfig)
    units: s.UnitsConfig = Field(default_factory=s.UnitsConfig)
    dense: s.DenseConfig = Field(default_factory=s.DenseConfig)
    lexical: s.LexicalConfig = Field(default_factory=s.LexicalConfig)
    fusion: s.FusionConfig = Field(default_factory=s.FusionConfig)
    entities: s.EntitiesConfig = Field(default_factory=s.EntitiesConfig)
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


def _looks_like_path(source: str) -> bool:
    """A one-line string ending in .yaml/.yml names a file; anything else is YAML text (never probed on disk)."""
    return "\n" not in source and source.strip().lower().endswith((".yaml", ".yml"))
