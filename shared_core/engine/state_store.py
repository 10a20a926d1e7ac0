"""Kept cascade passes: in memory up to a byte budget (LRU), spilled to a cache folder beyond it.

A spilled pass is one safetensors file named after its key, written atomically (temporary file, then rename) with
a checksum of its tensors in the header, so a truncated or corrupt file is detected on load, deleted and read
again, never used. The key holds everything the pass depends on (model, dtype, prompt template, text, cascade
settings, file format), so a changed document or model never reuses one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from shared_core.engine.cascade_state import CascadeState, ChunkRecord, ChunkTail
from shared_core.engine.token_kv import TokenKV

logger = logging.getLogger(__name__)

FORMAT = "attnret-cascade-state/3"
"""/2: the queries' instruction (lead) keys and values per chunk are kept too."""


def state_key(*parts: object) -> str:
    """A stable file-safe key for the parts a kept pass depends on."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode("utf-8")).hexdigest()[:40]


class StateStore:
    """Cascade states by key; `get` looks in memory, then on disk; `put` keeps in memory and spills the overflow."""

    def __init__(self, memory_bytes: int, folder: Path | None, disk_bytes: int | None = None) -> None:
        self.memory_bytes = memory_bytes
        self.folder = folder
        self.disk_bytes = disk_bytes
        self._items: OrderedDict[str, tuple[str, CascadeState]] = OrderedDict()  # key -> (family, state)
        self._lock = threading.Lock()

    def get(self, key: str) -> CascadeState | None:
        """The state kept under `key` (memory first, then a verified file), or None."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][1]
        return self._load(key)

    def put(self, key: str, family: str, state: CascadeState) -> None:
        """Keep `state` (of a document of `family`: model, template and cascade settings) for later queries."""
        spill: list[tuple[str, CascadeState]] = []
        with self._lock:
            if state.nbytes > self.memory_bytes:
                spill.append((key, state))
            else:
                self._items[key] = (family, state)
                self._items.move_to_end(key)
                while sum(s.nbytes for _, s in self._items.values()) > self.memory_bytes:
                    old_key, (_, old) = self._items.popitem(last=False)
                    spill.append((old_key, old))
        for k, s in spill:
            self._save(k, s)

    def in_memory(self, family: str) -> list[CascadeState]:
        """States of `family` held in memory, newest first (candidates for a shared prefix)."""
        with self._lock:
            return [s for f, s in reversed(self._items.values()) if f == family]

    def clear(self) -> None:
        """Forget the states held in memory (spilled files stay: they are keyed and verified)."""
        with self._lock:
            self._items.clear()

    @property
    def memory_used(self) -> int:
        """Bytes held in memory."""
        with self._lock:
            return sum(s.nbytes for _, s in self._items.values())

    # -- disk --------------------------------------------------------------------------------------------------
    def path(self, key: str) -> Path | None:
        """The file a spilled state of `key` lives in (None without a folder)."""
        return None if self.folder is None else self.folder / f"{key}.safetensors"

    def _save(self, key: str, state: CascadeState) -> None:
        from safetensors.torch import save_file

        path = self.path(key)
        if path is None:
            return
        tensors = _tensors(state)
        meta = {"format": FORMAT, "key": key, "chunks": json.dumps(_chunk_meta(state)), "checksum": _checksum(tensors)}
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
            tmp = None
            _touch(path)
            logger.info("kept cascade pass spilled to %s (%.1f MB)", path, state.nbytes / 1e6)
            self._trim(keep=path)
        except OSError as exc:  # a full or read-only cache folder: the pass is simply not kept
            logger.warning(
                "could not spill a cascade pass to %s (%s); later queries will read the document again", path, exc
            )
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def _trim(self, keep: Path) -> None:
        """Delete the least recently used spilled files beyond `disk_bytes` (never the one just written)."""
        if self.disk_bytes is None or self.folder is None:
            return
        files = sorted(self.folder.glob("*.safetensors"), key=lambda f: f.stat().st_mtime, reverse=True)
        total = 0
        for f in files:
            total += f.stat().st_size
            if total > self.disk_bytes and f != keep:
                f.unlink(missing_ok=True)
                logger.info("spilled cascade pass %s removed (reuse_disk_limit)", f.name)

    def _load(self, key: str) -> CascadeState | None:
        from safetensors import safe_open

        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            if meta.get("format") != FORMAT or meta.get("key") != key:
                raise ValueError(f"format {meta.get('format')!r} / key {meta.get('key')!r} do not match")
            if meta.get("checksum") != _checksum(tensors):
                raise ValueError("checksum mismatch")
            state = _state(tensors, json.loads(meta["chunks"]))
            _touch(path)  # recently used: the last to be trimmed
        except Exception as exc:  # any unreadable file is rebuilt, never used
            logger.warning(
                "kept cascade pass %s is unreadable (%s): deleting it; the document is read again", path, exc
            )
            path.unlink(missing_ok=True)
            return None
        with self._lock:
            if state.nbytes <= self.memory_bytes:
                self._items[key] = ("disk", state)
        return state


def _touch(path: Path) -> None:
    """Mark a file as just used, at full clock precision (file systems round their own timestamps)."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def _tensors(state: CascadeState) -> dict[str, torch.Tensor]:
    keys, values = state.kv.dense()
    out = {"ids": state.ids, "keys": keys, "values": values, "lead_ids": state.lead_ids}
    if state.lead_keys is not None and state.lead_values is not None:
        out["lead_keys"], out["lead_values"] = state.lead_keys, state.lead_values
    if state.tail is not None:
        out["tail_mass"] = state.tail.mass
        out["tail_meta"] = torch.tensor([state.tail.cut, state.tail.rows], dtype=torch.long)
    for i, chunk in enumerate(state.chunks):
        out[f"kept.{i}"] = chunk.kept.contiguous()
        out[f"ema.{i}"] = chunk.ema.contiguous()
    return {k: v.contiguous() for k, v in out.items()}


def _chunk_meta(state: CascadeState) -> list[list[object]]:
    return [
        [c.start, c.end, c.structure[0], list(c.structure[1]), list(c.structure[2]), c.structure[3]]
        for c in state.chunks
    ]


def _state(tensors: dict[str, torch.Tensor], chunks: list[list[Any]]) -> CascadeState:
    records = []
    for i, (start, end, sinks, fill, arrivals, seen) in enumerate(chunks):
        structure = (int(sinks), tuple(int(x) for x in fill), tuple(int(x) for x in arrivals), int(seen))
        records.append(ChunkRecord(int(start), int(end), tensors[f"kept.{i}"], tensors[f"ema.{i}"], structure))
    tail = None
    if "tail_mass" in tensors:
        cut, rows = (int(x) for x in tensors["tail_meta"])
        tail = ChunkTail(cut, tensors["tail_mass"], rows)
    return CascadeState(
        ids=tensors["ids"],
        kv=TokenKV.whole(tensors["keys"], tensors["values"]),
        chunks=tuple(records),
        lead_ids=tensors["lead_ids"],
        lead_keys=tensors.get("lead_keys"),
        lead_values=tensors.get("lead_values"),
        tail=tail,
    )


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
