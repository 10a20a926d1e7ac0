"""The README: its configuration example is a valid config with the real defaults, it is short, its links resolve and
its Python snippets run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
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


def _python_blocks(text: str) -> list[str]:
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def test_readme_is_short_and_every_link_resolves() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300, "the README is for users: move details to docs/"
    root = README.parent
    pages = [README, *sorted((root / "docs").glob("*.md")), root / "CONTRIBUTING.md"]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text(encoding="utf-8")):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.integration
def test_readme_python_snippets_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(README.parent)
    namespace: dict[str, object] = {}
    blocks = _python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 3  # Python, LlamaIndex, Haystack
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # each block builds on the ones before, as a reader does
    out = capsys.readouterr().out
    assert "Venn" in out  # the retrieved sentence and the ranked document name the answer
