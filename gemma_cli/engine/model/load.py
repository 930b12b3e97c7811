"""Presets, dtype policy, LoRA and quantization: from a config (or a run dir) to a CausalLM.

A preset is a keras-hub name (`gemma_7b_en`), `kaggle://...`, `hf://...`, a local preset
directory or a local Hugging Face checkpoint directory (`engine/model/hf.py`). The architecture (backbone config) is read without weights so that the layout can
be checked before anything is allocated.
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_cli.engine.families import (
    backbone_class,  # the model's class name (callers use it too)
    lora_layer_names,
)
from gemma_cli.engine.model.errors import load_error
from gemma_cli.engine.model.lora import apply_vision_mode, lora_layers, target_names
from gemma_cli.errors import RuntimeFailure, UsageError, translate


def _setup() -> None:
    from gemma_cli.engine.core import runtime

    runtime.setup()


def is_local(preset: str) -> bool:
    return "://" not in preset and (preset.startswith((".", "/", "~")) or "/" in preset or Path(preset).exists())


def backbone_config(preset: str) -> dict[str, Any]:
    """The preset's serialized backbone config ({class_name, config, ...}), no weights.

    Local dirs read config.json (a keras-hub preset's, or a Hugging Face checkpoint's through
    keras-hub's converter); known preset names use the architectures shipped with gemma (no
    network); anything else asks keras-hub, which downloads only config.json.
    """
    if is_local(preset):
        path = Path(preset).expanduser() / "config.json"
        if not path.exists():
            hint = (
                "run `make preset` to create it"
                if "gemma3_270m" in preset
                else "give a keras-hub preset directory or a Hugging Face checkpoint directory"
            )
            raise UsageError(f"model.preset: {preset}: no keras-hub preset or Hugging Face checkpoint there (no config.json)", hint=hint)
        from gemma_cli.engine.model import hf as hf_checkpoint

        if hf_checkpoint.read_config(preset) is not None:
            return hf_checkpoint.backbone_config(preset)
        return json.loads(path.read_text())
    from gemma_cli.engine import families

    known = families.get_preset(preset)
    if known is not None:
        return known
    _check_credentials(preset)
    _require_host(preset)
    _setup()
    from keras_hub.src.utils.preset_utils import load_json

    from gemma_cli.engine.core import remote

    try:
        with remote.guard(remote.kind_of(_handle(preset)) or "kaggle"):
            cfg = load_json(preset, "config.json")
    except Exception as e:  # network, auth, unknown name
        raise load_error(preset, e) from None
    if isinstance(cfg, dict) and "model_type" in cfg and "registered_name" not in cfg:
        from gemma_cli.engine.model import hf as hf_checkpoint  # an hf:// transformers repository

        return hf_checkpoint.backbone_config(preset, hf_config=cfg)
    return cfg


def _handle(preset: str) -> str:
    """The download handle of a preset: itself, or a bare keras-hub name's registered handle."""
    if "://" in preset or is_local(preset):
        return preset
    from gemma_cli.engine import families

    return families.keras_hub_presets().get(preset, "")


def _require_host(preset: str) -> None:
    """The bounded probe of the host a download comes from (`engine/core/remote.py`), unless
    the download is cached: a host that does not answer is one line in seconds, not the
    library's retries."""
    from gemma_cli.engine.core import remote

    remote.require_preset(_handle(preset), f"model.preset: {preset}")


def _check_credentials(preset: str) -> None:
    from gemma_cli.engine.core.credentials import require_credentials

    require_credentials(preset)


def dtype_for(precision: str) -> str:
    return {"float32": "float32", "bfloat16": "bfloat16", "mixed_bfloat16": "mixed_bfloat16"}[precision]


INT4_BLOCK_SIZE = 128  # keras' default sub-channel block (rows per scale/zero group)


def quantize_config(mode: str) -> Any:
    """The keras quantization config of `mode` (`int8`, `int4`): int4 is sub-channel with blocks
    of `INT4_BLOCK_SIZE` rows, asymmetric (scale + zero point per block and output column)."""
    if mode == "int4":
        import keras

        return keras.quantizers.Int4QuantizationConfig(block_size=INT4_BLOCK_SIZE)
    return None


