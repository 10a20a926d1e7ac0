"""The README's configuration example is a valid config and states the real defaults."""

from __future__ import annotations

from pathlib import Path

import yaml

from shared_core import RetrieverConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_yaml_is_a_valid_config_with_the_shipped_defaults() -> None:
    block = README.read_text(encoding="utf-8").split("```yaml", 1)[1].split("```", 1)[0]
    data = yaml.safe_load(block)
    config = RetrieverConfig.model_validate(data)
    defaults = RetrieverConfig()
    for section, values in data.items():
        for key in values:
            assert getattr(getattr(config, section), key) == getattr(getattr(defaults, section), key), (section, key)
