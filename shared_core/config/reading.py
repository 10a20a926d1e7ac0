"""Reading configs and head-set files: a capped safe YAML loader, `ConfigError`, and pydantic errors as one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

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
