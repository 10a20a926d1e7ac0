"""What every benchmark shares: the provenance of a run (date, commit, machine, versions) and the README sections
that each benchmark owns between its own markers, so one command can rewrite its tables in place."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

SECTION_TITLES = {
    "quality": "Retrieval quality",
    "perf": "Speed and memory",
    "cascade": "Documents past the window",
    "plots": "Plots",
}


def markers(section: str) -> tuple[str, str]:
    """The HTML comments that delimit a benchmark's README section."""
    return f"<!-- {section}:start -->", f"<!-- {section}:end -->"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def machine_description() -> str:
    """CPU model and core count, plus the GPU name when CUDA is available."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    parts = [f"{cpu} ({os.cpu_count()} cores)"]
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    except ImportError:
        pass
    return ", ".join(parts)


def run_metadata() -> dict[str, Any]:
    """Date, git commit (short, ``+dirty`` when the tree has changes), machine and library versions of this run."""
    commit = _git("rev-parse", "--short", "HEAD") or "uncommitted"
    if _git("status", "--porcelain"):
        commit += "+dirty"
    versions: dict[str, str] = {"python": platform.python_version()}
    for module in ("torch", "transformers", "sentence_transformers", "bm25s", "spacy"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            continue
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "machine": machine_description(),
        "versions": versions,
    }


def provenance_line(meta: dict[str, Any], device: str | None = None) -> str:
    """One italic line naming when, at which commit and on what the figures were taken."""
    on = meta["machine"] + (f", device `{device}`" if device else "")
    return f"_Run {meta['date']}, commit `{meta['commit']}`, on {on}._"


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this run: `python -m MODULE` and its arguments (sys.argv's when argv is None)."""
    return " ".join(["python -m", module, *(argv if argv is not None else sys.argv[1:])])


def run_section(meta: dict[str, Any], command: str, table: str, device: str | None = None) -> str:
    """A benchmark's README block: provenance line, the command that reproduces it, and its table."""
    return f"{provenance_line(meta, device)}\n\nReproduce: `{command}`\n\n{table}"


def publish(
    section: str, meta: dict[str, Any], command: str, table: str, device: str | None, readme: str | Path | None
) -> str:
    """A benchmark's block (`run_section`), printed and, given a markdown file, written between its `section`
    markers there; returns the block."""
    block = run_section(meta, command, table, device)
    if readme:
        update_readme_section(readme, block, section)
    sys.stdout.write(block + "\n")
    return block


def update_readme_section(path: str | Path, body: str, section: str = "quality") -> None:
    """Replace the text between `section`'s markers in `path`; append the section (with a heading) if missing."""
    path = Path(path)
    start, end = markers(section)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        new = pattern.sub(lambda _: block, text, count=1)
    else:
        title = SECTION_TITLES.get(section, section.capitalize())
        new = text.rstrip("\n") + ("\n\n" if text.strip() else "") + f"## {title}\n\n" + block + "\n"
    path.write_text(new, encoding="utf-8")
