"""Head selection: which (layer, head) pairs are read, from config, a head-set file or a shipped set.

Head strings follow the QRHead reference: ``"layer-head"``, both 0-indexed, head = query head. A head-set file may
give each head a non-negative weight (``weights:``, as `attnret train-heads` writes): the view then combines the heads
by those weights, and heads of weight 0 are not read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from shared_core.config import AttentionConfig, ConfigError, read_yaml_file
from shared_core.engine.query_adapter import QueryAdapter, load_adapter

_HEAD_RE = re.compile(r"^\s*(-?\d+)\s*-\s*(\d+)\s*$")


@dataclass(frozen=True)
class HeadSelection:
    """Selected heads per layer (None = every head of that layer), in ascending layer order."""

    per_layer: dict[int, tuple[int, ...] | None]
    source: str
    weights: dict[int, tuple[float, ...]] | None = None
    """Per layer, one weight per selected head (aligned with `per_layer`); None = every head counts the same."""
    adapter: QueryAdapter | None = None
    """The query-side adapter trained for these heads (the head-set file's ``adapter:``), None = the frozen model."""
    candidate_adapter: bool = True
    """Whether candidate sets are read through `adapter` too (the file's ``adapter_modes``; units of documents are)."""

    def for_candidates(self) -> HeadSelection:
        """The selection that reads candidate sets: without the adapter where the head set keeps it to documents."""
        return self if self.candidate_adapter or self.adapter is None else replace(self, adapter=None)

    @property
    def key(self) -> tuple[Any, ...]:
        """What cached scores of this selection depend on: its heads and its adapter's weights."""
        return (tuple(self.per_layer.items()), self.adapter.digest if self.adapter else None)

    @property
    def layers(self) -> list[int]:
        """Layers that hold at least one selected head."""
        return sorted(self.per_layer)

    @property
    def deepest(self) -> int:
        """The last layer the forward pass must reach."""
        return max(self.per_layer)


def parse_heads(items: list[str], num_layers: int, num_heads: int) -> dict[int, tuple[int, ...]]:
    """Parse 'layer-head' strings and check them against the model's shape; clear errors otherwise."""
    per_layer: dict[int, set[int]] = {}
    for item in items:
        m = _HEAD_RE.match(str(item))
        if not m:
            raise ValueError(f"head {item!r} is not of the form 'layer-head' (e.g. '14-22', both 0-indexed)")
        layer, head = int(m.group(1)), int(m.group(2))
        if not 0 <= layer < num_layers or not 0 <= head < num_heads:
            raise ValueError(
                f"head {item!r} is outside this model: it has {num_layers} layers (0-{num_layers - 1}) "
                f"and {num_heads} query heads per layer (0-{num_heads - 1})"
            )
        per_layer.setdefault(layer, set()).add(head)
    return {layer: tuple(sorted(h)) for layer, h in sorted(per_layer.items())}


def load_head_file(path: str | Path) -> dict[str, Any]:
    """Read a head-set YAML file (as written by `attnret detect-heads` or `train-heads`); a missing file is a
    `ConfigFileNotFoundError`, a malformed one a `ConfigError` (both ValueErrors)."""
    data = read_yaml_file(path, what="head-set")
    if not isinstance(data, dict) or not isinstance(data.get("heads"), list) or not data["heads"]:
        raise ConfigError(
            f"{path}: a head-set file is a YAML mapping with a non-empty 'heads' list of 'layer-head' strings"
        )
    if data.get("weights") is not None:
        _check_weights(data["weights"], data["heads"], path)
    if data.get("adapter") is not None and not isinstance(data["adapter"], str):
        raise ConfigError(f"{path}: 'adapter' must be the file name of a query adapter")
    modes = data.setdefault("adapter_modes", list(ADAPTER_MODES))  # the one place the default is set
    if not isinstance(modes, list) or not modes or any(m not in ADAPTER_MODES for m in modes):
        raise ConfigError(
            f"{path}: 'adapter_modes' must be a non-empty list of {list(ADAPTER_MODES)} (where the adapter is used)"
        )
    return data


ADAPTER_MODES = ("documents", "candidates")
"""What a head set's query adapter may read: units of documents, candidate sets (`adapter_modes`, default both)."""


ADAPTER_DIR = "adapters"
"""Folder of the user model cache holding query adapters trained by the user, under the names head sets give them."""


def file_adapter(
    data: dict[str, Any], path: str | Path, adapter_dir: Path | None = None, required: bool = True
) -> QueryAdapter | None:
    """The query adapter a head-set file names, loaded; None without one. It is looked up beside the file (a head set
    of your own keeps its own there), then, when `required`, in
    `adapter_dir` (the user cache's `adapters/`). Not `required` (`query_adapter: auto`), one that is not beside
    the file is None; required and found nowhere, a `ConfigError` says how to train it or turn it off."""
    name = data.get("adapter")
    if not name:
        return None
    places = [Path(path).parent / name]
    if required and adapter_dir is not None:
        places.append(adapter_dir / name)
    for place in places:
        if place.is_file():
            return load_adapter(place)
    if not required:
        return None
    raise ConfigError(
        f"{path} names the query adapter {name!r}, found in none of {[str(p) for p in places]}: train one with "
        "`attnret train-adapter --data ... --out heads.yaml` and set attention.heads: heads.yaml (it uses the "
        f"adapter written beside it), copy a trained adapter to {places[-1]}, or set attention.query_adapter to "
        "auto (use it only where it lies beside the head-set file) or false"
    )


def _check_weights(weights: Any, heads: list[Any], path: str | Path) -> None:
    """A head-set file's `weights`: a mapping from each listed head to a finite weight >= 0, one of them > 0."""
    if not isinstance(weights, dict):
        raise ConfigError(f"{path}: 'weights' must map each head of 'heads' to a number >= 0")
    names = {str(h).strip() for h in heads}
    missing = sorted(names - {str(k).strip() for k in weights})
    extra = sorted({str(k).strip() for k in weights} - names)
    if missing or extra:
        raise ConfigError(
            f"{path}: 'weights' must name exactly the heads of 'heads' (missing {missing}, extra {extra})"
        )
    for head, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"{path}: the weight of head {head!r} must be a finite number >= 0, got {w!r}")
    if not any(w > 0 for w in weights.values()):
        raise ConfigError(f"{path}: every head weight is 0; at least one must be positive")


