"""Hugging Face datasets as sources: `hf://ORG/NAME[:SUBSET][@SPLIT]`, dataset directories.

Three places a dataset can be, tried in this order:

- a directory (`data.paths: [dir]`): the output of `Dataset.save_to_disk` /
  `DatasetDict.save_to_disk` (read with `datasets.load_from_disk`: Arrow files, memory-mapped,
  so any record is as cheap as the next and the pipeline shuffles globally), or a folder of
  data files laid out as on the Hub (`data/train-00000-of-00001.parquet`, `main/test-*.parquet`,
  `validation.jsonl`): the files of the split, read by the local sources (Parquet in blocks,
  JSONL by index), nothing copied.
- `hf://ORG/NAME` already in the Hugging Face cache (`huggingface_hub`'s snapshot of the dataset
  repository, which `datasets` itself fills when it downloads Parquet/JSONL datasets): the
  snapshot is read as a directory, with no network at all.
- otherwise `datasets.load_dataset(ORG/NAME, SUBSET, split=SPLIT, revision=...)`: it downloads
  into the same caches and gives an Arrow dataset (memory-mapped). The CLI's preflight asks the
  Hub first with a bounded probe (`gemma_cli/preflight.py`), so an unreachable Hub is one line in
  seconds, not half a minute of retries.

A record is a dict; `where` reads `hf://org/name[split] #N` or the file's `path:line`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from gemma_cli.engine.data.sources import EXTENSIONS, ConcatSource, Source, open_local
from gemma_cli.errors import UsageError

SPLIT_NAMES = ("train", "validation", "test", "valid", "dev", "eval")


def parse_name(name: str) -> tuple[str, str | None, str | None]:
    """`hf://org/name:subset@split` → (org/name, subset or None, split or None)."""
    spec = name[len("hf://") :] if name.startswith("hf://") else name
    m = re.fullmatch(r"([\w.-]+(?:/[\w.-]+)?)(?::([\w.-]+))?(?:@([\w.\[\]:%+-]+))?", spec)
    if not m:
        raise UsageError(f"data.name: {name!r} is not hf://ORG/NAME[:SUBSET][@SPLIT]")
    return m.group(1), m.group(2), m.group(3)


class ArrowSource(Source):
    """An Arrow-backed `datasets.Dataset` (memory-mapped): random access by index.

    Args:
        ds: datasets.Dataset. One split.
        name: str. What to call it in messages (`hf://org/name[train]`).
    """

    random_access = True

    def __init__(self, ds: Any, name: str):
        size = 0
        for f in getattr(ds, "cache_files", None) or []:
            try:
                size += os.path.getsize(f["filename"])
            except (OSError, KeyError):
                pass
        super().__init__(name, size)
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def _get(self, i: int) -> tuple[str, dict[str, Any]]:
        return f"{self.name} #{i + 1}", dict(self.ds[i])


# ------------------------------------------------------------------------ directories ---
def is_saved(d: Path) -> bool:
    """Whether `d` is `save_to_disk` output (a Dataset or a DatasetDict)."""
    return (d / "dataset_dict.json").is_file() or ((d / "state.json").is_file() and (d / "dataset_info.json").is_file())


def is_dataset_dir(d: Path) -> bool:
    """`save_to_disk` output, or a folder holding data files (at any depth)."""
    if not d.is_dir():
        return False
    return is_saved(d) or any(_data_files(d))


def _data_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(d).parts))


def _split_of(rel: Path) -> str | None:
    """The split a data file belongs to, from the Hub's naming: a folder named like a split,
    a sharded file `NAME-00000-of-00002.parquet` (split NAME), or a file named like a split
    (`test.jsonl`, `validation_part1.parquet`)."""
    for part in rel.parts[:-1]:
        if part in SPLIT_NAMES:
            return part
    stem = rel.name.split(".")[0]
    if "-of-" in stem:
        return stem.split("-")[0]
    head = re.split(r"[-_]", stem)[0]
    return stem if stem in SPLIT_NAMES else (head if head in SPLIT_NAMES else None)


def _subsets(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "data"
                  and any(_data_files(p)))


def open_dir(d: Path, split: str, subset: str | None, key: str, block: int, label: str | None = None) -> Source:
    """The `split` of the dataset in directory `d` (see the module docstring)."""
    label = label or str(d)
    if is_saved(d):
        return _load_from_disk(d, split, key, label)
    root = d
    if subset:
        if not (d / subset).is_dir():
            have = _subsets(d)
            raise UsageError(f"{key}: {label} has no subset {subset!r}" + (f"; subsets: {', '.join(have)}" if have else
                                                                          "; it has no subset folders (drop data.subset)"))
        root = d / subset
    files = _data_files(root)
    if not files:
        raise UsageError(f"{key}: {label}: no data files ({', '.join(sorted(set(EXTENSIONS)))}) in {root}")
    by_split: dict[str, list[Path]] = {}
    for f in files:
        s = _split_of(f.relative_to(root))
        if s is not None:
            by_split.setdefault(s, []).append(f)
    if not by_split:  # files named in no split's way: all of them are the train split
        by_split = {"train": files}
    subs = _subsets(d)
    if not subset and len(subs) > 1 and all(f.relative_to(d).parts[0] in subs for f in files):
        raise UsageError(f"{key}: {label} has several subsets; choose one with data.subset: {', '.join(subs)}")
    if "[" in split:
        raise UsageError(f"{key}: {label}: split slicing ({split}) is for tfds; use data.take to read the first N records")
    base = split.split("[")[0]
    if base not in by_split:
        raise UsageError(f"{key}: {label} has no split {split!r}; splits: {', '.join(sorted(by_split))}")
    chosen = by_split[base]
    kinds = {EXTENSIONS[f.suffix.lower()] for f in chosen}
    if len(kinds) > 1:
        raise UsageError(f"{key}: {label}[{base}] mixes {', '.join(sorted(kinds))} files; keep one format per split")
    return open_local([str(f) for f in chosen], None, key, block)


def _load_from_disk(d: Path, split: str, key: str, label: str) -> Source:
    datasets = _datasets(key)
    try:
        obj = datasets.load_from_disk(str(d))
    except Exception as e:  # FileNotFoundError, a broken Arrow file, a newer format
        raise UsageError(f"{key}: {label}: not readable with datasets.load_from_disk: {_first(e)}") from None
    if isinstance(obj, datasets.DatasetDict):
        base = split.split("[")[0]
        if base not in obj:
            raise UsageError(f"{key}: {label} has no split {split!r}; splits: {', '.join(sorted(obj))}")
        obj = obj[base]
    if isinstance(obj, datasets.IterableDataset):  # not what save_to_disk writes, but be plain
        raise UsageError(f"{key}: {label}: an iterable dataset cannot be indexed; save it with save_to_disk")
    return ArrowSource(obj, f"{label}[{split}]")


def open_paths(patterns: list[str], fmt: str | None, key: str, block: int, split: str = "train",
               subset: str | None = None) -> Source:
    """`data.paths`: files and globs (`sources.open_local`) and dataset directories, in order."""
    parts: list[Source] = []
    files: list[str] = []
    for pat in patterns:
        d = Path(pat).expanduser()
        if d.is_dir():
            if files:
                parts.append(open_local(files, fmt, key, block))
                files = []
            if not is_dataset_dir(d):
                raise UsageError(f"{key}: {pat} is a directory with no data files and no save_to_disk dataset; "
                                 f"give files or a glob such as {pat}/*.jsonl")
            parts.append(open_dir(d, split, subset, key, block))
        else:
            files.append(pat)
    if files:
        parts.append(open_local(files, fmt, key, block))
    return parts[0] if len(parts) == 1 else ConcatSource(parts)


# ------------------------------------------------------------------------------ hub ---
def cached_snapshot(repo: str, revision: str | None) -> Path | None:
    """The local snapshot of the dataset repository in the Hugging Face cache, or None."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        path = snapshot_download(repo, repo_type="dataset", revision=revision, local_files_only=True,
                                 cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    except Exception:  # LocalEntryNotFoundError and friends: not cached
        return None
    p = Path(path)
    return p if p.is_dir() and any(_data_files(p)) else None


