"""The collective traffic a mesh will cost a train step, estimated before any weight exists.

`estimate(cfg, shape)` writes the train step of a Gemma-style decoder as a small JAX program
(`_step`: embedding, per block the query/key/value/output projections with grouped-query
attention and the gated feed-forward, the tied logits and a cross-entropy; LoRA kernels added
to their base kernels as keras' EinsumDense does; the gradient of every trainable variable and
a plain update written back in its own sharding), gives every variable the layout plan's
PartitionSpec and the batch the data sharding keras gives it, then lowers and compiles it on
abstract arrays (`jax.ShapeDtypeStruct`: nothing is allocated) and reads the collectives from
the optimized HLO with `engine/plan/comms.py`. XLA makes the same partitioning choices on the
same dot shapes and shardings as for keras-hub's step, so the skeleton moves what the real step
moves for the matrices (norms, rotary embeddings and masks, which move little, are left out);
tests/test_traffic.py checks its ranking of meshes against the compiled keras step's.

Two compiles per mesh (one and two decoder blocks; the rest is extrapolated per block; a model
of two blocks or fewer compiles whole, once): measured on 2 shared, busy CPU cores, 3-6 s per
compile for the tiny test model and 10-25 s per mesh for Gemma 3 1B (benchmarks/mesh_table.py);
estimates are cached per (model, layout, mesh, batch shape) in the process. It needs the
devices of the mesh in this process (`jax.device_count()` ≥ the mesh's); families whose
variable names it does not know (Llama) get None.

Example:
    >>> estimate(cfg, (2, 4))["bytes_per_device"]  # tiny Gemma 3 LoRA, batch 8 × 64 (compiled step: 1453476)
    1006468
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

_CACHE: dict[str, dict[str, Any]] = {}  # one estimate per (config, mesh, layout) in a process
_KNOWN = ("attention/query/kernel", "attention/key/kernel", "attention/value/kernel",
          "attention/attention_output/kernel", "ffw_gating/kernel", "ffw_gating_2/kernel", "ffw_linear/kernel")


def _blocks(paths: list[str]) -> list[str]:
    return sorted({m.group(1) for p in paths if (m := re.match(r"(decoder_block_\d+)/", p))},
                  key=lambda b: int(b.rsplit("_", 1)[1]))


def supported(variables: list[tuple[str, tuple[int, ...], str]]) -> bool:
    """Whether the skeleton knows this backbone's variables (Gemma 1/2/3 names)."""
    paths = {p for p, _, _ in variables}
    blocks = _blocks(list(paths))
    return ("token_embedding/embeddings" in paths and bool(blocks)
            and all(f"{blocks[0]}/{k}" in paths for k in _KNOWN))


def _step(weights: dict[str, Any], frozen: dict[str, Any], tokens: Any, blocks: list[str], lora_scale: float,
          dtype: Any) -> Any:
    """The skeleton's loss for one batch of `tokens` [batch, seq]."""
    import jax
    import jax.numpy as jnp

    def w(path: str) -> Any:
        return weights[path] if path in weights else frozen[path]

    def kernel(prefix: str) -> Any:
        k = w(f"{prefix}/kernel").astype(dtype)
        a, b = f"{prefix}/lora_kernel_a", f"{prefix}/lora_kernel_b"
        if a in weights or a in frozen:  # keras' EinsumDense: kernel + (A @ B) · alpha/rank
            k = k + (jnp.tensordot(w(a), w(b), axes=1) * lora_scale).astype(dtype)
        return k

    emb = w("token_embedding/embeddings").astype(dtype)
    x = jnp.take(emb, tokens, axis=0) * math.sqrt(emb.shape[1])
    for blk in blocks:
        att = f"{blk}/attention"
        q = jnp.einsum("btd,ndh->btnh", x, kernel(f"{att}/query"))
        k = jnp.einsum("btd,kdh->btkh", x, kernel(f"{att}/key"))
        v = jnp.einsum("btd,kdh->btkh", x, kernel(f"{att}/value"))
        b_, t, n, h = q.shape
        kv = k.shape[2]
        q = q.reshape(b_, t, kv, n // kv, h)
        s = jnp.einsum("btkgh,bskh->bkgts", q, k) / math.sqrt(h)
        causal = jnp.tril(jnp.ones((t, t), bool))
        p = jax.nn.softmax(jnp.where(causal, s, -1e9).astype(jnp.float32), axis=-1).astype(dtype)
        o = jnp.einsum("bkgts,bskh->btkgh", p, v).reshape(b_, t, n, h)
        x = x + jnp.einsum("btnh,nhd->btd", o, kernel(f"{att}/attention_output"))
        g = jnp.einsum("btd,df->btf", x, kernel(f"{blk}/ffw_gating"))
        g2 = jnp.einsum("btd,df->btf", x, kernel(f"{blk}/ffw_gating_2"))
        x = x + jnp.einsum("btf,fd->btd", jax.nn.gelu(g) * g2, kernel(f"{blk}/ffw_linear"))
    logits = jnp.einsum("btd,vd->btv", x, emb).astype(jnp.float32)
    targets = jnp.roll(tokens, -1, axis=1)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


def _compile_traffic(plan: Any, trainable: set[str], blocks: list[str], batch: int, seq: int, batch_axis: str,
                     precision: str, lora_scale: float) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from gemma_cli.engine.plan import comms

    n = math.prod(plan.mesh_shape)
    devices = np.array(jax.devices()[:n]).reshape(plan.mesh_shape)
    mesh = Mesh(devices, plan.mesh_axes)
    keep = {"token_embedding/embeddings"} | {v.path for v in plan.variables
                                            if any(v.path.startswith(b + "/") for b in blocks)}
    dtype = jnp.bfloat16 if "bfloat16" in precision else jnp.float32
    weights, frozen, shard = {}, {}, {}
    for v in plan.variables:
        if v.path not in keep or not (v.path.endswith(("/kernel", "/embeddings", "lora_kernel_a", "lora_kernel_b"))):
            continue
        s = NamedSharding(mesh, P(*v.spec))
        a = jax.ShapeDtypeStruct(v.shape, jnp.dtype(v.dtype), sharding=s)
        (weights if v.path in trainable else frozen)[v.path] = a
        shard[v.path] = s
    tok_sharding = NamedSharding(mesh, P(batch_axis if batch_axis in plan.mesh_axes else None, None))
    tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=tok_sharding)

    def train(wts: dict[str, Any], fz: dict[str, Any], tk: Any) -> Any:
        loss, grads = jax.value_and_grad(_step)(wts, fz, tk, blocks, lora_scale, dtype)
        return loss, {k: wts[k] - 1e-3 * grads[k].astype(wts[k].dtype) for k in wts}

    out = (NamedSharding(mesh, P()), {k: shard[k] for k in weights})
    compiled = jax.jit(train, out_shardings=out).lower(weights, frozen, tokens).compile()
    return comms.traffic(comms.collectives(compiled.as_text(), devices=n))


