"""Gemma ↔ GGUF (the `gemma` and `gemma3` families): one mapping, read in both directions.

`gemma convert gguf` (GGUF → keras-hub) and `gemma export --format gguf` (keras-hub → GGUF) both
use the tables here (through `families.gguf_mapping`), so that what one writes the other reads
back:

- `tensor_table(backbone)`: every GGUF tensor name with its keras variable and the two layout
  functions between them. Names are llama.cpp's (`gguf.TENSOR_NAMES`); numpy shapes are
  `(out, in)` as in a Hugging Face `nn.Linear` (GGUF lists the same dims reversed); Gemma's
  RMSNorm weights are stored `1 + w` (llama.cpp's converter adds 1, keras-hub keeps `w`).
- `write_hparams(writer, backbone)` / `backbone_config(get, arch, ...)`: the `{arch}.*` metadata,
  written with the same `GGUFWriter.add_*` calls, in the same cases, as llama.cpp's
  `convert_hf_to_gguf.py` (`GemmaModel`, `Gemma2Model`, `Gemma3Model`), and read back into a
  keras-hub backbone config.
- `vocab_from_proto(...)` / `sentencepiece_proto(...)`: `tokenizer.ggml.tokens/scores/token_type`
  from a SentencePiece model and back.
- `chat_template(arch)`: the Jinja chat template written as `tokenizer.chat_template`, generated
  from the family's `ChatFormat` (as the Hugging Face export's).

Architectures: keras-hub `GemmaBackbone` → `gemma` (Gemma 1) or `gemma2`; `Gemma3Backbone` →
`gemma3` (text decoder only); `KERAS_CLASSES` gives the keras-hub classes to rebuild each.
`gguf_arch(backbone)` names what llama.cpp cannot express in one line (exit 2): embedding
models, a Gemma 1/2 mix, non-standard query scaling or rope.

Example:
    >>> arch = gguf_arch(causal_lm.backbone)          # "gemma3"
    >>> for t in tensor_table(causal_lm.backbone):    # blk.0.attn_q.weight, ...
    ...     array = t.to_gguf(keras.ops.convert_to_numpy(t.variable))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gemma_cli.errors import RuntimeFailure, UsageError

ARCHITECTURES = ("gemma", "gemma2", "gemma3")
# GGUF architecture → keras-hub (backbone, tokenizer, preprocessor, task) class names.
KERAS_CLASSES: dict[str, tuple[str, str, str, str]] = {
    "gemma": ("GemmaBackbone", "GemmaTokenizer", "GemmaCausalLMPreprocessor", "GemmaCausalLM"),
    "gemma2": ("GemmaBackbone", "GemmaTokenizer", "GemmaCausalLMPreprocessor", "GemmaCausalLM"),
    "gemma3": ("Gemma3Backbone", "Gemma3Tokenizer", "Gemma3CausalLMPreprocessor", "Gemma3CausalLM"),
}

# llama.cpp picks the 27B query scaling (1/sqrt(hidden/heads) instead of 1/sqrt(head_dim)) by
# layer count: LLM_TYPE_27B is 46 layers for gemma2 and 62 for gemma3 (src/llama-model.cpp).
_LAYERS_27B = {"gemma2": 46, "gemma3": 62}

# Training context lengths of the published checkpoints (GGUF needs one; keras-hub has none).
_CONTEXT = {"gemma": 8192, "gemma2": 8192, "gemma3": 32768, "gemma3-long": 131072}

# SentencePiece piece types; llama.cpp's `tokenizer.ggml.token_type` uses the same numbers.
SP_NORMAL, SP_UNKNOWN, SP_CONTROL, SP_USER_DEFINED, SP_UNUSED, SP_BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"  # SentencePiece's escaped space "▁"

def chat_template(arch: str) -> str:
    """`tokenizer.chat_template` for `arch`: generated from the family's `ChatFormat`, the one
    contract of chat fine-tuning, `generate --chat` and the Hugging Face export, so llama.cpp
    prompts the exported model as it was trained (a system message folded into the first user
    turn, as Gemma's own templates do for Gemma 3; Gemma 1/2's refuse a system role)."""
    from gemma_cli.engine import families

    fam = families.for_gguf_arch(arch)
    template = fam.chat_template() if fam is not None else None
    if template is None:
        raise ValueError(f"no chat format for GGUF architecture {arch!r}")
    return template


@dataclass(frozen=True)
class TensorMap:
    """One GGUF tensor and the keras variable it holds.

    Args:
        name: str. llama.cpp's tensor name, e.g. `blk.0.attn_q.weight`.
        variable: keras.Variable. The backbone variable.
        to_keras: callable. numpy `(out, in)` GGUF layout → the variable's layout.
        to_gguf: callable. The variable's layout → numpy GGUF layout.
    """

    name: str
    variable: Any
    to_keras: Callable[[Any], Any]
    to_gguf: Callable[[Any], Any]


# ---- which architecture -------------------------------------------------------------------


def _cfg(backbone: Any) -> dict[str, Any]:
    return backbone.get_config()


def gguf_arch(backbone: Any) -> str:
    """llama.cpp's architecture name for a keras-hub backbone, or a UsageError saying why not."""
    return gguf_arch_of(type(backbone).__name__, _cfg(backbone))