def quantize_policy(mode: str, precision: str) -> str:
    """The dtype policy name a layer quantized with `mode` carries (what keras saves)."""
    src = "float32" if precision == "mixed_bfloat16" else dtype_for(precision)
    return f"int4/{INT4_BLOCK_SIZE}_from_{src}" if mode == "int4" else f"int8_from_{src}"


def abstract_variables(
    bb_config: dict[str, Any],
    precision: str = "float32",
    lora_rank: int = 0,
    lora_targets: list[str] | None = None,
    quantize: str = "none",
    vision: str = "frozen",
) -> list[tuple[str, tuple[int, ...], str]]:
    """(path, shape, dtype) of every backbone variable, with LoRA and quantization, allocating nothing.

    Traced once per (architecture, precision, LoRA, quantize) in a process: planning one model on
    many meshes (`gemma init`, the bench's slice table, the layout tests) reuses the trace. With
    `quantize` the rows are the quantized variables keras creates (an int4 kernel is int8 of half
    its columns, plus `kernel_scale`, `kernel_zero` and `g_idx`): see `abstract_model`.
    """
    return list(abstract_model(bb_config, precision, lora_rank, lora_targets, quantize, vision).variables)


@dataclass(frozen=True)
class QuantizedVar:
    """Where a quantized variable's dimensions come from in its layer's float kernel.

    `origin` is the float kernel's path (the path the layout rules were written for),
    `origin_shape` its shape, and `dims[i]` the float kernel's dimensions that dimension i of the
    quantized variable flattens (empty: a dimension of its own, such as scale groups).
    """

    origin: str
    origin_shape: tuple[int, ...]
    dims: tuple[tuple[int, ...], ...]
    mode: str
    logical_params: int  # float elements this variable stands for (the kernel's; 0 for scales)


@dataclass(frozen=True)
class AbstractModel:
    """The variables of a model as it would be built: no weights, from `jax.eval_shape`."""

    variables: tuple[tuple[str, tuple[int, ...], str], ...]
    trainable: frozenset[str]
    quantized: dict[str, QuantizedVar]
    float_kernels: dict[str, tuple[int, ...]]  # float kernels of the quantized layers (at load time)


def abstract_model(
    bb_config: dict[str, Any],
    precision: str = "float32",
    lora_rank: int = 0,
    lora_targets: list[str] | None = None,
    quantize: str = "none",
    vision: str = "frozen",
) -> AbstractModel:
    """The variables, the trainable set (read from the model, not from names) and the quantized
    variables' provenance of a backbone with LoRA and quantization, allocating nothing."""
    _setup()
    key = json.dumps(bb_config, sort_keys=True, default=str)
    targets = lora_layer_names(backbone_class(bb_config), lora_targets)
    out = _abstract(key, precision, lora_rank, tuple(targets) if targets else None, quantize, vision)
    if lora_rank and targets:
        check_lora_targets(lora_targets, targets, [p for p, _, _ in out.variables])
    return out


def quantizable_layers(backbone: Any) -> list[Any]:
    """The layers `Model.quantize` changes: leaf layers whose own class implements `quantize`
    (keras' Dense, EinsumDense, Embedding; keras-hub's ReversibleEmbedding)."""
    import keras

    out = []
    for layer in backbone._flatten_layers(include_self=False):
        if len(list(layer._flatten_layers())) != 1:
            continue
        cls = type(layer)
        if cls is keras.layers.Layer or "quantize" not in cls.__dict__:
            continue
        out.append(layer)
    return out


def _kernel_of(layer: Any) -> tuple[str, bool]:
    emb = hasattr(layer, "embeddings") or hasattr(layer, "_embeddings")
    return ("embeddings" if emb else "kernel"), emb


