"""The float kernel a quantized keras layer stands for (int8 or int4, Dense/EinsumDense/Embedding).

Export writes float weights: HF, GGUF and preset exports of a quantized run dequantize every
quantized kernel with the same arithmetic the layer's forward pass uses (keras' own quantizer
helpers), merge the LoRA delta on top, and rebuild an unquantized backbone.
"""

from __future__ import annotations

from typing import Any


def is_quantized(layer: Any) -> bool:
    return bool(getattr(layer, "quantization_mode", None))


def quantized_layers(backbone: Any) -> list[Any]:
    return [lyr for lyr in backbone._flatten_layers(include_self=False) if is_quantized(lyr)]


def kernel_variable(layer: Any) -> Any:
    """The layer's stored kernel variable (`kernel` or `embeddings`, quantized or not)."""
    for name in ("_kernel", "_embeddings"):
        v = getattr(layer, name, None)
        if v is not None:
            return v
    raise AttributeError(f"{layer.path}: no kernel")


def dequantized_kernel(layer: Any) -> Any:
    """float32 numpy array of `layer`'s quantized kernel in its float shape (no LoRA)."""
    import keras
    import numpy as np
    from keras import ops
    from keras.src.quantizers import quantizers

    mode = layer.quantization_mode
    emb = getattr(layer, "_embeddings", None) is not None
    stored = kernel_variable(layer)
    if mode == "int8":
        q = keras.ops.convert_to_numpy(stored).astype(np.float32)
        scale = keras.ops.convert_to_numpy(
            layer.embeddings_scale if emb else (
                layer._adjust_scale_for_dequant(layer.kernel_scale)
                if hasattr(layer, "_adjust_scale_for_dequant") else layer.kernel_scale)
        ).astype(np.float32)
        if emb:
            scale = scale.reshape(scale.shape + (1,) * (q.ndim - scale.ndim))
        return q / scale
    if mode != "int4":
        raise NotImplementedError(f"{layer.path}: cannot dequantize {mode}")
    if emb:
        unpacked = quantizers.unpack_int4(stored, layer._orig_output_dim, axis=-1)  # [vocab, hidden]
        scale, zero = layer.embeddings_scale, layer.embeddings_zero
        group_axis, shape = -1, None
    else:
        unpacked = quantizers.unpack_int4(stored, layer._int4_unpacked_column_size, axis=-1)  # [rows, cols]
        scale, zero = layer.kernel_scale, getattr(layer, "kernel_zero", None)
        group_axis, shape = 0, getattr(layer, "original_kernel_shape", None)
    unpacked = ops.cast(unpacked, "float32")
    scale = ops.cast(scale, "float32")
    if zero is None:  # per-channel
        out = ops.divide(unpacked, ops.expand_dims(scale, -1) if emb else scale)
    else:
        out = quantizers.dequantize_with_sz_map(unpacked, scale, zero, layer.g_idx, group_axis=group_axis)
    out = keras.ops.convert_to_numpy(out).astype(np.float32)
    return out.reshape(shape) if shape is not None else out


def float_dtype(backbone: Any) -> str:
    """The dtype policy the backbone had before quantization (that of an unquantized layer)."""
    for layer in backbone._flatten_layers(include_self=False):
        if layer.weights and not is_quantized(layer):
            name = layer.dtype_policy.name
            if "_from_" not in name and "int" not in name:
                return name
    return "float32"
