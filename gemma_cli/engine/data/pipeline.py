"""Pipeline: records streamed, tokenized in worker threads, packed and batched for the mesh.

Built on Grain (`grain.MapDataset`): a lazy dataset of record *indices* whose `map` reads,
renders and tokenizes one record, iterated by `to_iter_dataset` with `data.workers` threads
(SentencePiece releases the GIL, so they run in parallel) and a bounded prefetch buffer.
Nothing holds the data set: memory is the file index (half a byte per record), the prefetch
buffers and one block per in-order source. Grain over tf.data: it needs no TensorFlow (the
local-file path runs where TensorFlow is absent), it is what JAX's own stacks use (MaxText),
Keras 3 `fit` accepts it, and a position in it is just an index.

The order. Epoch e of N records is a permutation of them drawn from `train.seed` and e:
global (Grain's index_shuffle, a keyed bijection of [0, N): O(1) memory) for JSONL and TXT,
inside windows of `data.shuffle_buffer` records for sources read in order (CSV, Parquet,
tfds). Epochs follow each other without end; the trainer decides how many steps to take.

Streams. The records of that endless order are dealt round-robin to D streams, D being the
size of the mesh's batch axis: record g goes to stream g mod D. Stream d fills rows
d·R .. (d+1)·R-1 of every global batch (R = batch_size / D), packing or padding its own
records. A process reads, tokenizes and packs only the streams whose rows its devices hold,
so on a pod every process reads 1/P of the records, and the global batches are the same on
1 process or many. Unpacked, global batch s holds exactly records s·B .. (s+1)·B-1 of the
order, as the earlier in-memory pipeline did.

Resume. A stream's position is the index of its next record. After every batch the
positions are kept (for a window of recent steps); `DataBundle.state(step)` gathers them
from all processes for the checkpoint, and `build(..., resume=state)` starts each stream
there: nothing consumed is read or tokenized again, except the one document that opened the
row after the checkpoint.

Checks. Everything that can be checked before training is: the files are indexed, the first
record decides the record kind, every record of data up to 16 MiB is parsed and rendered,
the eval set is read whole, and the first batch is built. Larger data is checked as it
streams: a bad record stops the run with exit 2 naming file:line before the step that would
use it; no checkpoint is written for that step.

Preference pairs (`train.method: dpo`). A preference record becomes two rows, its chosen then
its rejected answer, side by side in one stream: every stream's rows of a batch are
[c0, r0, c1, r1, ...] (rows per stream must be even), so both halves of a pair sit on the same
device, and on one process or many. They are never packed (the config refuses it): each row
is one whole sequence, whose summed log-probability the objective compares with its twin's.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemma_cli.engine.data import pack, sources
from gemma_cli.engine.data.render import PREFERENCE_FORMS, Renderer
from gemma_cli.engine.data.tokenize import Doc, Encoder
from gemma_cli.errors import UsageError

# data up to this size is parsed and rendered before training: ~0.75 s here (50 µs a record);
# larger data is checked as it streams (`gemma config validate` checks every record)
CHECK_ALL_BYTES = 16 << 20
ESTIMATE_RECORDS = 512  # records tokenized to estimate packed rows per epoch
COUNTERS = ("records", "sequences", "tokens_total", "tokens_trained", "truncated", "tokens_cut", "turns_cut")
_U32 = 2**32


# ----------------------------------------------------------------------------- order ---
class Order:
    """Which source record is the i-th of epoch e: a seeded permutation per epoch.

    Args:
        n: int. Records in the source.
        seed: int. train.seed.
        shuffle: bool. False keeps the source order.
        window: int or None. Shuffle only inside consecutive windows of this many records
            (sources read in order); None shuffles globally.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, window: int | None = None):
        self.n, self.seed, self.shuffle, self.window = n, int(seed), shuffle, window

    def _key(self, epoch: int, block: int) -> int:
        return (self.seed * 0x9E3779B1 + epoch * 0x85EBCA6B + block * 0xC2B2AE35) % _U32

    def __call__(self, g: int) -> int:
        epoch, i = divmod(g, self.n)
        if not self.shuffle or self.n == 1:
            return i
        from grain.experimental import index_shuffle

        if self.window is None or self.window >= self.n:
            return int(index_shuffle(i, max_index=self.n - 1, seed=self._key(epoch, 0), rounds=4))
        b, j = divmod(i, self.window)
        size = min(self.window, self.n - b * self.window)
        if size == 1:
            return i
        return b * self.window + int(index_shuffle(j, max_index=size - 1, seed=self._key(epoch, b + 1), rounds=4))


