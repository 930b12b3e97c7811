"""Sources: records by index from local files (JSONL, TXT, CSV, Parquet) and tfds.

A source is a sized sequence of records: `src[i]` returns `(where, record)`, `where` being
`file:line` (or `file:row N`, `dataset[split] #N`) for error messages and `record` a dict.
Nothing is read into memory as a whole:

- JSONL and TXT are indexed once by a vectorised scan for newlines that keeps the byte offset
  and line number of every 32nd record, and of the first record in every 64 KiB (about one
  byte per record); a record is read with one `pread` of its block. They are
  `random_access`: the pipeline shuffles them globally by index.
- CSV (quoted fields may span lines), Parquet (column chunks) and tfds (TFRecord) are read in
  order, in blocks of `block` records cached per source; the pipeline shuffles them inside
  windows aligned with those blocks, so that every read stays sequential.

Only `TfdsSource` imports TensorFlow (through tensorflow_datasets); the local sources need
numpy, and pyarrow for Parquet.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import glob
import io
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gemma_cli.errors import UsageError

SPARSE = 32  # at most this many records per block of a line-indexed file
BLOCK_BYTES = 1 << 16  # and a block starts wherever a record starts in a new 64 KiB
CACHE_BYTES = 16 << 20  # blocks of a line-indexed file kept in memory (at least one)
EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".txt": "txt", ".parquet": "parquet"}


class Source:
    """A sized, indexable sequence of `(where, record)`; subclasses implement `_get`.

    Args:
        name: str. What to call the source in messages (a path, `dataset[split]`).
        random_access: bool. Whether any index is as cheap as the next one.
        size: int. Bytes on disk (0 when unknown); decides whether all records are checked
            before training starts.
    """

    random_access = True

    def __init__(self, name: str, size: int = 0):
        self.name, self.size = name, size

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[str, dict[str, Any]]:
        n = len(self)
        if not 0 <= i < n:
            raise IndexError(f"record {i} of {n}")
        return self._get(i)

    def _get(self, i: int) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError


# ------------------------------------------------------------------------ line index ---
def _scan_lines(path: Path, chunk_bytes: int = 16 << 20) -> tuple[Any, Any, Any, int]:
    """A sparse index of the non-blank lines of a file: (offsets, line numbers, record
    indices) of the records that start a block, and the record count.

    A block starts every SPARSE records and wherever a record starts in a new BLOCK_BYTES
    stretch of the file, so a block is at most SPARSE records and about BLOCK_BYTES plus one
    record. A line is blank when it holds no byte above the space (only whitespace or
    control bytes); blank lines are no records. Four vectorised passes per chunk: find the
    newlines, mark bytes above the space, OR them per line (`logical_or.reduceat`), pick the
    block starts.
    """
    import numpy as np

    offsets: list[Any] = []
    lines: list[Any] = []
    records: list[Any] = []
    n_records = 0
    pos = 0  # file offset of the chunk
    line_start = 0  # offset of the line being read
    line_no = 1
    carry = False  # the current line has a non-blank byte in an earlier chunk
    last_start = -1  # offset of the last record, for the byte boundaries

    def emit(starts: Any, numbers: Any) -> None:
        nonlocal n_records, last_start
        idx = n_records + np.arange(len(starts), dtype=np.int64)
        prev = np.empty_like(starts)
        prev[0] = last_start
        prev[1:] = starts[:-1]
        pick = (idx % SPARSE == 0) | ((starts // BLOCK_BYTES) != (prev // BLOCK_BYTES))
        offsets.append(starts[pick])
        lines.append(numbers[pick])
        records.append(idx[pick])
        n_records += len(starts)
        last_start = int(starts[-1])

    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            if not chunk:
                break
            arr = np.frombuffer(chunk, dtype=np.uint8)
            nl = np.flatnonzero(arr == 10)
            visible = arr > 32
            if len(nl):
                # segment k runs from the byte after newline k-1 (or the chunk start) to newline k
                seg = np.empty(len(nl), dtype=np.int64)
                seg[0] = 0
                seg[1:] = nl[:-1] + 1
                content = np.logical_or.reduceat(visible[: nl[-1] + 1], seg)  # the last one ends at nl[-1]
                content[0] |= carry
                starts = np.empty(len(nl), dtype=np.int64)
                starts[0] = line_start
                starts[1:] = pos + seg[1:]
                if content.any():
                    numbers = line_no + np.flatnonzero(content).astype(np.int64)
                    emit(starts[content], numbers)
                carry = bool(visible[nl[-1] + 1 :].any())
                line_start = pos + int(nl[-1]) + 1
                line_no += len(nl)
            else:
                carry = carry or bool(visible.any())
            pos += len(chunk)
    if carry:  # a last line without a newline
        emit(np.array([line_start], dtype=np.int64), np.array([line_no], dtype=np.int64))
    empty = np.zeros(0, dtype=np.int64)

    def cat(xs: list[Any]) -> Any:
        return np.concatenate(xs) if xs else empty

    return cat(offsets), cat(lines), cat(records), n_records


class _LineFile(Source):
    """Records one per non-blank line, read by index through a sparse line index."""

    def __init__(self, path: Path):
        super().__init__(str(path), path.stat().st_size)
        self.path = path
        try:
            self._offsets, self._lines, self._records, self._n = _scan_lines(path)
        except OSError as e:
            raise UsageError(f"{path}: cannot read: {e}") from None
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, list[tuple[int, bytes]]] = OrderedDict()
        self._cached_bytes = 0

    def __len__(self) -> int:
        return self._n

    def _block(self, b: int) -> list[tuple[int, bytes]]:
        with self._lock:
            hit = self._cache.get(b)
            if hit is not None:
                self._cache.move_to_end(b)
                return hit
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            fd = self._fd
        start = int(self._offsets[b])
        end = int(self._offsets[b + 1]) if b + 1 < len(self._offsets) else self.size
        data = os.pread(fd, end - start, start)
        out: list[tuple[int, bytes]] = []
        no = int(self._lines[b])
        for raw in data.split(b"\n"):
            if raw.strip():
                out.append((no, raw))
            no += 1
        with self._lock:
            self._cache[b] = out
            self._cached_bytes += len(data)
            while len(self._cache) > 1 and (len(self._cache) > 16 or self._cached_bytes > CACHE_BYTES):
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= sum(len(r) + 1 for _, r in old)
        return out

    def _line(self, i: int) -> tuple[str, str]:
        import numpy as np

        b = int(np.searchsorted(self._records, i, side="right")) - 1
        no, raw = self._block(b)[i - int(self._records[b])]
        where = f"{self.path}:{no}"
        try:
            return where, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass


class JsonlSource(_LineFile):
    """One JSON object per line."""

    def _get(self, i: int) -> tuple[str, dict[str, Any]]:
        where, line = self._line(i)
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{where}: not valid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(rec, dict):
            raise UsageError(f"{where}: expected a JSON object per line, got {type(rec).__name__}")
        return where, rec


class TxtSource(_LineFile):
    """One record `{"text": line}` per non-blank line."""

    def _get(self, i: int) -> tuple[str, dict[str, Any]]:
        where, line = self._line(i)
        return where, {"text": line.rstrip("\r")}


# --------------------------------------------------------------------- block sources ---
class BlockSource(Source):
    """A source read in order, in blocks of `block` records, with the last few cached.

    Subclasses give `_open(start)` (an iterator of `(where, record)` from record `start`).
    Reading block b after block a < b continues the open reader; an earlier block reopens.
    """

    random_access = False

    def __init__(self, name: str, n: int, block: int, size: int = 0):
        super().__init__(name, size)
        self._n, self.block = n, max(int(block), 1)
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, list[tuple[str, dict[str, Any]]]] = OrderedDict()
        self._reader: Iterator[tuple[str, dict[str, Any]]] | None = None
        self._pos = 0

    def __len__(self) -> int:
        return self._n

    def _open(self, start: int) -> Iterator[tuple[str, dict[str, Any]]]:
        raise NotImplementedError

    def _read(self, start: int, stop: int) -> list[tuple[str, dict[str, Any]]]:
        if self._reader is None or start < self._pos:
            self._reader, self._pos = self._open(start), start
        out: list[tuple[str, dict[str, Any]]] = []
        while self._pos < stop:
            try:
                item = next(self._reader)
            except StopIteration:
                raise UsageError(f"{self.name}: ended after {self._pos} records, {self._n} were announced") from None
            if self._pos >= start:
                out.append(item)
            self._pos += 1
        return out

    def _get(self, i: int) -> tuple[str, dict[str, Any]]:
        b = i // self.block
        with self._lock:
            hit = self._cache.get(b)
            if hit is None:
                hit = self._read(b * self.block, min((b + 1) * self.block, self._n))
                self._cache[b] = hit
                while len(self._cache) > 3:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(b)
        return hit[i - b * self.block]


def _csv_reader(path: Path) -> Any:
    f = open(path, encoding="utf-8", newline="")  # noqa: SIM115 — closed by the generator
    return f, csv.DictReader(f)


class CsvSource(BlockSource):
    """A CSV file with a header row; one record per row."""

    def __init__(self, path: Path, block: int):
        f, reader = _csv_reader(path)
        try:
            n = sum(1 for _ in reader)
        except (csv.Error, UnicodeDecodeError) as e:
            raise UsageError(f"{path}:{reader.line_num}: not readable as CSV: {e}") from None
        finally:
            f.close()
        super().__init__(str(path), n, block, path.stat().st_size)
        self.path = path

    def _open(self, start: int) -> Iterator[tuple[str, dict[str, Any]]]:
        f, reader = _csv_reader(self.path)
        with f:
            try:
                for row in reader:
                    yield f"{self.path}:{reader.line_num}", dict(row)
            except (csv.Error, UnicodeDecodeError) as e:
                raise UsageError(f"{self.path}:{reader.line_num}: not readable as CSV: {e}") from None


class ParquetSource(BlockSource):
    """A Parquet file; one record per row (read with pyarrow, batch by batch)."""

    def __init__(self, path: Path, block: int):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UsageError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        try:
            n = pq.ParquetFile(path).metadata.num_rows
        except Exception as e:  # ArrowInvalid and friends
            raise UsageError(f"{path}: not a readable Parquet file: {str(e).splitlines()[0]}") from None
        super().__init__(str(path), n, block, path.stat().st_size)
        self.path = path

    def _open(self, start: int) -> Iterator[tuple[str, dict[str, Any]]]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        row = 0
        groups: list[int] = []
        for g in range(pf.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            if row + rows > start:
                groups.append(g)
            else:
                row += rows
        for batch in pf.iter_batches(batch_size=max(self.block, 1024), row_groups=groups):
            for rec in batch.to_pylist():
                yield f"{self.path}:row {row + 1}", rec
                row += 1


class ConcatSource(Source):
    """Several sources one after the other (the files of `data.paths`, in order)."""

    def __init__(self, parts: list[Source]):
        super().__init__(", ".join(p.name for p in parts), sum(p.size for p in parts))
        self.parts = parts
        self.random_access = all(p.random_access for p in parts)
        self._starts = [0]
        for p in parts:
            self._starts.append(self._starts[-1] + len(p))

    def __len__(self) -> int:
        return self._starts[-1]

    def _get(self, i: int) -> tuple[str, dict[str, Any]]:
        k = bisect.bisect_right(self._starts, i) - 1
        return self.parts[k][i - self._starts[k]]


class Slice(Source):
    """Records [start, stop) of another source (take, eval_holdout)."""

    def __init__(self, parent: Source, start: int, stop: int):
        super().__init__(parent.name, parent.size)
        self.parent, self.start, self.stop = parent, start, max(start, min(stop, len(parent)))
        self.random_access = parent.random_access

    def __len__(self) -> int:
        return self.stop - self.start

    def _get(self, i: int) -> tuple[str, dict[str, Any]]:
        return self.parent[self.start + i]


# ----------------------------------------------------------------------------- local ---
def expand(pattern: str) -> tuple[list[str], list[Path]]:
    """(every path `pattern` matches, the files among them), sorted; `~` and `**` expanded.
    The one glob of data paths: the preflight and the pipeline read the same files."""
    hits = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
    return hits, [Path(h) for h in hits if not Path(h).is_dir()]


def file_kind(path: Path, fmt: str | None) -> str | None:
    """The reader of `path`: `fmt` when it names one, else its extension's (`EXTENSIONS`);
    None when neither tells. `chat` records come in JSONL or Parquet, told by the extension."""
    return EXTENSIONS.get(path.suffix.lower()) if fmt in (None, "chat") else fmt


def kinds_hint() -> str:
    """`jsonl, csv, txt, parquet`: the formats data.format takes, for error hints."""
    return ", ".join(dict.fromkeys(EXTENSIONS.values()))


def local_files(patterns: list[str], key: str) -> list[Path]:
    files: list[Path] = []
    for pat in patterns:
        hits, found = expand(pat)
        if not hits:
            raise UsageError(f"{key}: '{pat}' matches no file")
        files.extend(found)
    return files


def open_local(patterns: list[str], fmt: str | None, key: str, block: int) -> Source:
    """The files matching `patterns` as one source; the format from `fmt` or the extension.

    Args:
        patterns: list[str]. Paths or globs.
        fmt: str or None. `jsonl`, `csv`, `txt`, `parquet`, or `chat` (JSONL or Parquet records
            holding conversations; the file kind then comes from the extension).
        key: str. The config key to name in errors (data.paths, data.eval_paths).
        block: int. Block size of the sources read in order (the shuffle window).
    """
    parts: list[Source] = []
    for f in local_files(patterns, key):
        kind = file_kind(f, fmt)
        if kind is None:
            raise UsageError(
                f"{key}: {f}: cannot tell the format from the extension; set data.format ({kinds_hint()})"
            )
        if fmt == "chat" and kind not in ("jsonl", "parquet"):
            raise UsageError(f"{key}: {f}: chat records are read from JSONL or Parquet files, not {kind}")
        try:
            if kind == "jsonl":
                src: Source = JsonlSource(f)
            elif kind == "txt":
                src = TxtSource(f)
            elif kind == "csv":
                src = CsvSource(f, block)
            else:
                src = ParquetSource(f, block)
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{key}: {f}: cannot read: {e}") from None
        if len(src) == 0:
            raise UsageError(f"{key}: {f}: no records")
        parts.append(src)
    return parts[0] if len(parts) == 1 else ConcatSource(parts)


# ------------------------------------------------------------------------------ tfds ---
class TfdsSource(BlockSource):
    """A tfds split, read in order (TFRecord files are not indexable).

    An unprepared dataset goes through tfds' own `download_and_prepare` first; when that
    fails (no network here) the error names the dataset and `tfds build`.
    """

    def __init__(
        self, name: str, split: str, data_dir: str | None, take: int | None, block: int, fields: list[str], reporter: Any = None
    ):
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise UsageError(
                f"data.name: reading the tfds dataset {name} needs TensorFlow and tensorflow-datasets ({e})",
                hint="pip install tensorflow tensorflow-datasets, or export the data to JSONL and use data.paths",
            ) from None
        self._tfds = tfds
        where = data_dir or "~/tensorflow_datasets"
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as e:  # DatasetNotFoundError and friends
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UsageError(f"data.name: tfds has no dataset {name!r} ({msg[:200]})") from None
        if not builder.is_prepared():
            if reporter is not None:
                reporter.step(f"Preparing {name} with tfds (download and prepare into {where})")
            from gemma_cli.engine.core import remote

            # every URL tfds opens is probed first (a host that does not answer: one line in
            # seconds, exit 1, not tfds' ten retries), and its retry logging is silenced
            todo = f"run `tfds build {name}` where there is network and copy its data_dir here, or set data.data_dir"
            with remote.guard("tfds", f"data.name: {name} is not prepared in {where}, and its download", todo) as g:
                try:
                    # tfds prints to stdout (--json's) and draws bars: our line above says it all
                    tfds.disable_progress_bar()
                    with contextlib.redirect_stdout(io.StringIO()):
                        builder.download_and_prepare()
                except Exception as err:
                    g.raise_failure()
                    failed: Exception | None = err
                else:
                    failed = None
            if failed is not None:
                first = (str(failed).strip().splitlines() or [type(failed).__name__])[0][:200]
                raise UsageError(
                    f"data.name: {name} is not prepared in {where} and preparing it failed: {type(failed).__name__}: {first}",
                    hint=f"run `tfds build {name}` on a machine with network (and copy its data_dir here), or set data.data_dir",
                ) from None
        n: int | None = None
        try:
            n = int(builder.info.splits[split].num_examples)
        except (KeyError, ValueError, AssertionError):
            if builder.info.splits:
                have = ", ".join(sorted(builder.info.splits))
                raise UsageError(f"data.split: {name} has no split {split!r}; splits: {have}") from None
        self.builder, self.split = builder, split
        features = sorted(builder.info.features.keys()) if hasattr(builder.info.features, "keys") else []
        for f in fields:
            if f not in features:
                raise UsageError(f"{'data.template' if len(fields) > 1 else 'data.field'}: {name} has no feature {f!r}; features: {features}")
        if not n:  # no split metadata (tfds.testing.mock_data): count the records
            ds = builder.as_dataset(split=split, shuffle_files=False)
            n = sum(1 for _ in (ds.take(take) if take else ds))
        if take:
            n = min(n, take)
        self.fields = fields
        super().__init__(f"{name}[{split}]", n, block)

    def _open(self, start: int) -> Iterator[tuple[str, dict[str, Any]]]:
        ds = self.builder.as_dataset(split=self.split, shuffle_files=False)
        if start:
            ds = ds.skip(start)
        for i, ex in enumerate(self._tfds.as_numpy(ds), start):
            yield f"{self.name} #{i}", {k: _plain(ex[k]) for k in self.fields if k in ex}


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return v.item()
    return v


def describe(src: Source) -> str:
    """A short name for logs: the one path or `N files`."""
    if isinstance(src, ConcatSource):
        return f"{len(src.parts)} files"
    return src.name


__all__ = ["Source", "JsonlSource", "TxtSource", "CsvSource", "ParquetSource", "TfdsSource", "ConcatSource",
           "Slice", "open_local", "local_files", "describe"]