def open_hf(name: str, split: str, subset: str | None, revision: str | None, key: str, block: int) -> Source:
    """`hf://org/name` (see the module docstring): the cache first, then `datasets`."""
    repo, sub_in_name, split_in_name = parse_name(name)
    subset = subset or sub_in_name
    split = split_in_name or split
    label = f"hf://{repo}" + (f":{subset}" if subset else "")
    snap = cached_snapshot(repo, revision)
    if snap is not None:
        return open_dir(snap, split, subset, key, block, label=label)
    datasets = _datasets(key)
    try:
        ds = datasets.load_dataset(repo, subset, split=split, revision=revision)
    except ValueError as e:  # unknown split / config: datasets lists what exists
        raise UsageError(f"{key}: {label}: {_first(e)}") from None
    except Exception as e:  # ConnectionError, DatasetNotFoundError, FileNotFoundError ...
        raise UsageError(
            f"{key}: {label} is not in the local Hugging Face cache and could not be loaded: {_first(e)}",
            hint="check the name and the network (or HF_ENDPOINT); offline, copy the dataset here and use data.paths: [its directory]",
        ) from None
    if isinstance(ds, datasets.IterableDataset):
        raise UsageError(f"{key}: {label}: datasets gave an iterable dataset; gemma reads map-style datasets")
    return ArrowSource(ds, f"{label}[{split}]")


def _datasets(key: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise UsageError(f"{key}: reading Hugging Face datasets needs the `datasets` package",
                         hint="pip install 'gemma-cli[datasets]'") from None
    return datasets


def _first(e: BaseException) -> str:
    return ((str(e).strip().splitlines() or [type(e).__name__])[0])[:300]


__all__ = ["ArrowSource", "cached_snapshot", "is_dataset_dir", "open_dir", "open_hf", "open_paths", "parse_name"]