# ------------------------------------------------------------------------- processes ---
def streams_for(distribution: Any, batch_axis: str) -> tuple[int, int, int]:
    """(first, stop, D): the streams [first, stop) whose rows this process's devices hold,
    of D = the batch axis size of the distribution's mesh."""
    import jax
    import numpy as np

    mesh = distribution.device_mesh.backend_mesh  # a jax.sharding.Mesh
    axis = list(mesh.axis_names).index(batch_axis)
    devices = np.asarray(mesh.devices)
    total = int(devices.shape[axis])
    me = jax.process_index()
    mine = sorted({idx[axis] for idx in np.ndindex(devices.shape) if devices[idx].process_index == me})
    if not mine:
        return 0, total, total
    if mine != list(range(mine[0], mine[-1] + 1)):
        raise UsageError(f"mesh: this process holds batch rows {mine} of the '{batch_axis}' axis, not one contiguous block")
    return mine[0], mine[-1] + 1, total


def _gather(arr: Any) -> Any:
    """[P, ...]: the int64 `arr` from every process (a collective when there are several).

    Sent as pairs of int32 (jax keeps 32-bit integers unless x64 is on), so token counts past
    2**31 survive.
    """
    import numpy as np

    arr = np.ascontiguousarray(arr, dtype=np.int64)
    try:
        import jax

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            halves = arr.view(np.int32)  # [..., 2n]
            got = np.ascontiguousarray(np.asarray(multihost_utils.process_allgather(halves)), dtype=np.int32)
            return got.view(np.int64)
    except ImportError:
        pass
    return arr[None]


# ----------------------------------------------------------------------------- bundle ---
@dataclass
class DataInfo:
    """What the log and the summary say about the data."""

    kind: str
    source: str
    records: int
    eval_records: int
    eval_sequences: int
    steps_per_epoch: int
    exact: bool
    streams: int
    local_streams: tuple[int, int]
    workers: int
    checked: str
    random_access: bool

    def line(self, cfg: Any) -> str:
        approx = "" if self.exact else "≈"
        packed = " (packed)" if cfg.packing else ""
        shuffle = ("global" if self.random_access else f"window {cfg.shuffle_buffer}") if cfg.shuffle else "off"
        return (
            f"  {self.records:,} {self.kind} records from {self.source}; sequences of {cfg.sequence_length} tokens{packed}; "
            f"{approx}{self.steps_per_epoch} steps/epoch; shuffle {shuffle}; {self.eval_sequences} eval sequences; "
            f"{f'{self.workers} tokenizer threads' if self.workers else 'tokenized in the training thread'}; {self.checked}"
        )


