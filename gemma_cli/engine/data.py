"""Data: tfds datasets and local files → tf.data of text → token batches for a causal LM.

Records come from `tfds.load(name, split, data_dir)` or local JSONL/CSV/TXT files, become one
string each (a field, or a prompt template over several fields), are shuffled with a seed and
tokenized with the model's own tokenizer: `<bos> text <eos>`, padded or cut to
`sequence_length + 1`, or with `packing: true` concatenated and cut into full sequences.
The pipeline is deterministic for a seed, so a resumed run sees exactly the batches an
uninterrupted run would.
"""

from __future__ import annotations

import csv
import glob
import json
import string
from pathlib import Path
from typing import Any

from gemma_cli.errors import UsageError


# ---------------------------------------------------------------------------- records ---
def _template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def _local_files(patterns: list[str], key: str) -> list[Path]:
    files: list[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(str(Path(pat).expanduser()), recursive=True))
        if not hits:
            raise UsageError(f"{key}: '{pat}' matches no file")
        files.extend(Path(h) for h in hits)
    return files


def _read_local(files: list[Path], fmt: str | None, key: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for f in files:
        kind = fmt or {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".txt": "txt"}.get(f.suffix.lower())
        if kind is None:
            raise UsageError(f"{key}: {f}: cannot tell the format from the extension; set data.format (jsonl, csv, txt)")
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{key}: {f}: cannot read: {e}") from None
        if kind == "jsonl":
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UsageError(f"{f}:{n}: not valid JSON: {e.msg}") from None
                if not isinstance(rec, dict):
                    raise UsageError(f"{f}:{n}: expected a JSON object per line")
                records.append(rec)
        elif kind == "csv":
            records.extend(csv.DictReader(text.splitlines()))
        else:
            records.extend({"text": line} for line in text.splitlines() if line.strip())
    return records


def _render(records: list[dict[str, Any]], cfg: Any, where: str) -> list[str]:
    if not records:
        raise UsageError(f"{where}: no records")
    if cfg.template:
        need = _template_fields(cfg.template)
        missing = [f for f in need if f not in records[0]]
        if missing:
            raise UsageError(
                f"data.template: field {missing[0]!r} is not in the records of {where}; "
                f"fields there: {sorted(records[0])}"
            )
        return [cfg.template.format(**{k: _str(v) for k, v in r.items()}) for r in records]
    if cfg.field not in records[0]:
        raise UsageError(f"data.field: {cfg.field!r} is not in the records of {where}; fields there: {sorted(records[0])}")
    return [_str(r[cfg.field]) for r in records]


def _str(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)


def _tfds_texts(cfg: Any, split: str, take: int | None) -> list[str]:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(cfg.name, data_dir=cfg.data_dir)
    except Exception as e:  # DatasetNotFoundError and friends
        msg = str(e).splitlines()[0]
        raise UsageError(f"data.name: tfds has no dataset {cfg.name!r} ({msg[:200]})") from None
    try:
        ds = tfds.load(cfg.name, split=split, data_dir=cfg.data_dir, shuffle_files=False)
    except AssertionError as e:
        if "download_and_prepare" in str(e) or "could not find data" in str(e).lower():
            raise UsageError(
                f"data.name: {cfg.name} is not prepared in {cfg.data_dir or '~/tensorflow_datasets'}",
                hint=f"run `tfds build {cfg.name}` on a machine with network, or set data.data_dir",
            ) from None
        raise
    except ValueError as e:
        if "split" in str(e).lower():
            have = ", ".join(sorted(builder.info.splits)) or "none"
            raise UsageError(f"data.split: {cfg.name} has no split {split!r}; splits: {have}") from None
        raise
    if take:
        ds = ds.take(take)
    features = list(getattr(ds, "element_spec", {}).keys()) if isinstance(ds.element_spec, dict) else []
    fields = _template_fields(cfg.template) if cfg.template else [cfg.field]
    for f in fields:
        if f not in features:
            key = "data.template" if cfg.template else "data.field"
            raise UsageError(f"{key}: {cfg.name} has no feature {f!r}; features: {features}")
    records = [{k: ex[k] for k in fields} for ex in tfds.as_numpy(ds)]
    return _render(records, cfg, f"{cfg.name}[{split}]")


def load_texts(cfg: Any) -> tuple[list[str], list[str]]:
    """(train texts, eval texts) for the data config."""
    if cfg.source == "tfds":
        train = _tfds_texts(cfg, cfg.split, cfg.take)
        evals = _tfds_texts(cfg, cfg.eval_split, cfg.eval_take) if cfg.eval_split else []
    else:
        recs = _read_local(_local_files(cfg.paths, "data.paths"), cfg.format, "data.paths")
        where = ", ".join(cfg.paths)
        texts = _render(recs, cfg, where)
        evals = []
        if cfg.eval_holdout:
            if cfg.eval_holdout >= len(texts):
                raise UsageError(f"data.eval_holdout: {cfg.eval_holdout} ≥ the {len(texts)} records of {where}")
            evals, texts = texts[: cfg.eval_holdout], texts[cfg.eval_holdout :]
        if cfg.eval_paths:
            erecs = _read_local(_local_files(cfg.eval_paths, "data.eval_paths"), cfg.format, "data.eval_paths")
            evals = _render(erecs, cfg, ", ".join(cfg.eval_paths))
        train = texts[: cfg.take] if cfg.take else texts
        if cfg.eval_take:
            evals = evals[: cfg.eval_take]
    if cfg.source == "tfds" and cfg.eval_holdout:
        if cfg.eval_holdout >= len(train):
            raise UsageError(f"data.eval_holdout: {cfg.eval_holdout} ≥ the {len(train)} records")
        evals, train = train[: cfg.eval_holdout], train[cfg.eval_holdout :]
    if not train:
        raise UsageError("data: the training data is empty")
    return train, evals


# ------------------------------------------------------------------------- tokenizing ---
def token_arrays(texts: list[str], tokenizer: Any, sequence_length: int, packing: bool) -> tuple[Any, Any]:
    """(ids [N, L+1], mask [N, L+1]) as numpy: `<bos> text <eos>` each, padded/cut or packed."""
    import numpy as np

    bos, eos, pad = tokenizer.start_token_id, tokenizer.end_token_id, tokenizer.pad_token_id
    width = sequence_length + 1
    ids_list: list[list[int]] = []
    chunk = 256
    for i in range(0, len(texts), chunk):
        batch = tokenizer(texts[i : i + chunk])
        batch = batch.to_list() if hasattr(batch, "to_list") else [list(map(int, t)) for t in batch]
        ids_list.extend([bos, *map(int, t), eos] for t in batch)
    if packing:
        stream = np.fromiter((t for seq in ids_list for t in seq), dtype=np.int32)
        n = len(stream) // width
        if n == 0:
            raise UsageError(
                f"data: {len(stream)} tokens in total, fewer than one packed sequence of {width}; "
                "lower data.sequence_length or add data"
            )
        ids = stream[: n * width].reshape(n, width)
        return ids, np.ones_like(ids, dtype=bool)
    ids = np.full((len(ids_list), width), pad, dtype=np.int32)
    mask = np.zeros((len(ids_list), width), dtype=bool)
    for r, seq in enumerate(ids_list):
        seq = seq[:width]
        ids[r, : len(seq)] = seq
        mask[r, : len(seq)] = True
    return ids, mask


def to_dataset(ids: Any, mask: Any, batch_size: int, seed: int, shuffle: bool, repeat: int, skip_batches: int = 0) -> Any:
    """tf.data of ({token_ids, padding_mask}, labels, sample_weight), deterministic for a seed.

    The order of all `repeat` epochs is drawn up front with numpy from `seed` (one permutation
    per epoch) and `skip_batches` cuts it: every iterator over the dataset, on every host, in
    a fresh or a resumed run, yields the same batches. (tf.data's `shuffle` draws a new order
    for each iterator it serves, so a resumed run's batches depended on how many iterators
    keras had opened before.)
    """
    import numpy as np
    import tensorflow as tf

    n = len(ids)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n) if shuffle else np.arange(n) for _ in range(repeat)])
    order = order[skip_batches * batch_size :].astype(np.int64)
    ids_t, mask_t = tf.constant(ids), tf.constant(mask)

    def split(idx: Any) -> Any:
        i, m = tf.gather(ids_t, idx), tf.gather(mask_t, idx)
        x = {"token_ids": i[:, :-1], "padding_mask": m[:, :-1]}
        return x, i[:, 1:], tf.cast(m[:, 1:], "float32")

    ds = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=True)
    ds = ds.map(split, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