def weighted_selection(
    heads: list[str], weights: dict[str, float], num_layers: int, num_heads: int, source: str
) -> HeadSelection:
    """The heads of positive weight, each with its weight: the read stops at the deepest weighted layer."""
    kept = {str(h).strip(): float(w) for h, w in weights.items() if float(w) > 0}
    per_layer = parse_heads([h for h in heads if str(h).strip() in kept], num_layers, num_heads)
    by_index = {(int(a), int(b)): w for h, w in kept.items() for a, b in [h.split("-")]}
    weight_rows = {layer: tuple(by_index[(layer, h)] for h in hs) for layer, hs in per_layer.items()}
    return HeadSelection(dict(per_layer), source=source, weights=weight_rows)


def shipped_head_sets() -> dict[str, Path]:
    """Head-set files shipped with the package, by the model id they were detected for."""
    found: dict[str, Path] = {}
    folder = resources.files("shared_core") / "head_sets"
    if not folder.is_dir():
        return found
    for entry in folder.iterdir():
        if entry.name.endswith(".yaml"):
            path = Path(str(entry))
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for model_id in [data.get("model"), *data.get("aliases", [])]:
                if model_id:
                    found[str(model_id)] = path
    return found


def head_set_file(config: AttentionConfig, model_id: str) -> str | None:
    """The head-set file `config` reads: the model's shipped one under `heads: auto` (and `layers: auto`), or the
    file `heads` names; None for every head, a head list, or a model without a shipped set. Its heads
    (`select_heads`) and its fusion blocks (`views.model_fusion`) come from this one file."""
    if config.heads == "auto":
        path = shipped_head_sets().get(model_id) if config.layers == "auto" else None
        return str(path) if path else None
    return config.heads if isinstance(config.heads, str) and config.heads != "all" else None


def select_heads(
    config: AttentionConfig,
    num_layers: int,
    num_heads: int,
    model_id: str,
    full_layers: Sequence[int] | None = None,
    adapter_dir: Path | None = None,
) -> HeadSelection:
    """Resolve `attention.heads`/`attention.layers` into the heads to read for this model.

    An explicit `layers` list always applies: with `heads: auto` it reads every head of those layers instead of the
    shipped head set (the config refuses an explicit head set together with explicit layers). `full_layers` are the
    layers that attend to the whole context (None = all): `layers: auto` reads only those. `adapter_dir`: where a
    head set's query adapter is looked up after its own folder (`file_adapter`).
    """
    heads = config.heads
    path = head_set_file(config, model_id)
    if path is not None:
        data = load_head_file(path)
        wanted = config.query_adapter
        adapter = file_adapter(data, path, adapter_dir, required=wanted is True) if wanted is not False else None
        candidates = "candidates" in data["adapter_modes"]
        if data.get("weights") is not None:
            picked = weighted_selection(data["heads"], data["weights"], num_layers, num_heads, path)
            return replace(picked, adapter=adapter, candidate_adapter=candidates)
        per_layer: dict[int, tuple[int, ...] | None] = dict(parse_heads(data["heads"], num_layers, num_heads))
        return HeadSelection(per_layer, path, adapter=adapter, candidate_adapter=candidates)
    if isinstance(heads, list):
        return HeadSelection(dict(parse_heads(heads, num_layers, num_heads)), source="config")
    if config.layers == "auto":
        layers = auto_layers(num_layers, full_layers)
    else:
        layers = _explicit_layers(config.layers, num_layers)
    return HeadSelection(dict.fromkeys(layers), source="layers")


def auto_layers(num_layers: int, full_layers: Sequence[int] | None = None) -> list[int]:
    """The second half of the layers (the band that retrieved best in our measurements, README), keeping only
    layers that see the whole context: a sliding-window layer sees the last few hundred tokens, so its attention
    ranks by recency (measured on Gemma 3 270M, docs/quality.md). With no full layer there, every full layer."""
    band = list(range(num_layers // 2, num_layers))
    if full_layers is None:
        return band
    full = set(full_layers)
    return [layer for layer in band if layer in full] or sorted(full) or band


def _explicit_layers(layers: list[int], num_layers: int) -> list[int]:
    out = set()
    for layer in layers:
        idx = layer + num_layers if layer < 0 else layer
        if not 0 <= idx < num_layers:
            raise ValueError(f"attention.layers: {layer} is outside this model's {num_layers} layers")
        out.add(idx)
    return sorted(out)
