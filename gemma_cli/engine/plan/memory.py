"""Per-device memory of a training step: the estimate `gemma inspect` prints, and a measurement.

`estimate(...)` is arithmetic on the plan (no weights, no devices): weights, gradients and
optimizer state are the planned shards; activations and logits follow the formulas in
`activation_bytes` and `logits_bytes`. `measure_train_step(causal_lm, ...)` compiles the real
keras train step for one batch shape on the live mesh and reads XLA's own buffer assignment
(`jax.jit(...).lower(...).compile().memory_analysis()`) without running it: that is the peak
the step would need on one device, the number the estimate is checked against.

Example:
    >>> est = estimate(dims, weights=w, gradients=g, optimizer=o, batch_per_device=2, seq=1024,
    ...                precision="bfloat16", remat="blocks", chunk=256)
    >>> est["total"] <= DEVICES["v5e"]
"""

from __future__ import annotations

import math
from typing import Any

GiB = 1 << 30

# Memory per chip (nominal HBM; the runtime keeps a little of it for itself).
DEVICES: dict[str, int] = {
    "v4": 32 * GiB,
    "v5e": 16 * GiB,
    "v5p": 95 * GiB,
    "v6e": 32 * GiB,
    "a100-40": 40 * GiB,
    "a100-80": 80 * GiB,
    "h100": 80 * GiB,
    "h200": 141 * GiB,
}


def _act_bytes(precision: str) -> int:
    return 2 if precision in ("bfloat16", "mixed_bfloat16") else 4