@dataclass
class DataBundle:
    """What `build` hands the trainer.

    Args:
        train: grain.IterDataset of `(x, y, sample_weight)` numpy batches for keras `fit`:
            the rows of this process, `x = {"token_ids", "padding_mask"}`. Endless; every
            iterator starts at the run's data position.
        eval: grain.MapDataset of eval batches (re-iterable), or None.
        info: DataInfo. Sizes and settings for the log.
        peek: the first training batch as row arrays (token_ids, labels, weights,
            segment_ids, positions), for the dry run.
    """

    train: Any
    eval: Any
    info: DataInfo
    peek: dict[str, Any]
    _pipe: Any = field(repr=False, default=None)
    _eval_src: Any = field(repr=False, default=None)
    _eval_rows: list[Any] = field(repr=False, default_factory=list)  # global row indices of each eval batch

    @property
    def steps_per_epoch(self) -> int:
        return self.info.steps_per_epoch

    def state(self, step: int) -> dict[str, Any]:
        """The data position after `step` for a checkpoint (a collective on several processes)."""
        return self._pipe.state(step)

    def counters(self, step: int) -> dict[str, int]:
        """Records, sequences, tokens_total, tokens_trained, truncation through `step`, all
        processes together (a collective on several processes)."""
        return self._pipe.counters(step)

    # ------------------------------------------------------- precomputed reference (dpo) ---
    def records(self, split: str) -> int:
        """Records of the `train` or `eval` source."""
        src = self._pipe.source if split == "train" else self._eval_src
        return 0 if src is None else len(src)

    def pair_batches(self, split: str, rows: int) -> Iterator[dict[str, Any]]:
        """Every preference record of the `train` or `eval` source in source order as stacked
        row arrays, `rows` rows a batch (record i: rows 2i, 2i+1; the last batch padded by
        repeating its first row): what the reference model scores before training."""
        import numpy as np

        p = self._pipe
        src = p.source if split == "train" else self._eval_src
        if src is None:
            return

        def docs() -> Iterator[Doc]:
            for i in range(len(src)):
                yield _encode(p.encoder, p.renderer(*src[i]), p.cfg.sequence_length + 1, i)

        batch: list[pack.Row] = []
        for r in pack.rows(_flat(docs()), p.cfg.sequence_length, p.encoder.pad_id, False):
            batch.append(r)
            if len(batch) == rows:
                yield pack.stack(batch)
                batch = []
        if batch:
            n = len(batch)
            out = pack.stack(batch + [batch[0]] * (rows - n))
            out["real_rows"] = np.int64(n)
            yield out

    def attach_reference(self, train: Any, evals: Any) -> None:
        """Feed each row's reference log-prob as `x["ref_logps"]`: `train` and `evals` are
        [records, 2] tables (chosen, rejected) in source order."""
        import numpy as np

        self._pipe.ref_table = np.asarray(train, dtype=np.float32)
        if self.eval is not None and evals is not None:
            import grain

            table = np.asarray(evals, dtype=np.float32)
            batches = []
            for k in range(len(self.eval)):
                x, y, w = self.eval[k]
                g = self._eval_rows[k]
                batches.append(({**x, "ref_logps": table[g // 2, g % 2]}, y, w))
            self.eval = grain.MapDataset.source(batches)


class _Train:
    """The training stream of one process: its streams, their positions and counters."""

    def __init__(
        self,
        source: sources.Source,
        order: Order,
        renderer: Renderer,
        encoder: Encoder,
        cfg: Any,
        *,
        streams: tuple[int, int, int],
        batch_size: int,
        start_step: int,
        positions: dict[int, int],
        base: dict[str, int],
        workers: int,
        segment_ids: bool,
        keep: int,
        position_ids: bool = False,
        image: pack.ImageSlots | None = None,
    ):
        self.source, self.order, self.renderer, self.encoder, self.cfg = source, order, renderer, encoder, cfg
        self.first, self.stop, self.total = streams
        self.rows_per_stream = batch_size // self.total
        self.start_step, self.positions, self.base = start_step, positions, base
        self.workers, self.segment_ids, self.position_ids = workers, segment_ids, position_ids
        self._snaps: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self._keep = keep
        self.image = image
        self.ref_table: Any = None  # [records, 2] reference log-probs (dpo, precomputed)

    # -------------------------------------------------------------------------- docs ---
    def load(self, stream: int, k: int) -> Doc | tuple[Doc, Doc]:
        """Stream `stream`'s k-th document: read, render, tokenize, cut to the row (a
        preference record: its chosen and rejected documents)."""
        g = k * self.total + stream
        where, rec = self.source[self.order(g)]
        return _encode(self.encoder, self.renderer(where, rec), self.cfg.sequence_length + 1, k)

    def docs(self, stream: int, start: int) -> Iterator[Doc]:
        import grain

        ds = grain.MapDataset.range(start, 2**62).map(lambda k: self.load(stream, k))
        n_local = self.stop - self.first
        threads = max(1, -(-self.workers // n_local)) if self.workers else 0
        opts = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(64, 4 * self.rows_per_stream) if threads else 0)
        return _flat(iter(ds.to_iter_dataset(opts)))

    # ----------------------------------------------------------------------- batches ---
    def _batches(self) -> Iterator[tuple[Any, Any]]:
        import numpy as np

        local = list(range(self.first, self.stop))
        row_iters = [
            pack.rows(self.docs(d, self.positions.get(d, 0)), self.cfg.sequence_length, self.encoder.pad_id, self.cfg.packing,
                      self.image)
            for d in local
        ]
        counts = np.zeros((len(local), len(COUNTERS)), dtype=np.int64)
        pos = np.array([self.positions.get(d, 0) for d in local], dtype=np.int64)
        step = self.start_step
        while True:
            taken: list[pack.Row] = []
            source: list[int] = []
            pairs = self.renderer.kind == "preference"
            for j, it in enumerate(row_iters):
                for i in range(self.rows_per_stream):
                    r = next(it)
                    taken.append(r)
                    if pairs:  # the source record of the row (its position in the order)
                        source.append(self.order((r.next_index - 1) * self.total + local[j]))
                    a = r.arrays
                    counts[j] += (
                        (i % 2) if pairs else r.docs,  # a pair's two rows are one record
                        1,
                        int((a["segment_ids"] > 0).sum()),
                        int(a["weights"].sum()),
                        r.cut_docs,
                        r.cut_tokens,
                        r.cut_turns,
                    )
                    pos[j] = r.next_index
            step += 1
            self._snaps[step] = (pos.copy(), counts.copy())
            self._snaps.move_to_end(step)
            while len(self._snaps) > self._keep:
                self._snaps.popitem(last=False)
            batch = pack.stack(taken)
            if pairs:
                batch["source"] = np.asarray(source, dtype=np.int64)
            yield step, batch

    def first_batch(self) -> dict[str, Any]:
        """The first batch's row arrays (reads and tokenizes it: the up-front check)."""
        return next(self._batches())[1]

    def dataset(self) -> Any:
        """A `grain.IterDataset` of `(x, y, sample_weight)` for keras `fit`.

        Every iterator over it starts at the same data position and yields the same batches:
        keras reads a couple of batches through a first iterator to learn their shapes, then
        trains through a second one.
        """
        import grain

        train = self

        class _Iterator(grain.DatasetIterator):
            def __init__(self) -> None:
                super().__init__()
                self._gen = train._batches()
                self._step = train.start_step

            def __next__(self) -> Any:
                import numpy as np

                self._step, arrays = next(self._gen)
                x, y, w = pack.model_batch(arrays, train.segment_ids, train.position_ids)
                if train.ref_table is not None:  # row 2i chosen, 2i+1 rejected
                    x["ref_logps"] = train.ref_table[arrays["source"], np.arange(len(arrays["source"])) % 2]
                return x, y, w

            def get_state(self) -> dict[str, Any]:
                return {"step": self._step}

            def set_state(self, state: dict[str, Any]) -> None:
                raise NotImplementedError("resume through data.build(resume=...)")

        class _Dataset(grain.IterDataset):
            def __iter__(self) -> Any:
                return _Iterator()

        return _Dataset()

    # ------------------------------------------------------------------------- state ---
    def _snapshot(self, step: int) -> tuple[Any, Any]:
        import numpy as np

        snap = self._snaps.get(step)
        if snap is None:
            if step == self.start_step:
                local = range(self.first, self.stop)
                return (np.array([self.positions.get(d, 0) for d in local], dtype=np.int64),
                        np.zeros((len(local), len(COUNTERS)), dtype=np.int64))
            raise RuntimeError(f"data position of step {step} is no longer known (kept: {list(self._snaps)[:1]}..)")
        return snap

    def _gathered(self, step: int) -> tuple[dict[int, int], dict[str, int]]:
        import numpy as np

        pos, counts = self._snapshot(step)
        ids = np.arange(self.first, self.stop, dtype=np.int64)
        rows = np.concatenate([ids[:, None], pos[:, None], counts], axis=1)
        allrows = _gather(rows).reshape(-1, rows.shape[1])
        positions: dict[int, int] = {}
        totals = np.zeros(len(COUNTERS), dtype=np.int64)
        for r in allrows:
            d = int(r[0])
            if d in positions:
                continue  # a stream fed by several processes (model replicas across hosts)
            positions[d] = int(r[1])
            totals += r[2:]
        merged = {k: int(v) + int(self.base.get(k, 0)) for k, v in zip(COUNTERS, totals, strict=True)}
        return positions, merged

    def state(self, step: int) -> dict[str, Any]:
        positions, counts = self._gathered(step)
        return {
            "format": 1,
            "step": step,
            "streams": self.total,
            "rows_per_stream": self.rows_per_stream,
            "positions": [positions.get(d, 0) for d in range(self.total)],
            "seed": self.order.seed,
            "packing": bool(self.cfg.packing),
            "counters": counts,
        }

    def counters(self, step: int) -> dict[str, int]:
        return self._gathered(step)[1]


# ------------------------------------------------------------------------------ build ---
def _sources(cfg: Any, block: int, reporter: Any = None) -> tuple[sources.Source, sources.Source | None]:
    """(train source, eval source or None) with take / eval_holdout / eval_take applied."""
    fields = cfg.template_fields or [cfg.field]
    if cfg.source == "tfds":
        train: sources.Source = sources.TfdsSource(cfg.name, cfg.split, cfg.data_dir, cfg.take, block, fields, reporter)
        ev = sources.TfdsSource(cfg.name, cfg.eval_split, cfg.data_dir, cfg.eval_take, block, fields) if cfg.eval_split else None
        if cfg.eval_holdout:
            if cfg.eval_holdout >= len(train):
                raise UsageError(f"data.eval_holdout: {cfg.eval_holdout} ≥ the {len(train)} records")
            ev, train = sources.Slice(train, 0, cfg.eval_holdout), sources.Slice(train, cfg.eval_holdout, len(train))
    elif cfg.source == "hf":
        from gemma_cli.engine.data import hf_datasets

        train = hf_datasets.open_hf(cfg.name, cfg.split, cfg.subset, cfg.revision, "data.name", block)
        ev = (hf_datasets.open_hf(cfg.name, cfg.eval_split, cfg.subset, cfg.revision, "data.eval_split", block)
              if cfg.eval_split else None)
        if cfg.eval_holdout:
            if cfg.eval_holdout >= len(train):
                raise UsageError(f"data.eval_holdout: {cfg.eval_holdout} ≥ the {len(train)} records of {train.name}")
            ev, train = sources.Slice(train, 0, cfg.eval_holdout), sources.Slice(train, cfg.eval_holdout, len(train))
        if cfg.take:
            train = sources.Slice(train, 0, cfg.take)
    else:
        from gemma_cli.engine.data import hf_datasets

        train = hf_datasets.open_paths(cfg.paths, cfg.format, "data.paths", block, cfg.split, cfg.subset)
        ev = None
        if cfg.eval_holdout:
            if cfg.eval_holdout >= len(train):
                raise UsageError(f"data.eval_holdout: {cfg.eval_holdout} ≥ the {len(train)} records of {', '.join(cfg.paths)}")
            ev, train = sources.Slice(train, 0, cfg.eval_holdout), sources.Slice(train, cfg.eval_holdout, len(train))
        if cfg.eval_split:
            if not all(hf_datasets.is_dataset_dir(Path(p).expanduser()) for p in cfg.paths):
                raise UsageError("data.eval_split: the split is read from dataset directories; data.paths names files "
                                 "(use data.eval_paths or data.eval_holdout)")
            ev = hf_datasets.open_paths(cfg.paths, cfg.format, "data.eval_split", block, cfg.eval_split, cfg.subset)
        if cfg.eval_paths:
            ev = hf_datasets.open_paths(cfg.eval_paths, cfg.format, "data.eval_paths", block, cfg.eval_split or "train", cfg.subset)
        if cfg.take:
            train = sources.Slice(train, 0, cfg.take)
    if ev is not None and cfg.eval_take:
        ev = sources.Slice(ev, 0, cfg.eval_take)
    if len(train) == 0:
        raise UsageError("data: the training data is empty")
    return train, ev


def _check_all(source: sources.Source, renderer: Renderer, limit: int | None = None) -> None:
    for i in range(len(source) if limit is None else min(limit, len(source))):
        where, rec = source[i]
        renderer(where, rec)


def check_records(cfg: Any, max_bytes: int | None = CHECK_ALL_BYTES, method: str | None = None, vision: Any = None,
                  model_name: str | None = None) -> int:
    """Parse and render the records of local data files as training will; no tokenizer, no model.

    The preflight's record check (`gemma finetune`, `gemma config validate`): a record lacking
    the field or template fields, a chat record with an unknown role, empty content, no model
    turn, or a format unlike the first record's, exits 2 naming `file:line`. Files up to
    `max_bytes` in all are checked whole (as `build` does); of larger ones, the records in their
    first `max_bytes` (the rest is checked as it streams). `max_bytes=None` checks everything.

    Args:
        cfg: DataConfig. Local `paths` / `eval_paths`; tfds data is not read here.
        max_bytes: int or None. How much of each split to check before training.
        method: str or None. `train.method`: `dpo` needs preference records (chosen/rejected)
            and only `dpo` takes them. None skips that check.
        vision: images.VisionSpec or None. The model's image input: images in records are
            checked (exist, decode, at most max images, no packing); None refuses them.
        model_name: str or None. The preset, for the message when a text-only model meets an image.

    Returns:
        int. The records checked.
    """
    if cfg.source == "tfds":
        return 0
    train, ev = _sources(cfg, cfg.shuffle_buffer)
    renderer = Renderer(cfg, vision=vision, model_name=model_name)
    _method_fits(renderer.decide(*train[0]), method, train[0][0])
    checked = 0
    for src in (train, ev):
        if src is None or len(src) == 0:
            continue
        limit = None
        if max_bytes is not None and src.size > max_bytes:
            limit = max(1, len(src) * max_bytes // src.size)
        _check_all(src, renderer, limit)
        checked += len(src) if limit is None else limit
    return checked


def _estimate_steps(train: _Train, n: int, batch_size: int) -> tuple[int, bool]:
    """Steps per epoch: exact unpacked (one row per record); packed, from packing the first
    records of the order as the streams would (the same on every process)."""
    if not train.cfg.packing:
        return n * (2 if train.renderer.kind == "preference" else 1) // batch_size, True
    s = min(n, ESTIMATE_RECORDS)
    per_stream: dict[int, list[Doc]] = collections.defaultdict(list)
    for g in range(s):
        d = g % train.total
        per_stream[d].append(train.load(d, g // train.total))
    rows = 0
    for docs in per_stream.values():
        rows += sum(1 for _ in pack.rows(docs, train.cfg.sequence_length, train.encoder.pad_id, True))
    return int(rows * n / s // batch_size), False


def _eval_batches(
    ev: sources.Source, renderer: Renderer, encoder: Encoder, cfg: Any, streams: tuple[int, int, int], batch_size: int,
    segment_ids: bool, position_ids: bool = False, image: pack.ImageSlots | None = None,
) -> tuple[Any, int, list[Any]]:
    """(grain.MapDataset of this process's eval batches, eval sequences, each batch's global row
    indices): read whole, in order."""
    import numpy as np

    first, stop, total = streams

    def docs() -> Iterator[Doc]:
        for i in range(len(ev)):
            where, rec = ev[i]
            yield _encode(encoder, renderer(where, rec), cfg.sequence_length + 1, i)

    rows = list(pack.rows(_flat(docs()), cfg.sequence_length, encoder.pad_id, cfg.packing, image))
    n = len(rows)
    unit = 2 * total if renderer.kind == "preference" else total  # pairs stay whole on one stream
    eb = min(batch_size, n // unit * unit)
    if eb < 1:
        raise UsageError(f"data: {n} eval sequences, fewer than the batch axis of the mesh ({total})")
    per = eb // total
    batches, where = [], []
    for b in range(n // eb):
        chunk = rows[b * eb : (b + 1) * eb][first * per : stop * per]
        batches.append(pack.model_batch(pack.stack(chunk), segment_ids, position_ids))
        where.append(np.arange(b * eb + first * per, b * eb + stop * per))
    import grain

    return grain.MapDataset.source(batches), n, where


def default_workers() -> int:
    """`data.workers` when the config leaves it out: the CPU count (at most 8) where an
    accelerator computes the step, so the host's cores are free to read ahead; 0 (records
    tokenized in the training thread, between dispatches) on the CPU backend, where XLA's
    step already uses every core and reader threads only compete with it (measured on the
    bench model, 2 cores: step time 0.084 s with 0 threads, 0.094 s with 2)."""
    import jax

    if jax.default_backend() == "cpu":
        return 0
    return min(8, os.cpu_count() or 1)


def build(
    cfg: Any,
    tokenizer: Any,
    *,
    seed: int,
    batch_size: int | None = None,
    start_step: int = 0,
    streams: tuple[int, int, int] = (0, 1, 1),
    resume: dict[str, Any] | int | None = None,
    segment_ids: bool = False,
    position_ids: bool = False,
    keep_positions: int = 1024,
    chat: Any = None,
    reporter: Any = None,
    method: str | None = None,
    vision: Any = None,
    model_name: str | None = None,
) -> DataBundle:
    """The data of a run: the training stream, the eval batches, sizes and the resume hooks.

    Args:
        cfg: DataConfig. The `data` section.
        tokenizer: keras_hub tokenizer of the model.
        seed: int. train.seed: the record order and nothing else.
        batch_size: int. Global batch size (defaults to data.batch_size); a multiple of D.
        start_step: int. Steps already trained (resume); the stream starts after them.
        streams: (first, stop, D). The streams this process feeds (`streams_for`).
        resume: dict or int. The checkpoint's `data_position` (`DataBundle.state`), or an
            older checkpoint's step; None starts at the beginning.
        segment_ids: bool. Feed segment ids as the padding mask (segment-aware attention
            enabled on the model); False feeds 0/1.
        position_ids: bool. Also feed `position_ids` (each token's position in its document),
            for backbones that take them as an input (Gemma 4).
        keep_positions: int. Steps whose data position stays known for `state`; at least the
            batches keras reads ahead of the step it reports.
        chat: families.ChatFormat, or a function returning it when chat data shows up: the
            model family's turn format (Gemma's when None).
        reporter: engine.core.report.Reporter or None. Told of long steps (a tfds download).
        method: str or None. `train.method` (`dpo` needs preference records; None: no check).
        vision: images.VisionSpec or None. A vision model's image input: every row carries
            `images`, `vision_indices`, `vision_mask` (pack.py); None: a text-only model.
        model_name: str or None. The preset, named when a text-only model meets an image.

    Example:
        >>> bundle = build(cfg.data, causal_lm.preprocessor.tokenizer, seed=0)
        >>> x, y, sw = next(iter(bundle.train))
    """
    b = batch_size or cfg.batch_size
    first, stop, total = streams
    if b % total:
        raise UsageError(f"data.batch_size: {b} is not divisible by the batch axis of the mesh ({total})")
    workers = cfg.workers if cfg.workers is not None else default_workers()
    train_src, eval_src = _sources(cfg, cfg.shuffle_buffer, reporter)
    renderer = Renderer(cfg, chat=chat, vision=vision, model_name=model_name)
    where0, rec0 = train_src[0]
    kind = renderer.decide(where0, rec0)
    _method_fits(kind, method, where0)
    if kind == "preference" and (b // total) % 2:
        raise UsageError(f"data.batch_size: {b} sequences over {total} streams is {b // total} a stream; preference "
                         f"pairs need an even number (chosen and rejected side by side): use a multiple of {2 * total}")
    encoder = Encoder(tokenizer, vision)
    image = None
    if vision is not None:
        slots = 0 if cfg.packing else vision.max_images  # the renderer refuses images with packing
        soft = encoder.special(vision.markers[1]) if vision.layout != "prefix" else -1
        image = pack.ImageSlots(vision.image_size, vision.tokens_per_image, slots, soft, vision.layout, vision.patch_size)
    if kind in ("chat", "preference"):  # fail now if the vocabulary lacks the turn markers
        encoder.special(renderer.chat_format.start_turn)
        encoder.special(renderer.chat_format.end_turn)
    checked = "the first batch checked; the rest is checked as it streams"
    if 0 < train_src.size <= CHECK_ALL_BYTES:
        _check_all(train_src, renderer)
        checked = "every record checked"
    order = Order(len(train_src), seed, cfg.shuffle, None if train_src.random_access else cfg.shuffle_buffer)

    rows_per_stream = b // total
    per_record = 2 if kind == "preference" else 1
    positions, base = _resume_positions(resume, cfg, total, rows_per_stream, start_step, seed, per_record)
    train = _Train(
        train_src, order, renderer, encoder, cfg,
        streams=(first, stop, total), batch_size=b, start_step=start_step, positions=positions, base=base,
        workers=workers, segment_ids=segment_ids, keep=keep_positions, position_ids=position_ids, image=image,
    )
    steps, exact = _estimate_steps(train, len(train_src), b)
    if steps == 0:
        what = "sequences" if not cfg.packing else "packed sequences (estimated from the first records)"
        raise UsageError(f"data.batch_size: {b} is more than the training {what} of one epoch; lower it or add data")
    ev, n_eval, eval_rows = (None, 0, [])
    if eval_src is not None:
        ev, n_eval, eval_rows = _eval_batches(eval_src, renderer, encoder, cfg, (first, stop, total), b, segment_ids, position_ids,
                                              image)
    peek = train.first_batch()
    info = DataInfo(
        kind=kind, source=sources.describe(train_src), records=len(train_src),
        eval_records=len(eval_src) if eval_src is not None else 0, eval_sequences=n_eval,
        steps_per_epoch=steps, exact=exact, streams=total, local_streams=(first, stop), workers=workers,
        checked=checked, random_access=train_src.random_access,
    )
    return DataBundle(train=train.dataset(), eval=ev, info=info, peek=peek, _pipe=train, _eval_src=eval_src,
                      _eval_rows=eval_rows)


def _resume_positions(
    resume: dict[str, Any] | int | None, cfg: Any, total: int, rows_per_stream: int, start_step: int, seed: int,
    rows_per_record: int = 1,
) -> tuple[dict[int, int], dict[str, int]]:
    """Per-stream start positions and the counters so far, from a checkpoint's data state."""
    if not start_step:
        return {}, {}
    base = dict(resume.get("counters") or {}) if isinstance(resume, dict) else {}
    if isinstance(resume, dict) and resume.get("format") == 1:
        same = resume.get("streams") == total and resume.get("rows_per_stream") == rows_per_stream
        if cfg.packing and not same:
            raise UsageError(
                f"--resume: the checkpoint's packed data ran on {resume.get('streams')} streams of "
                f"{resume.get('rows_per_stream')} rows; this run has {total} of {rows_per_stream} (mesh batch axis or "
                "batch_size changed); packed positions cannot move between them",
                hint="resume on the same mesh.shape and data.batch_size",
            )
        if same:
            return {d: int(p) for d, p in enumerate(resume["positions"])}, base
    elif cfg.packing:
        raise UsageError("--resume: the checkpoint has no packed data position (written by an older gemma); start a new run")
    # unpacked: one row per record, so the position is arithmetic
    return {d: start_step * rows_per_stream // rows_per_record for d in range(total)}, base


def _encode(encoder: Encoder, rendered: Any, max_tokens: int, index: int) -> Doc | tuple[Doc, Doc]:
    """A rendered record → its document (a preference record: chosen and rejected), indexed."""
    if rendered.meta.get("chosen") is not None:
        pair = encoder.pair(rendered, max_tokens)
        for d in pair:
            d.index = index
        return pair
    doc = encoder.doc(rendered, max_tokens)
    doc.index = index
    return doc


def _flat(docs: Iterator[Any]) -> Iterator[Doc]:
    """Documents in order, a preference pair's two in a row (chosen, rejected)."""
    for d in docs:
        if isinstance(d, tuple):
            yield from d
        else:
            yield d


def _method_fits(kind: str, method: str | None, where: str) -> None:
    """Preference records and train.method: dpo go together."""
    if method is None:
        return
    if method == "dpo" and kind != "preference":
        raise UsageError(f"{where}: train.method: dpo trains on preference pairs, but this is a {kind} record; expected "
                         "one of " + "; ".join(PREFERENCE_FORMS.values()))
    if method != "dpo" and kind == "preference":
        raise UsageError(f"{where}: a preference record (chosen/rejected) needs train.method: dpo (this config trains "
                         f"with train.method: {method})")