def gguf_arch_of(cls: str, cfg: dict[str, Any]) -> str:
    """`gguf_arch` from a backbone's class name and config (checkable before loading weights).

    Checks every setting llama.cpp fixes per architecture (query scaling, rope, norms, soft
    caps, sliding-window pattern) so that a file we write computes what the keras model does.
    """
    if cls == "Gemma3Backbone":
        arch = "gemma3"
        if cfg.get("is_embedding_model") or cfg.get("use_bidirectional_attention"):
            raise UsageError("--format gguf: Gemma 3 embedding models are not supported",
                             "export a causal Gemma 3 (llama.cpp's `gemma-embedding` is a separate architecture)")
        if not (cfg.get("use_query_key_norm") and cfg.get("use_post_ffw_norm") and cfg.get("use_post_attention_norm")):
            raise UsageError("--format gguf: this Gemma3Backbone lacks query/key or post norms, "
                             "which llama.cpp's gemma3 always applies")
        if cfg.get("attention_logit_soft_cap"):
            raise UsageError("--format gguf: llama.cpp's gemma3 has no attention logit soft-capping, "
                             f"this model caps at {cfg['attention_logit_soft_cap']}")
        if float(cfg.get("local_rope_scaling_factor") or 1.0) != 1.0:
            raise UsageError("--format gguf: llama.cpp's gemma3 fixes the sliding layers' rope scale at 1, "
                             f"this model uses {cfg['local_rope_scaling_factor']}")
    elif cls == "GemmaBackbone":
        post = bool(cfg.get("use_post_ffw_norm")), bool(cfg.get("use_post_attention_norm"))
        caps = cfg.get("attention_logit_soft_cap"), cfg.get("final_logit_soft_cap")
        if post == (True, True) and all(caps) and cfg.get("use_sliding_window_attention"):
            arch = "gemma2"
        elif post == (False, False) and not any(caps) and not cfg.get("use_sliding_window_attention"):
            arch = "gemma"
        else:
            raise UsageError(
                "--format gguf: this GemmaBackbone mixes Gemma 1 and Gemma 2 settings (post norms, "
                "soft caps, sliding window), which neither llama.cpp architecture expresses")
    else:
        raise UsageError(f"--format gguf: {cls} is not a Gemma 1/2/3 backbone")
    layers, hidden, heads = int(cfg["num_layers"]), int(cfg["hidden_dim"]), int(cfg["num_query_heads"])
    normalize = bool(cfg.get("query_head_dim_normalize", True))
    is_27b = _LAYERS_27B.get(arch) == layers
    if normalize == is_27b and hidden // heads != int(cfg["head_dim"]):
        want = "hidden/heads" if is_27b else "head_dim"
        raise UsageError(
            f"--format gguf: llama.cpp scales {arch} queries by 1/sqrt({want}) for a {layers}-layer "
            f"model, this one by 1/sqrt({'head_dim' if normalize else 'hidden/heads'})")
    return arch


