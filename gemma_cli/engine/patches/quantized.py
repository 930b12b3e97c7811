"""The gradient through an int8 tied output projection (keras 3.15.1's `ReversibleEmbedding`).

keras' int8 layers are W8A8: each matmul rounds its input rows to int8. `Dense` and
`EinsumDense` wrap that in a custom gradient whose input gradient uses the dequantized kernel
(a straight-through estimator). `ReversibleEmbedding`'s reverse call (the logits projection,
tied to the token embedding in Gemma) does not: the rounding and the cast to int8 have zero
gradient, so only the per-row scale carries any, and every LoRA adapter below it receives a
wrong gradient. Seen here on the tiny Gemma 3: the int8 LoRA gradients had cosine ≈ 0 with the
float model's (int4: 0.8-0.95); on the real 270M an int8 LoRA run's loss rose (3.7 → 4.3 in 11
steps) where bf16's fell to 0.66.

`fix_int8_reverse_gradient(backbone)` gives each int8 `ReversibleEmbedding` the same estimator
as `EinsumDense`: the forward value is keras' int8 logits unchanged, the input gradient is
`upstream @ dequantized kernelᵀ` (through the soft cap when the model has one). Applied by
`engine/model/load.py` right after `Model.quantize`.
"""

from __future__ import annotations

from typing import Any


def fix_int8_reverse_gradient(backbone: Any) -> int:
    """Patch every int8 `ReversibleEmbedding` of `backbone` in place; returns how many."""
    from keras.layers import ReversibleEmbedding

    n = 0
    for layer in backbone._flatten_layers(include_self=False):
        if isinstance(layer, ReversibleEmbedding) and getattr(layer, "quantization_mode", None) == "int8":
            if not getattr(layer, "_gemma_int8_reverse_gradient", False):
                layer._int8_call = _with_input_gradient(layer, layer._int8_call)
                layer._gemma_int8_reverse_gradient = True
            n += 1
    return n


def _with_input_gradient(layer: Any, int8_call: Any) -> Any:
    from keras import ops

    def call(inputs: Any, reverse: bool = False) -> Any:
        if not reverse:
            return int8_call(inputs)

        @ops.custom_gradient
        def project(x: Any) -> Any:
            logits = int8_call(x, reverse=True)

            def grad_fn(*args: Any, upstream: Any = None) -> Any:
                if upstream is None:
                    (upstream,) = args
                if layer.tie_weights:  # kernel (hidden, vocab), one scale per vocab row
                    kernel, scale = ops.transpose(layer._embeddings), ops.transpose(layer.embeddings_scale)
                else:
                    kernel, scale = layer.reverse_embeddings, layer.reverse_embeddings_scale
                float_kernel = ops.divide(ops.cast(kernel, layer.compute_dtype), ops.cast(scale, layer.compute_dtype))
                if layer.logit_soft_cap is not None:  # d/dz cap·tanh(z/cap) = 1 - (logits/cap)²
                    upstream = ops.multiply(upstream, 1 - ops.square(ops.divide(logits, layer.logit_soft_cap)))
                return ops.matmul(upstream, ops.transpose(float_kernel))

            return logits, grad_fn

        return project(inputs)

    return call
