"""The causal-LM loss in sequence chunks (`train.loss_chunk`): no [batch, sequence, vocab] logits.

A keras-hub CausalLM computes `logits = token_embedding(backbone(x), reverse=True)` for the
whole batch and hands them to the loss. With Gemma 3's 262,144-token vocabulary those logits
(and their float32 copy and gradient) are a large share of a step's memory: ≈ 1 MiB per token
in float32. `attach(causal_lm, chunk)` makes the model's training forward stop at the
backbone's hidden states and computes the loss from them chunk by chunk: for each run of
`chunk` sequence positions, the logits of that chunk (through the same `token_embedding`
layer, so tied or untied heads, soft-capping and dtype policy are the model's own), their
per-token cross-entropy, then the next chunk (`jax.lax.map` over `jax.checkpoint`ed chunks,
so the backward pass recomputes one chunk's logits at a time too). The per-token losses are
reduced exactly as the compiled keras loss would reduce them (its reduction, sample weights:
a weight of 0 — padding, prompt tokens — drops a token), so the loss and its gradients are
those of the plain path. Evaluation gets the same treatment, and `SparseCategoricalAccuracy`
is fed from the chunks' argmax.

The cost is one more forward of the output projection per step (the recomputation).

Example:
    >>> causal_lm.compile(optimizer=..., loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> losses.attach(causal_lm, 256)
    >>> causal_lm.fit(ds)
"""

from __future__ import annotations

import math
from typing import Any

# `auto`: chunk when one step's float32 logits per device would pass this ...
AUTO_LIMIT_BYTES = 1 << 30
# ... into chunks whose float32 logits per device stay under this.
AUTO_CHUNK_BYTES = 1 << 28