def _dims_of(name: str, shape: tuple[int, ...], k_shape: tuple[int, ...], reduced: tuple[int, ...], emb: bool) -> tuple[tuple[int, ...], ...]:
    import math

    kept = tuple(d for d in range(len(k_shape)) if d not in reduced)
    none: tuple[tuple[int, ...], ...] = tuple(() for _ in shape)
    if name in ("kernel", "embeddings"):
        if len(shape) == len(k_shape):  # int8, or an int4 embedding packed in place
            return tuple((d,) for d in range(len(shape)))
        if len(shape) == 2 and shape[0] == math.prod(k_shape[d] for d in reduced):
            return (reduced, kept)  # int4: [rows = reduced dims, packed columns = the others]
        return none
    if name.endswith(("_scale", "_zero")):
        if emb:  # per embedding row (and block)
            return ((0,),) + none[1:] if shape and shape[0] == k_shape[0] else none
        cols = math.prod(k_shape[d] for d in kept)
        if len(shape) == 2 and shape[-1] == cols and cols > 1:
            return ((), kept)  # int4: [row groups, columns]
        if len(shape) == 1 and shape[0] == cols and cols > 1:
            return (kept,)
        return none  # int8 EinsumDense: a broadcastable (1, 1, ..., columns) scale, kept whole
    return none  # g_idx: the group of each row


def check_lora_targets(given: list[str], names: list[str], paths: list[str]) -> None:
    """Every `model.lora.target_layers` entry names a layer of the model that got adapters
    (exit 2 naming the one that matched nothing, and the names there are)."""
    import re

    adapted = {m.group(1) for p in paths if (m := re.search(r"([^/]+)/lora_kernel_a$", p))}
    for g, n in zip(given, names, strict=False):
        if n not in adapted:
            have = sorted({m.group(1) for p in paths if (m := re.search(r"([^/]+)/kernel$", p))})
            raise UsageError(
                f"model.lora.target_layers: {g!r}" + (f" (= {n!r} here)" if g != n else "") + " matches no layer of this model",
                hint=f"layers with kernels: {', '.join(have)}; Hugging Face names q_proj, k_proj, v_proj, o_proj, "
                "gate_proj, up_proj, down_proj are understood",
            )


@functools.lru_cache(maxsize=32)
def _abstract(
    bb_json: str, precision: str, lora_rank: int, lora_targets: tuple[str, ...] | None, quantize: str = "none",
    vision: str = "frozen",
) -> AbstractModel:
    bb_config = json.loads(bb_json)
    _setup()
    import jax
    import keras

    rows: list[tuple[str, str, bool]] = []
    quantized: dict[str, QuantizedVar] = {}
    float_kernels: dict[str, tuple[int, ...]] = {}

    def make(dtype: Any) -> Any:
        cfg = dict(bb_config)
        inner = dict(cfg.get("config", {}))
        inner["dtype"] = dtype
        cfg["config"] = inner
        return keras.saving.deserialize_keras_object(cfg)

    def build() -> list[Any]:
        dtype: Any = dtype_for(precision)
        origins: dict[str, tuple[str, tuple[int, ...], bool]] = {}
        if quantize != "none":
            # the float model tells which layers quantize; a DTypePolicyMap builds the quantized
            # variables directly (as keras loads a quantized model): no weight is quantized here
            flt = make(dtype)
            policy = keras.dtype_policies.DTypePolicyMap(default_policy=dtype)
            for layer in quantizable_layers(flt):
                name, emb = _kernel_of(layer)
                var = getattr(layer, "embeddings" if emb else "_kernel")
                origins[layer.path] = (f"{layer.path}/{name}", tuple(int(s) for s in var.shape), emb)
                float_kernels[f"{layer.path}/{name}"] = tuple(int(s) for s in var.shape)
                policy[layer.path] = keras.dtype_policies.get(quantize_policy(quantize, precision))
            dtype = policy
        bb = make(dtype)
        if lora_rank:
            bb.enable_lora(lora_rank, target_layer_names=target_names(bb, list(lora_targets) if lora_targets else None, vision))
        apply_vision_mode(bb, vision, bool(lora_rank))
        rows.clear()
        quantized.clear()
        for layer in bb._flatten_layers(include_self=False):
            if layer.path in origins and getattr(layer, "quantization_mode", None):
                origin, k_shape, emb = origins[layer.path]
                reduced = (1,) if emb else tuple(getattr(layer, "_kernel_reduced_axes", None) or (0,))
                for v in layer.weights:
                    name = v.path.rsplit("/", 1)[-1]
                    if "lora_kernel" in name:
                        continue
                    shape = tuple(int(s) for s in v.shape)
                    import math

                    quantized[v.path] = QuantizedVar(
                        origin, k_shape, _dims_of(name, shape, k_shape, reduced, emb), quantize,
                        math.prod(k_shape) if name in ("kernel", "embeddings") else 0,
                    )
        rows.extend((v.path, str(v.dtype), bool(v.trainable)) for v in bb.weights)
        return [v.value for v in bb.weights]

    shapes = jax.eval_shape(build)
    variables = tuple((p, tuple(s.shape), d) for (p, d, _), s in zip(rows, shapes, strict=True))
    trainable = frozenset(p for p, _, t in rows if t) if lora_rank else frozenset(p for p, _, _ in rows)
    return AbstractModel(variables, trainable, dict(quantized), dict(float_kernels))