# ---- tensors ------------------------------------------------------------------------------


def _name(tensor: Any, bid: int | None = None) -> str:
    import gguf

    base = gguf.TENSOR_NAMES[tensor]
    return (base.format(bid=bid) if bid is not None else base) + ".weight"


def tensor_table(backbone: Any, arch: str | None = None) -> list[TensorMap]:
    """Every GGUF tensor of `backbone` (a LoRA-free Gemma/Gemma 2/Gemma 3 backbone), in order.

    Args:
        backbone: a keras-hub `GemmaBackbone` or `Gemma3Backbone` (built, without LoRA).
        arch: str | None. The GGUF architecture; defaults to `gguf_arch(backbone)`.
    """
    import gguf
    import numpy as np

    T = gguf.MODEL_TENSOR
    arch = arch or gguf_arch(backbone)
    hidden, hd = int(backbone.hidden_dim), int(backbone.head_dim)

    def norm_in(x):  # GGUF 1 + w → keras w
        return x - 1.0

    def norm_out(x):
        return x + 1.0

    def ident(x):
        return x

    def qkv(heads: int) -> tuple[Callable, Callable]:
        # GGUF (heads*head_dim, hidden) ↔ keras EinsumDense (heads, hidden, head_dim)
        return (lambda x: np.transpose(x.reshape(heads, hd, hidden), (0, 2, 1)),
                lambda k: np.transpose(k, (0, 2, 1)).reshape(heads * hd, hidden))

    nh = int(backbone.num_query_heads)
    # GGUF (hidden, heads*head_dim) ↔ keras (heads, head_dim, hidden)
    out_in = (lambda x: np.transpose(x.reshape(hidden, nh, hd), (1, 2, 0)),
              lambda k: np.transpose(k, (2, 0, 1)).reshape(hidden, nh * hd))
    t2 = (np.transpose, np.transpose)  # GGUF (out, in) ↔ keras Dense (in, out)
    norm, same = (norm_in, norm_out), (ident, ident)

    rows: list[tuple[str, Any, tuple[Callable, Callable]]] = [
        (_name(T.TOKEN_EMBD), backbone.get_layer("token_embedding").embeddings, same),
    ]
    for i in range(int(backbone.num_layers)):
        blk = backbone.get_layer(f"decoder_block_{i}")
        att = blk.attention
        for layer in (att.query_dense, att.key_dense, att.value_dense, att.output_dense,
                      blk.gating_ffw, blk.gating_ffw_2, blk.ffw_linear):
            if getattr(layer, "lora_enabled", False):
                raise RuntimeFailure(f"internal: {layer.path} still has LoRA; merge it before export")
        rows.append((_name(T.ATTN_NORM, i), blk.pre_attention_norm.scale, norm))
        rows.append((_name(T.ATTN_Q, i), att.query_dense.kernel, qkv(nh)))
        rows.append((_name(T.ATTN_K, i), att.key_dense.kernel, qkv(int(backbone.num_key_value_heads))))
        rows.append((_name(T.ATTN_V, i), att.value_dense.kernel, qkv(int(backbone.num_key_value_heads))))
        rows.append((_name(T.ATTN_OUT, i), att.output_dense.kernel, out_in))
        if arch == "gemma3":
            rows.append((_name(T.ATTN_Q_NORM, i), att.query_norm.scale, norm))
            rows.append((_name(T.ATTN_K_NORM, i), att.key_norm.scale, norm))
        if arch in ("gemma2", "gemma3"):
            rows.append((_name(T.ATTN_POST_NORM, i), blk.post_attention_norm.scale, norm))
            rows.append((_name(T.FFN_PRE_NORM, i), blk.pre_ffw_norm.scale, norm))
            rows.append((_name(T.FFN_POST_NORM, i), blk.post_ffw_norm.scale, norm))
        else:
            rows.append((_name(T.FFN_NORM, i), blk.pre_ffw_norm.scale, norm))
        rows.append((_name(T.FFN_GATE, i), blk.gating_ffw.kernel, t2))
        rows.append((_name(T.FFN_UP, i), blk.gating_ffw_2.kernel, t2))
        rows.append((_name(T.FFN_DOWN, i), blk.ffw_linear.kernel, t2))
    rows.append((_name(T.OUTPUT_NORM), backbone.get_layer("final_normalization").scale, norm))
    return [TensorMap(n, v, fns[0], fns[1]) for n, v, fns in rows]