def resolve_chunk(setting: str | int, vocab: int, batch_per_device: int, seq: int) -> int | None:
    """Positions per chunk for a `train.loss_chunk` setting, or None for the plain loss.

    Args:
        setting: str | int. `auto`, `none` or a number of sequence positions.
        vocab: int. Vocabulary size.
        batch_per_device: int. Sequences per device in one step.
        seq: int. Sequence length.
    """
    if setting == "none":
        return None
    if isinstance(setting, int):
        return setting if setting < seq else None
    per_position = max(batch_per_device, 1) * vocab * 4
    if per_position * seq <= AUTO_LIMIT_BYTES:
        return None
    chunk = 2 ** int(math.log2(max(AUTO_CHUNK_BYTES // per_position, 1)))
    return chunk if chunk < seq else None


def configure(causal_lm: Any, cfg: Any, batch_axis_size: int = 1) -> int | None:
    """Attach the chunked loss to a compiled `causal_lm` if the run config asks for it.

    Args:
        causal_lm: keras_hub.models.CausalLM. Compiled.
        cfg: RunConfig. Reads `train.loss_chunk`, `data.batch_size`, `data.sequence_length`.
        batch_axis_size: int. Devices the batch splits over.

    Returns:
        int | None. The chunk in sequence positions, or None (the plain loss).
    """
    data = cfg.data
    batch = data.batch_size if data else 2
    seq = data.sequence_length if data else 128
    vocab = int(causal_lm.backbone.vocabulary_size)
    chunk = resolve_chunk(cfg.train.loss_chunk, vocab, -(-batch // max(batch_axis_size, 1)), seq)
    if chunk is None:
        detach(causal_lm)
    else:
        attach(causal_lm, chunk)
    return chunk


def attach(causal_lm: Any, chunk: int) -> None:
    """Compute `causal_lm`'s training and evaluation loss in chunks of `chunk` positions.

    Call after `compile` (the compiled loss gives the reduction) and before `fit`/`evaluate`.
    Generation is untouched: it does not go through `call`. `detach` restores the plain path.

    Args:
        causal_lm: keras_hub.models.CausalLM. A compiled causal LM whose output is
            `backbone.token_embedding(backbone(x), reverse=True)`, optionally soft-capped by
            the task's `final_logit_cap` (Gemma, Gemma 2, Gemma 3, Gemma 4, Llama).
        chunk: int. Sequence positions per chunk.
    """
    import keras

    lm = causal_lm
    backbone = lm.backbone
    loss_obj = lm.loss
    if not isinstance(loss_obj, keras.losses.SparseCategoricalCrossentropy) or not loss_obj.from_logits:
        raise ValueError("the chunked loss replaces SparseCategoricalCrossentropy(from_logits=True) only")
    state: dict[str, Any] = {}

    def call(inputs: Any, training: Any = None, mask: Any = None) -> Any:
        return backbone(inputs, training=training)

    def compute_loss(x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None, training: bool = True) -> Any:
        from keras.src.losses.loss import reduce_weighted_values

        # evaluation: the accuracy comes from the same chunks' argmax (compute_metrics runs in
        # the same trace but can no longer read the weights); training skips it (nothing reads it)
        compiled = lm._compile_loss  # noqa: SLF001
        if compiled is not None and not compiled.built:  # keras builds it through this method
            compiled.build(y, y_pred)
        per_token, matches = token_losses(lm, y_pred, y, chunk, loss_obj, with_matches=not training)
        state["matches"] = matches
        loss = reduce_weighted_values(
            per_token, sample_weight=sample_weight, reduction=loss_obj.reduction, dtype=loss_obj.dtype
        )
        extra = [keras.ops.sum(v) for v in lm.losses]
        return loss + sum(extra) if extra else loss

    def compute_metrics(x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        matches, state["matches"] = state.get("matches"), None
        compiled = lm._compile_metrics  # noqa: SLF001
        if compiled is not None and not compiled.built:  # keras builds them through this method
            compiled.build(y, y_pred)
        if matches is not None and compiled is not None:
            for m in compiled.metrics:
                if isinstance(m, keras.metrics.SparseCategoricalAccuracy):
                    keras.metrics.Mean.update_state(m, matches, sample_weight=sample_weight)
        return lm.get_metrics_result()

    detach(lm)
    # plain attributes on the instance (not tracked by keras, not serialized)
    put = object.__setattr__
    put(lm, "_gemma_plain", {k: lm.__dict__.get(k) for k in ("call", "compute_loss", "compute_metrics")})
    put(lm, "call", call)
    put(lm, "compute_loss", compute_loss)
    put(lm, "compute_metrics", compute_metrics)
    put(lm, "_gemma_loss_chunk", chunk)
    # the train/test functions close over the methods: make keras trace them anew
    lm.train_function = lm.test_function = None


def detach(causal_lm: Any) -> None:
    """Undo `attach` (the plain, full-logits loss again)."""
    saved = causal_lm.__dict__.get("_gemma_plain")
    if saved is None:
        return
    for k, v in saved.items():
        if v is None:
            causal_lm.__dict__.pop(k, None)
        else:
            object.__setattr__(causal_lm, k, v)
    for k in ("_gemma_plain", "_gemma_loss_chunk"):
        causal_lm.__dict__.pop(k, None)
    causal_lm.train_function = causal_lm.test_function = None


def chunk_of(causal_lm: Any) -> int | None:
    """The chunk `attach` set on `causal_lm`, or None (the plain loss)."""
    return getattr(causal_lm, "_gemma_loss_chunk", None)


def _chunks(hidden: Any, chunk: int) -> tuple[Any, int]:
    """[B, S, H] → ([n, B, chunk, H], S), zero-padded to a whole number of chunks."""
    import jax.numpy as jnp

    b, s, h = hidden.shape
    n = -(-s // chunk)
    if n * chunk != s:
        hidden = jnp.pad(hidden, ((0, 0), (0, n * chunk - s), (0, 0)))
    return jnp.moveaxis(hidden.reshape(b, n, chunk, h), 1, 0), s


def _logits(causal_lm: Any, hidden: Any) -> Any:
    """The model's own head on some hidden states (tied/untied, soft-caps, dtype policy)."""
    from keras import ops

    logits = causal_lm.backbone.token_embedding(hidden, reverse=True)
    cap = getattr(causal_lm, "final_logit_cap", None)  # Gemma 4 caps in the task, not the layer
    if cap is not None:
        logits = ops.multiply(ops.tanh(ops.divide(logits, cap)), cap)
    return logits


def token_losses(
    causal_lm: Any, hidden: Any, labels: Any, chunk: int, loss_obj: Any, with_matches: bool = False
) -> tuple[Any, Any]:
    """Per-token losses [B, S] of `loss_obj` (unreduced) on the logits of `hidden`, by chunks;
    with `with_matches` also 1.0/0.0 [B, S] where the argmax of the logits is the label."""
    import jax
    import jax.numpy as jnp
    from keras import ops

    h, s = _chunks(hidden, chunk)
    y = jnp.asarray(labels)
    n = h.shape[0]
    if n * chunk != s:
        y = jnp.pad(y, ((0, 0), (0, n * chunk - s)))
    y = jnp.moveaxis(y.reshape(y.shape[0], n, chunk), 1, 0)

    @jax.checkpoint
    def one(args: Any) -> Any:
        hc, yc = args
        logits = ops.convert_to_tensor(_logits(causal_lm, hc), dtype=loss_obj.dtype)
        per = loss_obj.call(ops.convert_to_tensor(yc, dtype=loss_obj.dtype), logits)
        if not with_matches:
            return per
        return per, (jnp.argmax(logits, axis=-1) == yc).astype("float32")

    out = jax.lax.map(one, (h, y))  # [n, B, chunk] (each)

    def unchunk(a: Any) -> Any:
        return jnp.moveaxis(a, 0, 1).reshape(a.shape[1], n * chunk)[:, :s]

    if with_matches:
        return unchunk(out[0]), unchunk(out[1])
    return unchunk(out), None
