"""The causal-LM loss in sequence chunks (`train.loss_chunk`): no [batch, sequence, vocab] logits.

A keras-hub CausalLM computes `logits = token_embedding(backbone(x), reverse=True)` for the
whole batch and hands them to the loss. With Gemma 3's 262,144-token vocabulary those logits
(and their float32 copy and gradient) are a large share of a step's memory: ≈ 1 MiB per token
in float32. `CrossEntropy(chunk)` asks for the backbone's hidden states instead of logits
and computes the loss from them chunk by chunk: for each run of
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
    >>> patches.objective.install(causal_lm, CrossEntropy(chunk=256))
    >>> causal_lm.fit(ds)
"""

from __future__ import annotations

import math
from typing import Any

from gemma_cli.engine.objectives import Objective, Output

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


def for_config(cfg: Any, vocab: int, batch_axis_size: int = 1) -> CrossEntropy:
    """The SFT objective of a run config: chunked when `train.loss_chunk` asks for it.

    Args:
        cfg: RunConfig. Reads `train.loss_chunk`, `data.batch_size`, `data.sequence_length`.
        vocab: int. The model's vocabulary size.
        batch_axis_size: int. Devices the batch splits over.
    """
    data = cfg.data
    batch = data.batch_size if data else 2
    seq = data.sequence_length if data else 128
    return CrossEntropy(resolve_chunk(cfg.train.loss_chunk, vocab, -(-batch // max(batch_axis_size, 1)), seq))


class CrossEntropy(Objective):
    """Masked next-token cross-entropy, the loss of supervised fine-tuning.

    Reduced exactly as the compiled `SparseCategoricalCrossentropy(from_logits=True)` would
    reduce it (its reduction; a sample weight of 0 — padding, prompt tokens — drops a token).

    Args:
        chunk: int | None. Sequence positions per chunk of the output head, or None for the
            plain path (full logits, keras' own loss call). Defaults to None.
    """

    name = "cross_entropy"

    def __init__(self, chunk: int | None = None):
        self.chunk = chunk
        self.wants_logits = chunk is None

    def compute(self, model: Any, x: Any, y: Any, y_pred: Any, sample_weight: Any, training: bool) -> Output:
        import keras
        from keras.src.losses.loss import reduce_weighted_values

        loss_obj = model.loss
        if not isinstance(loss_obj, keras.losses.SparseCategoricalCrossentropy) or not loss_obj.from_logits:
            raise ValueError("the cross-entropy objective needs SparseCategoricalCrossentropy(from_logits=True) compiled")
        if self.chunk is None:
            return Output(loss_obj(y, y_pred, sample_weight=sample_weight))
        # evaluation: the accuracy comes from the same chunks' argmax; training skips it
        per_token, matches = token_losses(model, y_pred, y, self.chunk, loss_obj, with_matches=not training)
        loss = reduce_weighted_values(per_token, sample_weight=sample_weight, reduction=loss_obj.reduction, dtype=loss_obj.dtype)
        return Output(loss, matches=matches)


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
    y = _label_chunks(jnp.asarray(labels), h.shape[0], chunk, s)

    @jax.checkpoint
    def one(args: Any) -> Any:
        hc, yc = args
        logits = ops.convert_to_tensor(_logits(causal_lm, hc), dtype=loss_obj.dtype)
        per = loss_obj.call(ops.convert_to_tensor(yc, dtype=loss_obj.dtype), logits)
        if not with_matches:
            return per
        return per, (jnp.argmax(logits, axis=-1) == yc).astype("float32")

    out = jax.lax.map(one, (h, y))  # [n, B, chunk] (each)
    if with_matches:
        return _unchunk(out[0], s), _unchunk(out[1], s)
    return _unchunk(out, s), None


def _label_chunks(y: Any, n: int, chunk: int, s: int) -> Any:
    """[B, S] → [n, B, chunk], zero-padded like `_chunks` pads the hidden states."""
    import jax.numpy as jnp

    if n * chunk != s:
        y = jnp.pad(y, ((0, 0), (0, n * chunk - s)))
    return jnp.moveaxis(y.reshape(y.shape[0], n, chunk), 1, 0)


def _unchunk(a: Any, s: int) -> Any:
    """[n, B, chunk] → [B, S] (the padding dropped)."""
    import jax.numpy as jnp

    n, b, chunk = a.shape
    return jnp.moveaxis(a, 0, 1).reshape(b, n * chunk)[:, :s]
