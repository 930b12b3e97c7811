"""Checkpoints in a run's output_dir: written atomically, a `latest` pointer, keep the last K.

    <output_dir>/checkpoints/step_00000020/
        adapter.lora.h5     LoRA weights (save_lora_weights), or
        model/              a full keras-hub preset (full fine-tuning)
        optimizer.npz       every optimizer variable, by index and path
        state.json          step, data position, loss, config digest
    <output_dir>/checkpoints/latest     the name of the newest complete checkpoint
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from gemma_cli.engine.files import atomic_dir
from gemma_cli.errors import UsageError

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
    """The newest complete checkpoint: the `latest` pointer, else the highest step on disk."""
    root = ckpt_root(output_dir)
    pointer = root / "latest"
    if pointer.is_file():
        p = root / pointer.read_text().strip()
        if _STEP_DIR.fullmatch(p.name) and (p / "state.json").is_file():
            return p
    done = complete(output_dir)
    return done[-1] if done else None


def prune(output_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (never the `latest` one)."""
    done = complete(output_dir)
    newest = latest(output_dir)
    gone = [p for p in done[: max(len(done) - keep, 0)] if p != newest]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def read_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / "state.json").read_text())


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
        np.savez(tmp / "optimizer.npz", **arrays, __paths__=np.array(paths))
        # state.json last: a directory with it is complete
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "time": time.time()}, indent=2))

    atomic_dir(final, fill)
    ptr_tmp = root / f".latest-{os.getpid()}"
    ptr_tmp.write_text(name + "\n")
    os.replace(ptr_tmp, root / "latest")
    prune(output_dir, keep)
    return final


def restore(ckpt: Path, causal_lm: Any, optimizer: Any | None) -> dict[str, Any]:
    """Load weights (and optimizer state when given) from a checkpoint; return its state."""
    import numpy as np

    bb = causal_lm.backbone
    if (ckpt / LORA_FILE).exists():
        if not getattr(bb, "_lora_enabled_layers", None):
            raise UsageError(f"{ckpt} holds a LoRA adapter but the model has no LoRA enabled (set model.lora.rank)")
        bb.load_lora_weights(str(ckpt / LORA_FILE))
    elif (ckpt / FULL_DIR).exists():
        causal_lm.backbone.load_weights(str(next((ckpt / FULL_DIR).glob("model*.weights.h5"))))
    else:
        raise UsageError(f"{ckpt}: not a checkpoint (no {LORA_FILE} or {FULL_DIR}/)")
    if optimizer is not None and (ckpt / "optimizer.npz").exists():
        data = np.load(ckpt / "optimizer.npz")
        paths = list(data["__paths__"])
        if len(paths) != len(optimizer.variables):
            raise UsageError(
                f"{ckpt}: optimizer state has {len(paths)} variables, this run's optimizer {len(optimizer.variables)} "
                "(the config changed since the checkpoint; start a new output_dir or drop --resume)"
            )
        for i, v in enumerate(optimizer.variables):
            v.assign(data[f"{i:05d}"])
    return read_state(ckpt)
