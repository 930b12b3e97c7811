"""LoRA on a live keras-hub model: its adapted layers, merging them into the kernels, and
running the model with its adapters switched off (the reference policy of DPO and GRPO).
"""

from __future__ import annotations

from typing import Any

from gemma_cli.engine.core.report import NullReporter
from gemma_cli.errors import RuntimeFailure


def lora_layers(backbone: Any) -> list[Any]:
    """The backbone's layers with LoRA enabled (Dense/EinsumDense/Embedding), in build order."""
    return [lyr for lyr in backbone._flatten_layers(include_self=False) if getattr(lyr, "lora_enabled", False)]


def merge_lora(causal_lm: Any, log: Any = None) -> tuple[Any, int]:
    """Return (a CausalLM whose kernels hold base + LoRA delta and which has no LoRA, count).

    A quantized base (`model.quantize: int8|int4`) is dequantized first (`engine/model/dequantize.py`,
    the arithmetic of the layers' own forward pass), so the result is an unquantized float model
    in the dtype the run was loaded with. With no LoRA-enabled and no quantized layer the model is
    returned unchanged with count 0.
    """
    log = log or NullReporter()
    from gemma_cli.engine.core import runtime

    runtime.setup()
    import keras
    import numpy as np

    from gemma_cli.engine.model import dequantize

    backbone = causal_lm.backbone
    layers = lora_layers(backbone)
    qlayers = dequantize.quantized_layers(backbone)
    if not layers and not qlayers:
        return causal_lm, 0
    merged: dict[str, Any] = {}
    extras: set[str] = set()  # variables that only a quantized or LoRA layer has
    if qlayers:
        log.step(f"Dequantizing {len(qlayers)} {qlayers[0].quantization_mode} kernels ...")
        for layer in qlayers:
            kv = dequantize.kernel_variable(layer)
            merged[kv.path] = dequantize.dequantized_kernel(layer)
            extras.update(v.path for v in layer.weights if v.path != kv.path)
    if layers:
        log.step(f"Merging LoRA into {len(layers)} kernels ...")
    for layer in layers:
        kv = dequantize.kernel_variable(layer)
        base = merged.get(kv.path)
        if base is None:
            base = keras.ops.convert_to_numpy(kv).astype(np.float32)
        a = keras.ops.convert_to_numpy(getattr(layer, "lora_kernel_a", None) if hasattr(layer, "lora_kernel_a") else layer.lora_embeddings_a).astype(np.float32)
        b = keras.ops.convert_to_numpy(getattr(layer, "lora_kernel_b", None) if hasattr(layer, "lora_kernel_b") else layer.lora_embeddings_b).astype(np.float32)
        scale = float(layer.lora_alpha) / float(layer.lora_rank)
        merged[kv.path] = base + scale * np.matmul(a, b).reshape(base.shape)
        extras.update(v.path for v in layer.weights if "lora_" in v.path.rsplit("/", 1)[-1])

    config = backbone.get_config()
    if qlayers:
        config["dtype"] = dequantize.float_dtype(backbone)
    clean = type(backbone).from_config(config)
    source = {v.path: v for v in backbone.weights}
    if len(clean.weights) + len(extras) != len(backbone.weights):
        raise RuntimeFailure(
            f"internal: a rebuilt backbone has {len(clean.weights)} weights, the source one "
            f"{len(backbone.weights)} with {len(extras)} LoRA/quantization variables")
    for v in clean.weights:
        if v.path not in source:
            raise RuntimeFailure(f"internal: no weight {v.path} in the model being merged")
        value = merged[v.path] if v.path in merged else keras.ops.convert_to_numpy(source[v.path])
        if tuple(value.shape) != tuple(v.shape):
            raise RuntimeFailure(f"internal: {v.path} shape {value.shape} != {tuple(v.shape)}")
        v.assign(value)
    missing = set(merged) - {v.path for v in clean.weights}
    if missing:
        raise RuntimeFailure(f"internal: merged kernels not found in the rebuilt model: {sorted(missing)[:3]}")
    task = type(causal_lm)(backbone=clean, preprocessor=causal_lm.preprocessor)
    tok = getattr(causal_lm, "_gemma_tokenizer", None)
    if tok is not None:
        object.__setattr__(task, "_gemma_tokenizer", tok)
    return task, len(layers)


class adapters_off:
    """Run the model as its base: every LoRA layer reads its frozen kernel alone while inside.

    The reference policy of DPO and GRPO with no second copy of the weights. keras reads
    `lora_enabled` when a layer is called, so inside a traced (jitted) step the reference forward
    pass traced within this block is the base model's and the rest of the step keeps the adapters:

        >>> with adapters_off(causal_lm):
        ...     ref_logits = causal_lm.backbone(x)

    A model without LoRA is unchanged. Re-entrant: the layers switched off are remembered and
    only those are switched back on.
    """

    def __init__(self, causal_lm: Any):
        self.backbone = getattr(causal_lm, "backbone", causal_lm)
        self._off: list[Any] = []

    def __enter__(self) -> Any:
        self._off = lora_layers(self.backbone)
        for layer in self._off:
            layer.lora_enabled = False
        return self.backbone

    def __exit__(self, *exc: Any) -> None:
        for layer in self._off:
            layer.lora_enabled = True
        self._off = []


VISION_LORA = ("query_proj", "value_proj")  # keras-hub's LoRA targets in Gemma 3's vision tower


def tower(backbone: Any) -> Any:
    """The vision tower of a backbone: Gemma 3/4's `vision_encoder`, PaliGemma's `vit_encoder`
    (its ViT and projector); None for a text-only one."""
    return getattr(backbone, "vision_encoder", None) or getattr(backbone, "vit_encoder", None)


def target_names(backbone: Any, names: list[str] | None, vision: str = "frozen") -> list[str] | None:
    """The layer names LoRA goes on: `names` (None: keras-hub's defaults), with the vision
    tower's attention added for `model.vision: lora` and taken out otherwise (keras-hub's
    defaults for a Gemma 3 vision backbone include it; gemma's default is a frozen tower)."""
    if tower(backbone) is None:
        return names
    out = list(names) if names is not None else list(backbone.default_lora_layer_names())
    tower_names = vision_lora_names(backbone)
    out = [n for n in out if n not in tower_names]
    if vision == "lora":
        out += list(tower_names)
    return out


def vision_lora_names(backbone: Any) -> tuple[str, ...]:
    """The tower layers `model.vision: lora` adapts: the attention query/value of Gemma 3's and
    PaliGemma's SigLIP; in Gemma 4's tower every projection (q, k, v, o and the MLP), as
    keras-hub wraps each in a clipped linear whose inner `EinsumDense` is named `dense` (the
    wrappers take no LoRA, and `dense` names no layer of the text decoder)."""
    return ("dense",) if type(backbone).__name__ == "Gemma4Backbone" else VISION_LORA


def apply_vision_mode(backbone: Any, vision: str, lora: bool) -> None:
    """`model.vision` on a full fine-tune: `frozen` leaves the tower (encoder and projector)
    untrainable. With LoRA, `enable_lora` froze the base kernels; the tower's biases are frozen
    here."""
    enc = tower(backbone)
    if enc is not None and not lora:
        enc.trainable = vision == "full"
    if enc is not None and lora:
        # keras' `enable_lora` freezes a Dense's kernel, not its bias: the tower's q/v biases
        # would train beside the adapters (what neither a merged export nor PEFT's `bias: none`
        # carries); LoRA trains the adapters only
        for layer in lora_layers(enc):
            if getattr(layer, "bias", None) is not None:
                layer.bias.trainable = False
