"""Packed rows that keep documents apart: segment-aware attention for keras-hub decoders.

keras-hub's causal-LM backbones take two inputs, `token_ids` and an int32 `padding_mask`
(1 = token, 0 = padding), and each decoder block turns the padding mask into a causal
(batch, query, key) attention mask. A packed row `A A A B B C C C 0 0` then lets B attend to A.
`enable_segment_attention(backbone)` makes the same `padding_mask` input carry *segment ids*
instead: 0 = padding, 1..k = the document each token belongs to. Every decoder block then
masks

    mask[b, i, j] = keras_hub_mask(seg != 0)[b, i, j] and (seg[b, i] == seg[b, j] or seg[b, i] == 0)

where `keras_hub_mask` is the block's own mask (causal, padding, sliding window, Gemma 3 image
tokens) computed by keras-hub from the 0/1 mask `seg != 0`, and the rotary position of each
token restarts at 0 at the first token of its document (as MaxText's `inputs_position` and
torchtune's packed `input_pos`). A document packed between others is therefore computed
exactly as it would be alone, up to float rounding of reductions over the longer row.

With a plain 0/1 mask whose padding is at the end of each row (keras-hub's preprocessors, the
engine's unpacked batches) mask and positions are exactly keras-hub's, so a model with segment
attention enabled serves ordinary batches unchanged. Padding *queries* (seg 0) keep keras-hub's
mask, their outputs are never used. Generation (the cached path, `cache is not None`) is left
to keras-hub untouched.

Contract for the data pipeline: the backbone's inputs keep their names, shapes and dtypes,

    {"token_ids": int32 [batch, length], "padding_mask": int32 [batch, length] segment ids}

each document's tokens contiguous, neighbouring documents with different ids (1..k per row in
order), 0 only for padding. Positions are derived from the segment ids inside the model (a
run of equal ids counts 0, 1, 2, ...), so a pipeline's own per-document positions need not
be fed; Gemma 4's backbone has a `position_ids` input of its own, which is used as given:
feed it the per-document positions (`segment_positions(segment_ids)`). The loss should skip
a position whose target is the first token of the next document:
`sample_weight[i] = seg[i + 1] != 0 and seg[i + 1] == seg[i]` on the `length + 1` row before
the shift. Enable it before the model's first `fit`/`predict`/`evaluate`: keras keeps the
step it traced.

How it hooks in: each decoder block (and the RotaryEmbedding of its attention) is given a
subclass of its own class (same class name, so keras' weight files are unchanged) that
overrides one method each, calling keras-hub's own code for everything else (no keras-hub
code is copied):

- the block's mask method (`_compute_attention_mask`, Llama's `_compute_self_attention_mask`)
  calls keras-hub's with `seg != 0`, ANDs in the same-segment term, and hands the per-document
  positions to the block's RotaryEmbedding for this call;
- the RotaryEmbedding's `call` uses those positions when the caller gave none (keras-hub calls
  it with `start_index` only).

`enable_segment_attention` checks the keras-hub methods it overrides (their names and the
names of their padding/cache arguments) and refuses with a clear error when an upgrade has
changed them; tests/test_segments.py checks the same and compares packed against unpacked
logits, so a silent change fails there.

Example:
    >>> causal_lm = keras_hub.models.Gemma3CausalLM.from_preset("gemma3_270m")
    >>> enable_segment_attention(causal_lm.backbone)
    >>> causal_lm({"token_ids": ids, "padding_mask": segment_ids})  # documents kept apart
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

from gemma_cli.errors import RuntimeFailure, UsageError


@dataclass(frozen=True)
class BlockHook:
    """Where the segment mask hooks into one keras-hub decoder block class.

    Args:
        mask_method: str. The block's method that returns the (batch, query, key) mask.
        padding_arg: str. That method's argument holding the (batch, length) padding mask.
        cache_arg: str. That method's argument holding the generation cache (None in training).
        attention_attr: str. The block's attribute holding its attention layer.
        rope_attr: str. The attention layer's attribute holding its RotaryEmbedding.
    """

    mask_method: str
    padding_arg: str
    cache_arg: str
    attention_attr: str
    rope_attr: str


_GEMMA_HOOK = BlockHook("_compute_attention_mask", "padding_mask", "cache", "attention", "rope_layer")
# keras-hub 0.32 decoder block classes (matched by name along the class's MRO).
HOOKS: dict[str, BlockHook] = {
    "GemmaDecoderBlock": _GEMMA_HOOK,  # Gemma 1 and 2
    "Gemma3DecoderBlock": _GEMMA_HOOK,
    "Gemma4TextDecoderBlock": _GEMMA_HOOK,  # RoPE positions come from its `position_ids` input
    "LlamaTransformerDecoder": BlockHook(
        "_compute_self_attention_mask",
        "decoder_padding_mask",
        "self_attention_cache",
        "_self_attention_layer",
        "rotary_embedding_layer",
    ),
}

_POSITIONS = "_gemma_segment_positions"  # per-call attribute on a RotaryEmbedding


def segment_positions(segment_ids: Any) -> Any:
    """Per-token positions that restart at 0 at each document of a packed row.

    A run of equal ids counts 0, 1, 2, ...; padding (id 0) keeps its index in the row, so a
    row of ones followed by zeros gets `arange(length)`, keras-hub's own positions.

    Args:
        segment_ids: int tensor (batch, length). 0 = padding, 1..k = document.

    Returns:
        int32 tensor (batch, length).

    Example:
        >>> np.asarray(segment_positions([[1, 1, 1, 2, 2, 3, 0, 0]]))
        array([[0, 1, 2, 0, 1, 0, 6, 7]], dtype=int32)
    """
    from keras import ops

    seg = ops.cast(segment_ids, "int32")
    # index in the row, without ops.arange so that symbolic (None-length) inputs work too
    index = ops.cumsum(ops.ones_like(seg), axis=1) - 1
    first = ops.concatenate([ops.ones_like(seg[:, :1], "bool"), ops.not_equal(seg[:, 1:], seg[:, :-1])], axis=1)
    start = ops.associative_scan(ops.maximum, ops.where(first, index, ops.zeros_like(index)), axis=1)
    return ops.where(ops.equal(seg, 0), index, index - start)


def same_segment(segment_ids: Any) -> Any:
    """bool (batch, query, key): the key is in the query's document, or the query is padding."""
    from keras import ops

    seg = ops.cast(segment_ids, "int32")
    return ops.logical_or(ops.equal(seg[:, :, None], seg[:, None, :]), ops.equal(seg[:, :, None], 0))