def block_activation_bytes(dims: dict[str, int], seq: int, precision: str, model_axis: int = 1) -> int:
    """Bytes one decoder block keeps per token for its backward pass.

    Per token, at the compute dtype's width: the residual stream and the norms' inputs and
    outputs (4·H), q/k/v ((Nq + 2·Nkv)·Dh), the attention context (Nq·Dh), one [S]-long row of
    attention probabilities per head (Nq·S; fused attention keeps no more) and the MLP's two
    gate branches and their product (3·F). Everything but the residual stream is split over the
    model axis (tensor parallelism shards heads and the MLP). The terms were chosen against six
    peaks measured on an H100 (Gemma 3 1B full fine-tune at 16 × 512 and 4 × 4096, 4B LoRA at
    8 × 1024, each with and without remat, bfloat16): the estimate is within −7 %…+10 % of
    each — a fit to those points, not an independent check.
    """
    d = dims
    sharded = (d["heads"] + 2 * d["kv_heads"]) * d["head_dim"] + d["heads"] * d["head_dim"] + 3 * d["ffw"]
    sharded += d["heads"] * seq
    # a mixture-of-experts block (Gemma 4 26B-A4B): keras-hub's dense expert bank keeps gate, up
    # and their product (E × Ie each) and every expert's output (E × H) before the routing
    # weights sum them; the expert dimension is sharded over the model axis, and so are these
    sharded += d.get("experts", 0) * (3 * d.get("expert_dim", 0) + d["hidden"])
    return (4 * d["hidden"] + sharded // max(model_axis, 1)) * _act_bytes(precision)


def activation_bytes(
    dims: dict[str, int],
    batch_per_device: int,
    seq: int,
    precision: str,
    remat: str = "none",
    model_axis: int = 1,
) -> int:
    """Estimated activation memory of one training step on one device (logits excluded).

    Without remat every block's activations live until its backward step:
    B·S·L·block. With `remat: blocks` only each block's input (B·S·H) is kept, and one block's
    activations are rebuilt at a time: B·S·(L·H·a + block). See `block_activation_bytes`.

    Args:
        dims: dict. layers, hidden, heads, kv_heads, head_dim, ffw (one gate's width), vocab.
        batch_per_device: int. Sequences per device (global batch / batch axis).
        seq: int. Sequence length.
        precision: str. The dtype policy (activations are 2 bytes for bf16 compute, else 4).
        remat: str. `none` or `blocks`.
        model_axis: int. Size of the mesh axis that splits heads and the MLP.
    """
    tokens = batch_per_device * seq
    block = block_activation_bytes(dims, seq, precision, model_axis)
    if remat == "blocks":
        return tokens * (dims["layers"] * dims["hidden"] * _act_bytes(precision) + block)
    return tokens * dims["layers"] * block


def logits_bytes(vocab: int, batch_per_device: int, seq: int, precision: str, chunk: int | None = None) -> int:
    """Estimated memory of the logits path of one training step on one device.

    The logits and their gradient at the compute dtype, with part of the float32 softmax
    between them: 1.5 × the compute dtype's width per vocabulary entry and position (3 bytes
    for bfloat16; an H100 measured ≈ 3 for Gemma 3 1B). The vocabulary axis is not split. With
    the chunked loss only `chunk` positions of each sequence are live at a time. (XLA on CPU
    fuses less and holds ≈ 15 bytes per entry in float32: see `gemma inspect --live`.)
    """
    per_entry_x2 = 3 * _act_bytes(precision)
    positions = min(chunk, seq) if chunk else seq
    return batch_per_device * positions * vocab * per_entry_x2 // 2


def image_bytes(vision: dict[str, int], images_per_device: int, trains: bool) -> int:
    """Estimated memory of the vision tower's activations in one training step on one device.

    Every image slot of a row (`max_images_per_prompt` per sequence, empty ones too) goes
    through the tower: P = (image_size / patch_size)² patch tokens of width Hv through Lv
    encoder layers (keras-hub runs Gemma 3's tower in float32 whatever the policy). Per patch
    token one layer keeps its input and norms (4·Hv), q/k/v and the context (4·Hv), one P-long
    row of attention probabilities per head (Nv·P) and the MLP (2·Iv). A tower that trains
    (LoRA or full) keeps every layer's for the backward pass; a frozen one needs no gradient,
    so only one layer's are live at a time. The image tokens the projector gives are part of
    the text sequence (counted with the activations).

    Args:
        vision: dict. image_size, patch_size, hidden, heads, intermediate, layers of the tower.
        images_per_device: int. Image slots per device (sequences per device × max images).
        trains: bool. Whether the tower trains (`model.vision: lora` or `full`).
    """
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    per_token = 8 * vision["hidden"] + vision["heads"] * patches + 2 * vision["intermediate"]
    layers = vision["layers"] if trains else 1
    return images_per_device * patches * per_token * layers * 4


def estimate(
    dims: dict[str, int],
    *,
    weights: int,
    gradients: int,
    optimizer: int,
    batch_per_device: int,
    seq: int,
    precision: str,
    remat: str = "none",
    chunk: int | None = None,
    model_axis: int = 1,
    reference: bool = False,
    dequantized: int = 0,
    images: int = 0,
) -> dict[str, int]:
    """Per-device bytes of one training step, by part (see the module docstring).

    `reference` (DPO with a reference model): the step also runs the reference forward pass.
    Nothing of it is kept for the backward pass; what it adds at its peak is its final hidden
    states (B·S·H) and its own logits path (`logits`, chunked alike), counted as `reference`.

    `dequantized` is a quantized run's transient: keras int8/int4 layers are storage-only, each
    matmul (and its backward) rebuilds its kernel at the compute dtype, so one kernel's float
    copy (the largest shard; for a tied int4 embedding the output projection's) is live at a time.

    `images`: the vision tower's activations (`image_bytes`), counted as they are.

    Returns:
        dict. weights, gradients, optimizer, activations, images, activations_remat_none,
        activations_remat_blocks, logits, logits_plain, logits_chunked (0 when not chunked),
        reference (0 without one), dequantized, total (with the configured remat and chunk).
    """
    act = {
        r: activation_bytes(dims, batch_per_device, seq, precision, r, model_axis) for r in ("none", "blocks")
    }
    lg_plain = logits_bytes(dims["vocab"], batch_per_device, seq, precision)
    lg_chunk = logits_bytes(dims["vocab"], batch_per_device, seq, precision, chunk) if chunk else 0
    out = {
        "weights": weights,
        "gradients": gradients,
        "optimizer": optimizer,
        "activations": act[remat],
        "activations_remat_none": act["none"],
        "activations_remat_blocks": act["blocks"],
        "logits": lg_chunk if chunk else lg_plain,
        "logits_plain": lg_plain,
        "logits_chunked": lg_chunk,
        "dequantized": dequantized,
        "images": images,
    }
    hidden = batch_per_device * seq * dims["hidden"] * _act_bytes(precision)
    out["reference"] = (hidden + out["logits"]) if reference else 0
    out["total"] = weights + gradients + optimizer + out["activations"] + out["logits"] + out["reference"] + dequantized + images
    return out


# --------------------------------------------------------------------------- measuring ---
def train_step_program(causal_lm: Any, batch: int, seq: int, distribution: Any = None) -> tuple[Any, Any, Any]:
    """`causal_lm`'s train step jitted exactly as keras' `fit` jits it (state donated, state
    shardings from the distribution), with one [batch, seq] batch of zeros laid out as the
    distribution lays out data. The model must be compiled (optimizer built).

    Returns:
        (step, state, batch): `step(state, batch)` → (logs, new state); `batch` is numpy
        (x, y, sample_weight); its sharding is `data_sharding(distribution, batch, seq)`.
    """
    import jax
    import numpy as np

    x = {"token_ids": np.zeros((batch, seq), "int32"), "padding_mask": np.ones((batch, seq), bool)}
    if "position_ids" in [i.name for i in causal_lm.backbone.inputs]:  # Gemma 4 takes its positions
        x["position_ids"] = np.broadcast_to(np.arange(seq, dtype="int32"), (batch, seq)).copy()
    y = np.zeros((batch, seq), "int32")
    sw = np.ones((batch, seq), "float32")
    causal_lm._symbolic_build(data_batch=(x, y, sw))  # noqa: SLF001 — what fit does first
    state = (
        [v.value for v in causal_lm.trainable_variables],
        [v.value for v in causal_lm.non_trainable_variables],
        [v.value for v in causal_lm.optimizer.variables],
        [v.value for v in causal_lm.metrics_variables],
    )
    out_shardings = (None, causal_lm._get_state_sharding_spec()) if distribution is not None else None  # noqa: SLF001
    step = jax.jit(causal_lm.train_step, donate_argnums=0, out_shardings=out_shardings)
    return step, state, (x, y, sw)


def data_sharding(distribution: Any, batch: int, seq: int) -> Any:
    """The sharding keras gives a [batch, seq] input under `distribution` (None: default)."""
    return distribution.get_data_layout((batch, seq)).backend_layout if distribution is not None else None


def measure_train_step(causal_lm: Any, batch: int, seq: int, distribution: Any = None) -> dict[str, int]:
    """XLA's memory analysis of `causal_lm`'s compiled train step for one [batch, seq] batch.

    Compiles (does not run) the step of `train_step_program`. The model must be compiled
    (optimizer built).

    Returns:
        dict. argument, output, alias, temp (bytes per device, as XLA assigns them), peak
        (argument + output − alias + temp: what one device holds at the step's high point)
        and collectives (`engine/plan/comms.traffic` of the compiled step: count and bytes
        sent per device per step, per kind and in total).
    """
    import jax

    from gemma_cli.engine.plan import comms

    step, state, arrays = train_step_program(causal_lm, batch, seq, distribution)
    sharding = data_sharding(distribution, batch, seq)
    data = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), arrays)
    compiled = step.lower(state, data).compile()
    ma = compiled.memory_analysis()
    out: dict[str, Any] = {
        "argument": int(ma.argument_size_in_bytes),
        "output": int(ma.output_size_in_bytes),
        "alias": int(ma.alias_size_in_bytes),
        "temp": int(ma.temp_size_in_bytes),
    }
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    out["collectives"] = comms.traffic(comms.collectives(compiled.as_text(), devices=jax.device_count()))
    return out


def error(estimated: int, measured: int) -> float:
    """Relative error of an estimate against a measurement ((est − measured) / measured)."""
    return (estimated - measured) / measured if measured else math.nan