def load_causal_lm(preset: str, precision: str = "float32", remat: str = "none") -> Any:
    """keras_hub CausalLM.from_preset with the dtype policy; errors become one line.

    Args:
        preset: str. A preset name, handle or directory.
        precision: str. `float32`, `bfloat16` or `mixed_bfloat16`.
        remat: str. `blocks` builds the backbone so that each decoder block is rematerialised
            in the backward pass (`engine/patches/remat.py`); `none` (generation, export) does not.
    """
    _setup()
    from gemma_cli.engine.model import hf as hf_checkpoint

    if not is_local(preset):
        _check_credentials(preset)
        _require_host(preset)
        if preset.startswith("hf://") and hf_checkpoint.read_config(preset) is not None:
            return hf_checkpoint.load_causal_lm(preset, dtype_for(precision))
    else:
        backbone_config(preset)  # clear error for a missing dir or an unsupported checkpoint
        if hf_checkpoint.is_hf_checkpoint(preset):
            return hf_checkpoint.load_causal_lm(preset, dtype_for(precision))
    import keras_hub

    from gemma_cli.engine.core import runtime
    from gemma_cli.engine.patches import remat as rematlib

    # keras-hub's CausalLM preprocessors need TensorFlow; its tokenizers do not (sentencepiece).
    # Without TensorFlow the task is built without a preprocessor and carries its tokenizer.
    with_tf = runtime.tensorflow_available()
    extra: dict[str, Any] = {} if with_tf else {"preprocessor": None}
    from gemma_cli.engine.core import remote

    try:
        with runtime.quiet_native_info(), remote.guard(remote.kind_of(_handle(preset)) or "hf"):
            lm = rematlib.build(
                remat,
                backbone_config(preset) if remat != "none" else {},
                lambda: keras_hub.models.CausalLM.from_preset(preset, dtype=dtype_for(precision), **extra),
            )
            if not with_tf:
                object.__setattr__(lm, "_gemma_tokenizer", keras_hub.tokenizers.Tokenizer.from_preset(preset))
            return lm
    except (UsageError, RuntimeFailure):
        raise
    except Exception as e:
        known = translate(e, key="model.preset")
        raise (known if known is not None else load_error(preset, e)) from None


def tokenizer_of(causal_lm: Any) -> Any:
    """The model's tokenizer: its preprocessor's, or the one loaded beside it without TensorFlow."""
    pre = getattr(causal_lm, "preprocessor", None)
    if pre is not None:
        return pre.tokenizer
    tok = getattr(causal_lm, "_gemma_tokenizer", None)
    if tok is None:
        raise RuntimeFailure("internal: the model has neither a preprocessor nor a tokenizer")
    return tok


@contextlib.contextmanager
def _one_gc_at_the_end() -> Any:
    """Run keras' `Model.quantize` with one full garbage collection at the end instead of one per
    replaced variable.

    keras' `Layer.__delattr__` calls `gc.collect()` each time quantization deletes a float kernel
    (to free its device buffer early). The buffer is freed by reference counting already (seen
    here: quantizing four 2048 × 2048 Dense layers to int4 with the collection skipped freed each
    float kernel as its layer finished, live jax bytes 64 → 50 → 36 → 22 → 9 MiB), and each full
    collection walks every object of the process: 15 of them were 7.9 of the 8.6 s of quantizing
    the tiny test Gemma in a test process, and a 27B has 400+ quantized layers.
    """
    import gc

    collect = gc.collect
    gc.collect = lambda *a, **k: 0  # keras looks `gc.collect` up at call time
    try:
        yield
    finally:
        gc.collect = collect
        collect()


