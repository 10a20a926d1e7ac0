"""Files of a batch run through pyarrow.fs (local paths or URIs): the jobs table, documents, and output folders.

An output folder holds one part file per finished batch, written under a hidden temporary name and then renamed,
so a part file that is there is complete: the job ids in it are done, and a restarted run skips them.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

HIT_SCHEMA = pa.schema(
    [
        ("job_id", pa.string()),
        ("document_id", pa.string()),
        ("query", pa.string()),
        ("rank", pa.int32()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("text", pa.string()),
        ("score", pa.float64()),
        ("scores", pa.string()),
        ("reasons", pa.list_(pa.string())),
    ]
)
"""One row per hit; `scores` is the hit's per-view scores as a JSON object string, `rank` counts from 1."""
ERROR_SCHEMA = pa.schema([(name, pa.string()) for name in ("job_id", "document_id", "query", "error_type", "message")])
"""One row per failed job: the exception's class name and message."""


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and in-filesystem path of a local path or a URI (s3://, gs://, hdfs://, file://)."""
    if "://" in path:
        try:
            return pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise ValueError(f"cannot open {path!r}: {exc}") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def _file_info(path: str, what: str) -> tuple[Any, str, Any]:
    """(filesystem, inner path, info) of a regular file; FileNotFoundError/IsADirectoryError naming `what` else."""
    fs, inner = resolve(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    if info.type != pafs.FileType.File:
        raise IsADirectoryError(f"{what} {path!r} is not a file")
    return fs, inner, info


def open_input(path: str, what: str) -> Any:
    """A readable, seekable binary file (Parquet needs to seek); a missing file raises FileNotFoundError naming it."""
    fs, inner, _ = _file_info(path, what)
    return fs.open_input_file(inner)


def file_size(path: str) -> int:
    """Size of a document file in bytes (FileNotFoundError/IsADirectoryError when it is not a readable file)."""
    return int(_file_info(path, "document_path")[2].size or 0)


def read_text(path: str) -> str:
    """A document file as UTF-8 text."""
    with open_input(path, "document_path") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"document_path {path!r} is not UTF-8 text (byte {exc.start})") from None


class PartFolder:
    """An output folder of part files, Parquet or JSON lines (by the folder's suffix: *.jsonl/*.json = JSON lines)."""

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        self.format = "jsonl" if path.rstrip("/").lower().endswith((".jsonl", ".json", ".ndjson")) else "parquet"
        self.fs, self.root = resolve(path)
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            raise ValueError(
                f"{path} is a file; batch outputs are folders of part files (give a new or existing folder name)"
            )
        self.fs.create_dir(self.root, recursive=True)

    def _parts(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False))
        return sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and not i.base_name.startswith((".", "_"))
            and i.base_name.startswith("part-")
        )

    def remove_temporaries(self) -> int:
        """Delete the temporary files a crashed run left behind (never complete parts); returns how many."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False))
        stale = [i.path for i in infos if i.type == pafs.FileType.File and i.base_name.startswith(".tmp-")]
        for p in stale:
            self.fs.delete_file(p)
        return len(stale)

    def job_ids(self) -> set[str]:
        """Job ids present in the folder's complete part files."""
        ids: set[str] = set()
        for part in self._parts():
            ids.update(self._read(part, columns=["job_id"]).column("job_id").to_pylist())
        return ids

    def _read(self, part: str, columns: list[str] | None = None) -> pa.Table:
        if self.format == "parquet":
            with self.fs.open_input_file(part) as f:
                return pq.read_table(f, columns=columns, schema=self.schema)
        with self.fs.open_input_stream(part) as f:
            rows = [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line.strip()]
        table = pa.Table.from_pylist(rows, schema=self.schema)
        return table.select(columns) if columns else table

    def read(self) -> pa.Table:
        """Every row of every complete part file."""
        tables = [self._read(p) for p in self._parts()]
        return pa.concat_tables(tables) if tables else self.schema.empty_table()

    def write(self, table: pa.Table, name: str) -> str:
        """Write `table` as part `name` atomically (temporary file, then rename); returns the part's path."""
        final = f"{self.root}/part-{name}.{self.format}"
        tmp = f"{self.root}/.tmp-{uuid.uuid4().hex}"
        table = table.select(self.schema.names).cast(self.schema)
        with self.fs.open_output_stream(tmp) as out:
            if self.format == "parquet":
                pq.write_table(table, out)
            else:
                out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table.to_pylist()).encode("utf-8"))
        self.fs.move(tmp, final)
        return final


def read_output(path: str, errors: bool = False) -> pa.Table:
    """All rows of a batch run's hits folder (or, with `errors=True`, of its errors folder) as one pyarrow Table."""
    fs, root = resolve(path)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no batch output folder at {path}")
    return PartFolder(path, ERROR_SCHEMA if errors else HIT_SCHEMA).read()