# ---- hyper-parameters ---------------------------------------------------------------------


def context_length(backbone: Any, arch: str) -> int:
    """The training context llama.cpp reads as `{arch}.context_length` (keras-hub has none).

    Gemma 1/2: 8192. Gemma 3: 131072 for the long-context models (global rope scaled), else 32768.
    """
    if arch == "gemma3" and float(_cfg(backbone).get("global_rope_scaling_factor") or 1.0) > 1.0:
        return _CONTEXT["gemma3-long"]
    return _CONTEXT[arch]


def write_hparams(writer: Any, backbone: Any, arch: str) -> None:
    """Add the `{arch}.*` keys as llama.cpp's converter does for this architecture."""
    import gguf

    cfg = _cfg(backbone)
    ffn = int(cfg["intermediate_dim"])
    if arch in ("gemma", "gemma2"):
        ffn //= 2  # keras-hub's Gemma intermediate_dim counts gate and up together
    writer.add_context_length(context_length(backbone, arch))
    writer.add_embedding_length(int(cfg["hidden_dim"]))
    writer.add_block_count(int(cfg["num_layers"]))
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(int(cfg["num_query_heads"]))
    writer.add_layer_norm_rms_eps(float(cfg.get("layer_norm_epsilon", 1e-6)))
    writer.add_key_length(int(cfg["head_dim"]))
    writer.add_value_length(int(cfg["head_dim"]))
    if arch == "gemma3":
        writer.add_rope_freq_base(1_000_000.0)  # keras-hub Gemma 3's global layers
        factor = float(cfg.get("global_rope_scaling_factor") or 1.0)
        if factor != 1.0:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(factor)
        if cfg.get("final_logit_soft_cap"):
            writer.add_final_logit_softcapping(float(cfg["final_logit_soft_cap"]))
        if cfg.get("use_sliding_window_attention"):
            writer.add_sliding_window(int(cfg["sliding_window_size"]))
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(float(cfg["attention_logit_soft_cap"]))
        writer.add_final_logit_softcapping(float(cfg["final_logit_soft_cap"]))
        writer.add_sliding_window(int(cfg["sliding_window_size"]))
    writer.add_head_count_kv(int(cfg["num_key_value_heads"]))