def apply_lora_and_quantize(causal_lm: Any, model_cfg: Any, *, lora: bool = True) -> None:
    """Quantize the base (`model.quantize`), then add the LoRA adapters (`model.lora`).

    Order matters: keras quantizes a layer's float kernel and freezes it; `enable_lora` then adds
    float `lora_kernel_a/b` in the compute dtype beside the int8/int4 kernel. Every layer
    `Model.quantize` supports is quantized, the token embedding included: for Gemma it is the
    largest tensor (262k × hidden, the tied output projection too) and the one LoRA never adapts
    by default (keras 3.15.1 cannot put LoRA on an int4 embedding; the fix is merged upstream).

    Args:
        causal_lm: keras_hub CausalLM. Changed in place.
        model_cfg: ModelConfig. `quantize` (`none`, `int8`, `int4`) and `lora`.
        lora: bool. Also enable the adapters. Defaults to True (generation from a preset
            quantizes without adapters).
    """
    mode = getattr(model_cfg, "quantize", "none")
    if mode != "none" and not any(getattr(lyr, "quantization_mode", None) for lyr in causal_lm.backbone._flatten_layers()):
        import warnings

        with warnings.catch_warnings(), _one_gc_at_the_end():  # keras warns per layer that cannot quantize (norms)
            warnings.simplefilter("ignore")
            causal_lm.backbone.quantize(mode, config=quantize_config(mode))
        from gemma_cli.engine.patches.quantized import fix_int8_reverse_gradient

        fix_int8_reverse_gradient(causal_lm.backbone)  # keras 3.15.1's int8 logits pass no input gradient
    cfg_lora = model_cfg.lora
    if lora and cfg_lora and cfg_lora.rank:
        bb = causal_lm.backbone
        names = lora_layer_names(type(bb).__name__, cfg_lora.target_layers)
        bb.enable_lora(cfg_lora.rank, target_layer_names=target_names(bb, names, getattr(model_cfg, "vision", "frozen")))
        if not getattr(bb, "_lora_enabled_layers", None):
            raise UsageError(
                f"model.lora.target_layers: {cfg_lora.target_layers} matched no layer",
                hint="use layer names such as query, value, key, attention_output",
            )
        if cfg_lora.alpha is not None:
            for layer in lora_layers(bb):
                layer.lora_alpha = float(cfg_lora.alpha)
    apply_vision_mode(causal_lm.backbone, getattr(model_cfg, "vision", "frozen"), bool(lora and cfg_lora and cfg_lora.rank))


def param_counts(causal_lm: Any) -> dict[str, int]:
    """Logical parameters: a quantized kernel counts the float elements it stands for (an int4
    kernel stores half as many int8 elements), its scales, zero points and group indices none."""
    import math

    logical: dict[str, int] = {}
    for layer in causal_lm.backbone._flatten_layers(include_self=False):
        mode = getattr(layer, "quantization_mode", None)
        if not mode:
            continue
        for v in layer.weights:
            name = v.path.rsplit("/", 1)[-1]
            if name in ("kernel", "embeddings"):
                shape = tuple(v.shape)
                if mode == "int4":
                    shape = getattr(layer, "original_kernel_shape", None) or (
                        (layer.input_dim, layer.output_dim) if name == "embeddings" else (shape[0], layer.units))
                logical[v.path] = math.prod(shape)
            elif name.endswith(("_scale", "_zero")) or name == "g_idx":
                logical[v.path] = 0
    total = sum(logical.get(v.path, math.prod(v.shape)) for v in causal_lm.weights)
    trainable = sum(math.prod(v.shape) for v in causal_lm.trainable_weights)
    return {"total": int(total), "trainable": int(trainable)}


def device_weight_bytes(causal_lm: Any) -> int:
    """Bytes of the model's weights (base, quantized or not, and adapters; no optimizer state)
    held by the most loaded device: what one card holds of the model itself."""
    per_device: dict[Any, int] = {}
    for v in causal_lm.weights:
        for shard in v.value.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + int(shard.data.nbytes)
    return max(per_device.values(), default=0)