# ------------------------------------------------------------------------------ hooks ---
class _SegmentRope:
    """Mixin for a RotaryEmbedding: rotate at the positions its block set for this call."""

    def call(self, inputs: Any, start_index: Any = 0, positions: Any = None) -> Any:
        if positions is None:
            positions = self.__dict__.get(_POSITIONS)
        return super().call(inputs, start_index=start_index, positions=positions)


class _SegmentBlock:
    """Mixin for a decoder block: the keras-hub mask ANDed with the same-segment mask."""

    _segment_hook: BlockHook
    _segment_signature: inspect.Signature

    def _segment_rope(self) -> Any:
        return getattr(getattr(self, self._segment_hook.attention_attr), self._segment_hook.rope_attr)

    def _segment_mask(self, original: Any, *args: Any, **kwargs: Any) -> Any:
        from keras import ops

        hook = self._segment_hook
        bound = self._segment_signature.bind(*args, **kwargs)
        seg = bound.arguments.get(hook.padding_arg)
        rope = self._segment_rope()
        if seg is None or bound.arguments.get(hook.cache_arg) is not None:
            object.__setattr__(rope, _POSITIONS, None)  # generation: keras-hub as is
            return original(*args, **kwargs)
        seg = ops.cast(seg, "int32")
        bound.arguments[hook.padding_arg] = ops.cast(ops.not_equal(seg, 0), "int32")
        mask = original(*bound.args, **bound.kwargs)
        positions = segment_positions(seg) if self._segment_restart_positions else None
        object.__setattr__(rope, _POSITIONS, positions)
        return ops.where(same_segment(seg), mask, ops.zeros_like(mask))

    def call(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().call(*args, **kwargs)
        finally:  # positions are traced values of this call only
            object.__setattr__(self._segment_rope(), _POSITIONS, None)


@functools.cache
def _segment_class(cls: type, mixin: type, hook: BlockHook | None) -> type:
    """`cls` with `mixin` first in its MRO (made once per class)."""
    attrs: dict[str, Any] = {"__module__": __name__, "__doc__": f"{cls.__name__} with segment-aware attention."}
    if hook is not None:
        original = getattr(cls, hook.mask_method)

        def mask_method(self: Any, *args: Any, **kwargs: Any) -> Any:
            return self._segment_mask(functools.partial(original, self), *args, **kwargs)

        sig = inspect.signature(original)
        attrs.update(
            _segment_hook=hook,
            _segment_signature=sig.replace(parameters=list(sig.parameters.values())[1:]),
            **{hook.mask_method: mask_method},
        )
    # The same __name__ as keras-hub's class: keras' weight files name the layers of a list
    # (`transformer_layers`) by class name, so checkpoints stay interchangeable.
    attrs["__qualname__"] = cls.__qualname__
    return type(cls.__name__, (mixin, cls), attrs)


def _hook_for(block: Any) -> BlockHook | None:
    for klass in type(block).__mro__:
        if klass.__name__ in HOOKS:
            return HOOKS[klass.__name__]
    return None


def _check(block: Any, hook: BlockHook) -> None:
    """Refuse a keras-hub whose decoder API differs from the one the hooks were written for."""
    import keras_hub

    cls = type(block)
    method = getattr(cls, hook.mask_method, None)
    params = inspect.signature(method).parameters if callable(method) else {}
    attention = getattr(block, hook.attention_attr, None)
    rope = getattr(attention, hook.rope_attr, None)
    problems = []
    if not {hook.padding_arg, hook.cache_arg} <= set(params):
        problems.append(f"{cls.__name__}.{hook.mask_method}({hook.padding_arg}, {hook.cache_arg}, ...) not found")
    if not isinstance(rope, keras_hub.layers.RotaryEmbedding):
        problems.append(f"{cls.__name__}.{hook.attention_attr}.{hook.rope_attr} is not a keras_hub RotaryEmbedding")
    elif "positions" not in inspect.signature(type(rope).call).parameters:
        problems.append(f"{type(rope).__name__}.call takes no `positions`")
    if problems:
        raise RuntimeFailure(
            f"segment attention: keras-hub {keras_hub.__version__} changed the decoder API it hooks into: "
            + "; ".join(problems),
            hint="packing with documents kept apart was written for keras-hub 0.32; see gemma_cli/engine/patches/segments.py",
        )


def _blocks(backbone: Any) -> list[Any]:
    layers = getattr(backbone, "transformer_layers", None)
    if not layers:
        raise UsageError(f"segment attention: {type(backbone).__name__} has no decoder blocks (transformer_layers)")
    return list(layers)


def enable_segment_attention(backbone: Any, restart_positions: bool = True) -> Any:
    """Let `backbone`'s `padding_mask` input carry segment ids (0 = pad, 1..k = document).

    Changes the decoder blocks of this backbone instance only (no global state): its inputs,
    weights, weight files, layout and saved config stay as they were. Safe to call twice.
    Works before or after `enable_lora`, inside or outside a distribution scope, under `jit`.
    Call it before the model's first `fit`/`predict`/`evaluate` (keras keeps a traced step).

    Args:
        backbone: keras_hub Backbone. A built GemmaBackbone (Gemma 1/2), Gemma3Backbone,
            Gemma4Backbone or LlamaBackbone/Llama3Backbone (text decoders, not embedding models).
        restart_positions: bool. Rotary positions restart at 0 at each document. RoPE scores
            depend only on relative positions, so without the restart a packed document's
            logits still match, but its rotation angles are offset by its place in the row and
            carry that offset's rounding (in float32 ~1e-7 of the angle, in bfloat16 the
            cos/sin are rounded at other angles). Defaults to True.

    Returns:
        The same backbone.

    Raises:
        UsageError: the backbone is not a supported causal decoder.
        RuntimeFailure: the installed keras-hub's decoder API differs from the one hooked.
    """
    if getattr(backbone, "is_embedding_model", False) or getattr(backbone, "use_bidirectional_attention", False):
        raise UsageError(f"segment attention: {type(backbone).__name__} here is an embedding (bidirectional) model")
    blocks = _blocks(backbone)
    hooks = []
    for block in blocks:
        hook = _hook_for(block)
        if hook is None:
            raise UsageError(
                f"segment attention: {type(backbone).__name__}'s {type(block).__name__} is not supported",
                hint=f"supported decoder blocks: {', '.join(HOOKS)}",
            )
        if not isinstance(block, _SegmentBlock):
            _check(block, hook)
        hooks.append(hook)
    for block, hook in zip(blocks, hooks, strict=True):
        rope = getattr(getattr(block, hook.attention_attr), hook.rope_attr)
        if not isinstance(rope, _SegmentRope):
            rope.__class__ = _segment_class(type(rope), _SegmentRope, None)
        if not isinstance(block, _SegmentBlock):
            block.__class__ = _segment_class(type(block), _SegmentBlock, hook)
        object.__setattr__(block, "_segment_restart_positions", bool(restart_positions))
    return backbone


def disable_segment_attention(backbone: Any) -> Any:
    """Give `backbone`'s decoder blocks their keras-hub classes back (a 0/1 `padding_mask` again)."""
    for block in _blocks(backbone):
        if isinstance(block, _SegmentBlock):
            rope = block._segment_rope()
            if isinstance(rope, _SegmentRope):
                rope.__class__ = type(rope).__mro__[2]
            block.__class__ = type(block).__mro__[2]
    return backbone


def segment_attention_enabled(backbone: Any) -> bool:
    """True when every decoder block of `backbone` reads segment ids from `padding_mask`."""
    layers = getattr(backbone, "transformer_layers", None) or []
    return bool(layers) and all(isinstance(b, _SegmentBlock) for b in layers)
