"""Checkpoints in a run's output_dir: written atomically, a `latest` pointer, keep the last K.

    <output_dir>/checkpoints/step_00000020/
        adapter.lora.h5     LoRA weights (save_lora_weights), or
        model/              a full keras-hub preset (full fine-tuning)
        optimizer.npz       every optimizer variable, by index and path
        state.json          step, data position, loss, config digest
    <output_dir>/checkpoints/latest     the name of the newest complete checkpoint

A checkpoint directory appears by a rename once all its files are on disk, and disappears by
a rename before it is deleted, so a run killed at any moment (`kill -9` during a step, a write,
a pruning) leaves only complete checkpoints under their `step_N` names; what the killed writer
left under temporary names is removed by the next `save`. A checkpoint damaged afterwards (a
disk error, a partial copy) is reported by `restore` naming the file, with the previous
checkpoint to fall back to.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from gemma_cli.engine.core.files import atomic_dir, atomic_write, remove_dir, remove_leftovers
from gemma_cli.errors import UsageError, translate

LORA_FILE = "adapter.lora.h5"
FULL_DIR = "model"


def ckpt_root(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


_STEP_DIR = re.compile(r"step_\d{8}")


def complete(output_dir: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first (temporary directories never count)."""
    root = ckpt_root(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _STEP_DIR.fullmatch(p.name) and (p / "state.json").is_file())


def latest(output_dir: Path) -> Path | None:
    """The checkpoint to continue from: the one the `latest` pointer names, unless a newer
    complete checkpoint was written after the pointer (a run killed between writing a
    checkpoint and moving the pointer); without a usable pointer, the highest step on disk.

    A pointer set back by hand (newer than the checkpoints after it) is followed.
    """
    done = complete(output_dir)
    if not done:
        return None
    pointer = ckpt_root(output_dir) / "latest"
    try:
        named = pointer.parent / pointer.read_text().strip()
        written = pointer.stat().st_mtime_ns
    except OSError:
        return done[-1]
    if named not in done:
        return done[-1]
    after = [p for p in done if p.name > named.name and (p / "state.json").stat().st_mtime_ns > written]
    return after[-1] if after else named


def previous(ckpt: Path) -> Path | None:
    """The complete checkpoint before `ckpt` in its run, if any."""
    earlier = [p for p in complete(Path(ckpt).parent.parent) if p.name < Path(ckpt).name]
    return earlier[-1] if earlier else None


def fallback_hint(ckpt: Path) -> str:
    """What to do about a damaged checkpoint: fall back to the previous one, or start over."""
    prev = previous(ckpt)
    if prev is not None:
        return f"the previous checkpoint is {prev.name}: remove {ckpt} (rm -r) to continue from it"
    return f"there is no earlier checkpoint: remove {ckpt} (rm -r) and start without --resume"


def prune(output_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (never the `latest` one)."""
    done = complete(output_dir)
    current = latest(output_dir)
    gone = [p for p in done[: max(len(done) - keep, 0)] if p != current]
    for p in gone:
        remove_dir(p)
    return gone


def read_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / "state.json"
    with _damaged(ckpt, path):
        state = json.loads(path.read_text())
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise UsageError(f"{path}: no integer 'step' in it", hint=fallback_hint(ckpt))
    return state


def _to_numpy(value: Any) -> Any:
    import numpy as np

    try:
        return np.asarray(value)
    except Exception:  # a sharded array spanning several hosts
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def save(
    output_dir: Path,
    step: int,
    causal_lm: Any,
    optimizer: Any,
    state: dict[str, Any],
    keep: int,
    write: bool = True,
    preprocessor: Any = None,
) -> Path:
    """Write checkpoint `step` atomically (tmp dir → rename), move `latest`, prune to `keep`."""
    import numpy as np

    root = ckpt_root(output_dir)
    name = f"step_{step:08d}"
    final = root / name
    # every process takes part in gathering; only the writer touches the disk
    arrays = {f"{i:05d}": _to_numpy(v.value) for i, v in enumerate(optimizer.variables)}
    if not write:
        return final
    remove_leftovers(root)  # what a killed run left half-written
    bb = causal_lm.backbone
    paths = [v.path for v in optimizer.variables]

    preprocessor = preprocessor or causal_lm.preprocessor

    def fill(tmp: Path) -> None:
        if getattr(bb, "_lora_enabled_layers", None):
            bb.save_lora_weights(str(tmp / LORA_FILE))
        else:  # a full preset: the backbone and the tokenizer assets
            bb.save_to_preset(str(tmp / FULL_DIR))
            if preprocessor is not None:
                preprocessor.save_to_preset(str(tmp / FULL_DIR))
            else:  # loaded without TensorFlow: the tokenizer alone
                from gemma_cli.engine.model.load import tokenizer_of

                tokenizer_of(causal_lm).save_to_preset(str(tmp / FULL_DIR))
        np.savez(tmp / "optimizer.npz", **arrays, __paths__=np.array(paths))
        # state.json last: a directory with it is complete
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "time": time.time()}, indent=2))

    atomic_dir(final, fill)
    atomic_write(root / "latest", name + "\n")
    prune(output_dir, keep)
    return final


def restore(ckpt: Path, causal_lm: Any, optimizer: Any | None) -> dict[str, Any]:
    """Load weights (and optimizer state when given) from a checkpoint; return its state.

    A file that cannot be read raises `UsageError` naming it, with the previous checkpoint
    to fall back to.
    """
    import numpy as np

    state = read_state(ckpt)
    bb = causal_lm.backbone
    if (ckpt / LORA_FILE).exists():
        if not getattr(bb, "_lora_enabled_layers", None):
            raise UsageError(f"{ckpt} holds a LoRA adapter but the model has no LoRA enabled (set model.lora.rank)")
        with _damaged(ckpt, ckpt / LORA_FILE):
            bb.load_lora_weights(str(ckpt / LORA_FILE))
    elif (ckpt / FULL_DIR).exists():
        weights = next((ckpt / FULL_DIR).glob("model*.weights.h5"), ckpt / FULL_DIR / "model.weights.h5")
        with _damaged(ckpt, weights):
            causal_lm.backbone.load_weights(str(weights))
    else:
        raise UsageError(f"{ckpt}: not a checkpoint (no {LORA_FILE} or {FULL_DIR}/)", hint=fallback_hint(ckpt))
    npz = ckpt / "optimizer.npz"
    if optimizer is not None and npz.exists():
        with _damaged(ckpt, npz):
            data = np.load(npz)
            paths = list(data["__paths__"])
            if len(paths) != len(optimizer.variables):
                raise UsageError(
                    f"{ckpt}: optimizer state has {len(paths)} variables, this run's optimizer {len(optimizer.variables)} "
                    "(the config changed since the checkpoint; start a new output_dir or drop --resume)"
                )
            for i, v in enumerate(optimizer.variables):
                v.assign(data[f"{i:05d}"])
    return state


class _damaged:
    """Reading `path` of checkpoint `ckpt`: a failure names the file and the way back."""

    def __init__(self, ckpt: Path, path: Path):
        self.ckpt, self.path = ckpt, path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, e: BaseException | None, tb: Any) -> bool:
        if e is None or isinstance(e, UsageError) or not isinstance(e, Exception):
            return False
        known = translate(e, path=self.path)
        what = known.message if known is not None else f"{self.path}: cannot be loaded ({type(e).__name__}: {str(e).strip()[:200]})"
        raise UsageError(what, hint=fallback_hint(self.ckpt)) from None
