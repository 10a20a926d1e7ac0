"""Config wing: the retriever's configuration, its sections and the safe YAML reader behind every config file.

The bottom of the core: it may import `shared_core.text` (the spaCy pipeline names its sections default to) and
nothing else of the package, so every wing above can read its section without an import circle.
"""

from shared_core.config.cascade import CascadeConfig, parse_bytes
from shared_core.config.reading import (
    ConfigError,
    ConfigFileNotFoundError,
    load_yaml,
    read_yaml_file,
    validation_message,
)
from shared_core.config.retriever import RetrieverConfig
from shared_core.config.section import ConfigSection
from shared_core.config.sections import (
    AttentionConfig,
    DenseConfig,
    EntitiesConfig,
    FusionConfig,
    LexicalConfig,
    ModelConfig,
    UnitsConfig,
)

__all__ = [
    "AttentionConfig",
    "CascadeConfig",
    "ConfigError",
    "ConfigFileNotFoundError",
    "ConfigSection",
    "DenseConfig",
    "EntitiesConfig",
    "FusionConfig",
    "LexicalConfig",
    "ModelConfig",
    "RetrieverConfig",
    "UnitsConfig",
    "load_yaml",
    "parse_bytes",
    "read_yaml_file",
    "validation_message",
]
