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
import shutil
import time
from pathlib import Path
from typing import Any

from gemma_cli.errors import UsageError

LORA_FILE = "adapter.lora.h5"
FULL_DIR = "model"


def ckpt_root(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest(output_dir: Path) -> Path | None:
    root = ckpt_root(output_dir)
    pointer = root / "latest"
    if pointer.exists():
        p = root / pointer.read_text().strip()
        if (p / "state.json").exists():
            return p
    done = sorted(p for p in root.glob("step_*") if (p / "state.json").exists())
    return done[-1] if done else None


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
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    bb = causal_lm.backbone
    if getattr(bb, "_lora_enabled_layers", None):
        bb.save_lora_weights(str(tmp / LORA_FILE))
    else:
        detached = causal_lm.preprocessor is None and preprocessor is not None
        if detached:
            causal_lm.preprocessor = preprocessor
        try:
            causal_lm.save_to_preset(str(tmp / FULL_DIR))
        finally:
            if detached:
                causal_lm.preprocessor = None
    paths = [v.path for v in optimizer.variables]
    np.savez(tmp / "optimizer.npz", **arrays, __paths__=np.array(paths))
    (tmp / "state.json").write_text(json.dumps({**state, "step": step, "time": time.time()}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    ptr_tmp = root / f".latest-{os.getpid()}"
    ptr_tmp.write_text(name + "\n")
    os.replace(ptr_tmp, root / "latest")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
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