def estimate(cfg: Any, shape: tuple[int, ...], rules: str | None = None) -> dict[str, Any] | None:
    """Estimated collective bytes per device per train step of `cfg` on mesh `shape`.

    Args:
        cfg: RunConfig. The run config (its model, layout, data.batch_size, sequence_length).
        shape: tuple[int, ...]. The mesh shape, in the order of `cfg.mesh.axes`.
        rules: str | None. A layout mode to plan with instead of the config's (`fsdp`).

    Returns:
        dict | None. `bytes_per_device` (as a ring moves them, comms.py), `by_kind`
        ({kind: bytes}), `seconds` (what estimating took); None when this process has fewer
        devices than the mesh or the backbone's variables are not a Gemma's.
    """
    import jax

    from gemma_cli.engine.model import load as model
    from gemma_cli.engine.plan import inspect as inspect_report
    from gemma_cli.engine.plan import layout as lay

    t0 = time.perf_counter()
    if math.prod(shape) > jax.device_count():
        return None
    from gemma_cli.config import dump_config

    trial = cfg.model_copy(deep=True)
    trial.mesh.shape = list(shape)
    if rules:
        trial.layout.rules = rules
    # what the step depends on: the model, its layout, the mesh and the batch's shape
    d = dump_config(trial)
    key = json.dumps([d.get("model"), d.get("layout"), d.get("mesh"), trial.data.batch_size if trial.data else None,
                      trial.data.sequence_length if trial.data else None], sort_keys=True, default=str)
    if key in _CACHE:
        return _CACHE[key]
    bb = inspect_report._backbone_config(trial.model.preset)  # noqa: SLF001
    cls = model.backbone_class(bb)
    lora = trial.model.lora
    am = model.abstract_model(bb, trial.model.precision, lora.rank if lora else 0, lora.target_layers if lora else None,
                              "none", getattr(trial.model, "vision", "frozen"))
    variables = list(am.variables)
    if not supported(variables):
        return None
    plan = lay.plan_for(trial, cls, variables, tuple(shape))
    if plan.errors:
        return None
    blocks = _blocks([p for p, _, _ in variables])
    # no data section (`gemma init` before --data): a batch every split of the devices divides
    batch = trial.data.batch_size if trial.data is not None else math.prod(shape)
    seq = trial.data.sequence_length if trial.data is not None else 128
    axes = list(trial.mesh.axes)
    if trial.mesh.batch_axis in axes and batch % shape[axes.index(trial.mesh.batch_axis)]:
        return None  # the batch does not divide over the batch axis: no step to estimate
    scale = (lora.alpha / lora.rank) if lora and getattr(lora, "alpha", None) else 1.0
    trainable = set(am.trainable)
    def compiled(n: int) -> dict[str, Any]:
        return _compile_traffic(plan, trainable, blocks[:n], batch, seq, trial.mesh.batch_axis,
                                trial.model.precision, scale)

    if len(blocks) <= 2:  # the whole model in one compile
        one = two = compiled(len(blocks))
        extra = 0
    else:
        one, two = compiled(1), compiled(2)
        extra = len(blocks) - 1

    def total(kind: str) -> int:
        a, b = one[kind]["bytes_per_device"], two[kind]["bytes_per_device"]
        return max(0, a + extra * (b - a))

    from gemma_cli.engine.plan.comms import KINDS

    by_kind = {k: total(k) for k in KINDS}
    _CACHE[key] = out = {"bytes_per_device": sum(by_kind.values()), "by_kind": by_kind,
                         "seconds": round(time.perf_counter() - t0, 2)}
    return out