def backbone_config(get: Callable[[str], Any], arch: str, n_vocab: int, where: str) -> dict[str, Any]:
    """A keras-hub backbone config from GGUF metadata (the inverse of `write_hparams`).

    Args:
        get: callable. `get(key)` → the value of a GGUF key, or None.
        arch: str. "gemma", "gemma2" or "gemma3".
        n_vocab: int. Number of tokens in `tokenizer.ggml.tokens`.
        where: str. The file, for error messages.
    """

    def need(key: str) -> Any:
        v = get(f"{arch}.{key}")
        if v is None:
            raise UsageError(f"{where}: GGUF metadata lacks {arch}.{key}")
        return v

    def opt(key: str, default: Any = None) -> Any:
        v = get(f"{arch}.{key}")
        return default if v is None else v

    num_layers = int(need("block_count"))
    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    head_dim = int(opt("attention.key_length", hidden // heads))
    value_dim = int(opt("attention.value_length", head_dim))
    if value_dim != head_dim:
        raise UsageError(f"{where}: key_length {head_dim} != value_length {value_dim} (unsupported)")
    sliding = opt("attention.sliding_window")
    common = dict(
        vocabulary_size=n_vocab,
        num_layers=num_layers,
        num_query_heads=heads,
        num_key_value_heads=int(opt("attention.head_count_kv", heads)),
        hidden_dim=hidden,
        head_dim=head_dim,
        # llama.cpp scales queries by 1/sqrt(head_dim) except for its 27B types
        query_head_dim_normalize=_LAYERS_27B.get(arch) != num_layers,
        layer_norm_epsilon=float(opt("attention.layer_norm_rms_epsilon", 1e-6)),
    )
    ffn = int(need("feed_forward_length"))
    if arch == "gemma":
        return {**common, "intermediate_dim": 2 * ffn}
    if arch == "gemma2":
        return {
            **common,
            "intermediate_dim": 2 * ffn,
            "use_post_ffw_norm": True,
            "use_post_attention_norm": True,
            "attention_logit_soft_cap": float(opt("attn_logit_softcapping", 50.0)),
            "final_logit_soft_cap": float(opt("final_logit_softcapping", 30.0)),
            "use_sliding_window_attention": True,
            "sliding_window_size": int(sliding) if sliding else 4096,
        }
    scaling_type = opt("rope.scaling.type")
    scaling_factor = opt("rope.scaling.factor")
    softcap = opt("final_logit_softcapping")
    return {
        **common,
        "intermediate_dim": ffn,
        "image_size": None,
        "use_query_key_norm": True,
        "use_post_ffw_norm": True,
        "use_post_attention_norm": True,
        "attention_logit_soft_cap": None,
        "final_logit_soft_cap": float(softcap) if softcap else None,
        "use_sliding_window_attention": bool(sliding),
        "sliding_window_size": int(sliding) if sliding else 4096,
        "local_rope_scaling_factor": 1.0,
        "global_rope_scaling_factor": (
            float(scaling_factor) if scaling_type == "linear" and scaling_factor else 1.0),
        "vision_encoder": None,
    }


# ---- tokenizer ----------------------------------------------------------------------------


def sentencepiece_proto(tokens: list[str], scores: list[float], types: list[int], unk_id: int,
                        bos_id: int, eos_id: int, pad_id: int, add_space_prefix: bool = False) -> bytes:
    """Serialize a SentencePiece BPE ModelProto equivalent to Gemma's tokenizer.model.

    BPE with byte fallback (when all 256 byte pieces exist), identity normalizer, a dummy
    prefix only with `add_space_prefix` (`tokenizer.ggml.add_space_prefix`; Gemma has none),
    whitespace escaped to `▁`. The unk piece gets the UNKNOWN type (llama.cpp marks it
    CONTROL, which SentencePiece rejects with "unk is not defined"); any other UNKNOWN piece
    becomes CONTROL. User-defined pieces get their `▁` back (see `_user_defined_to_gguf`).
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    m = sp_pb2.ModelProto()
    valid = {SP_NORMAL, SP_UNKNOWN, SP_CONTROL, SP_USER_DEFINED, SP_UNUSED, SP_BYTE}
    taken = set(tokens)
    for i, (tok, score, typ) in enumerate(zip(tokens, scores, types, strict=True)):
        p = m.pieces.add()
        if int(typ) == SP_USER_DEFINED and " " in tok and tok.replace(" ", _SPACE) not in taken:
            tok = tok.replace(" ", _SPACE)
        p.piece = tok
        p.score = float(score)
        typ = int(typ)
        if i == unk_id:
            typ = SP_UNKNOWN
        elif typ == SP_UNKNOWN:
            typ = SP_CONTROL
        elif typ not in valid:
            typ = SP_NORMAL
        p.type = typ
    t = m.trainer_spec
    t.model_type = sp_pb2.TrainerSpec.BPE
    t.vocab_size = len(tokens)
    # SentencePiece requires all 256 <0xNN> pieces for byte fallback (Gemma has them)
    t.byte_fallback = sum(1 for p in m.pieces if p.type == SP_BYTE) == 256
    t.unk_id, t.bos_id, t.eos_id, t.pad_id = unk_id, bos_id, eos_id, pad_id
    t.unk_piece, t.bos_piece, t.eos_piece, t.pad_piece = (
        tokens[unk_id], tokens[bos_id], tokens[eos_id], tokens[pad_id])
    n = m.normalizer_spec
    n.name = "identity"
    n.add_dummy_prefix = bool(add_space_prefix)
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    return m.SerializeToString()


@dataclass(frozen=True)
class Vocab:
    """`tokenizer.ggml.*` arrays and special ids of a SentencePiece model."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int
    add_space_prefix: bool = False


def _user_defined_to_gguf(piece: str) -> str:
    """llama.cpp matches user-defined tokens in the raw text, so its converter writes them with
    real spaces ("pre-normalize user-defined spaces": Gemma's whitespace-run pieces `▁▁` … become
    `"  "` …); SentencePiece matches them after escaping, so `sentencepiece_proto` puts `▁` back.
    """
    return piece.replace(_SPACE, " ")


def vocab_from_proto(proto: bytes, *, bos_id: int | None = None, eos_id: int | None = None,
                     pad_id: int | None = None) -> Vocab:
    """The inverse of `sentencepiece_proto`: pieces, scores and llama.cpp token types.

    Types are SentencePiece's, except that the four special pieces (pad, eos, bos, unk) are
    CONTROL, as llama.cpp's converter marks them for Gemma (their `tokenizer_config.json` lists
    them as special tokens). User-defined pieces are written with real spaces for `▁`
    (`_user_defined_to_gguf`).
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    m = sp_pb2.ModelProto()
    m.ParseFromString(proto)
    spec = m.trainer_spec
    tokens = [p.piece for p in m.pieces]
    index = {t: i for i, t in enumerate(tokens)}

    def special(given: int | None, spec_id: int, piece: str) -> int:
        if given is not None and given >= 0:
            return int(given)
        if 0 <= spec_id < len(tokens):
            return int(spec_id)
        if piece in index:
            return index[piece]
        raise UsageError(f"the tokenizer has no {piece} piece", "export a Gemma tokenizer")

    bos = special(bos_id, spec.bos_id, "<bos>")
    eos = special(eos_id, spec.eos_id, "<eos>")
    pad = special(pad_id, spec.pad_id, "<pad>")
    unk_candidates = [i for i, p in enumerate(m.pieces) if p.type == SP_UNKNOWN]
    unk = unk_candidates[0] if unk_candidates else special(None, spec.unk_id, "<unk>")
    types = [int(p.type) or SP_NORMAL for p in m.pieces]
    for i in (pad, eos, bos, unk):
        types[i] = SP_CONTROL
    tokens = [_user_defined_to_gguf(t) if ty == SP_USER_DEFINED else t for t, ty in zip(tokens, types, strict=True)]
    return Vocab(tokens=tokens, scores=[float(p.score) for p in m.pieces], types=types,
                 bos_id=bos, eos_id=eos, unk_id=unk, pad_id=pad,
                 add_space_prefix=bool(m.normalizer_spec.add_dummy_prefix))


def write_tokenizer(writer: Any, vocab: Vocab, arch: str) -> None:
    """Add `tokenizer.*` as llama.cpp's `_set_vocab_sentencepiece` does for Gemma, plus the
    chat template. `add_space_prefix` follows the SentencePiece model's dummy prefix (llama.cpp
    writes False for Gemma, whose tokenizer.model has none)."""
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_unk_token_id(vocab.unk_id)
    writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(vocab.add_space_prefix)  # False for Gemma's own tokenizers
    writer.add_chat_template(chat_template(arch))
