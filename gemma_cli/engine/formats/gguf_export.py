"""keras-hub Gemma → one GGUF file for llama.cpp, Ollama and transformers' GGUF loader.

`export_gguf(causal_lm, out, dtype)` merges LoRA into the kernels (`model.lora.merge_lora`), maps
every backbone variable to llama.cpp's tensor name and layout and writes the `{arch}.*`
hyper-parameters, the SentencePiece vocabulary (pieces, scores, token types, bos/eos/unk/pad)
and the chat template, all through the model family's GGUF mapping
(`engine/families/gemma_gguf.py`, the table `gemma convert gguf` reads back with). Families
without one (Llama 3, Gemma 4, ...) are refused in one line. Tensor types follow llama.cpp's `convert_hf_to_gguf.py`:
1-D tensors (norms) stay F32; matrices take `--dtype` (`f32`, `f16`, `bf16` or `q8_0`, quantized
with `gguf.quants.quantize`); a matrix whose rows do not split into Q8_0 blocks of 32 falls
back to F16, as llama.cpp's converter does.

Tensors are computed and written one at a time (peak memory: the model plus one tensor) into
a temporary sibling of `out`, which is renamed over `out` only when complete
(`files.atomic_file`): a failure or Ctrl-C leaves no partial file.

Example:
    >>> from gemma_cli.engine.formats.gguf_export import export_gguf
    >>> export_gguf(causal_lm, "exported/gemma3_270m.gguf", "q8_0", name="gemma3_270m")
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gemma_cli.engine import families
from gemma_cli.engine.core.files import atomic_file
from gemma_cli.engine.core.report import NullReporter
from gemma_cli.errors import RuntimeFailure, UsageError

DTYPES = ("f32", "f16", "bf16", "q8_0")
DEFAULT_DTYPE = "f16"  # llama.cpp's convert_hf_to_gguf.py default --outtype


def check_gguf_out(out: str | Path, force: bool = False) -> Path:
    """The output file path, or a UsageError when it cannot or must not be written."""
    p = Path(out).expanduser()
    if p.is_dir():
        raise UsageError(f"{p}: is a directory; --format gguf writes one file", "give --out FILE.gguf")
    if p.exists() and not force:
        raise UsageError(f"{p}: exists", "pass --force to replace it or choose another --out")
    if p.suffix != ".gguf":
        raise UsageError(f"{p}: a GGUF file name should end in .gguf", f"e.g. --out {p.with_suffix('.gguf')}")
    return p


def mapping_for(class_name: str) -> Any:
    """The GGUF mapping of a backbone class's family, or a one-line UsageError."""
    fam = families.for_backbone(class_name)
    if fam is None or fam.gguf_module is None:
        hint = ((fam.gguf_hint if fam is not None else None)
                or f"gemma export writes GGUF for {', '.join(families.gguf_architectures())} models")
        raise UsageError(f"--format gguf: {class_name} is not supported", hint)
    return families.gguf_mapping(fam)


def check_family(preset: str) -> None:
    """Refuse what GGUF cannot hold from the preset's config, before any weight is loaded."""
    from gemma_cli.engine.model.load import backbone_class, backbone_config

    try:
        cfg = backbone_config(str(preset))
    except Exception:
        return  # loading the model reports this in its own words
    cls = backbone_class(cfg)
    mapping_for(cls).gguf_arch_of(cls, dict(cfg.get("config", {})))


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: not a GGUF export type", f"choose one of: {', '.join(DTYPES)}")
    return dtype


def _types(gguf: Any, dtype: str) -> tuple[Any, Any]:
    q, f = gguf.GGMLQuantizationType, gguf.LlamaFileType
    return {
        "f32": (q.F32, f.ALL_F32),
        "f16": (q.F16, f.MOSTLY_F16),
        "bf16": (q.BF16, f.MOSTLY_BF16),
        "q8_0": (q.Q8_0, f.MOSTLY_Q8_0),
    }[dtype]


def tensor_type(gguf: Any, name: str, shape: tuple[int, ...], dtype: str) -> Any:
    """The GGML type llama.cpp's converter gives this tensor under `--outtype dtype`."""
    q = gguf.GGMLQuantizationType
    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return q.F32
    qtype = _types(gguf, dtype)[0]
    if qtype == q.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0] != 0:
        return q.F16  # llama.cpp: QuantError → "falling back to F16"
    return qtype


def _encode(gguf: Any, array: Any, qtype: Any) -> Any:
    import numpy as np

    q = gguf.GGMLQuantizationType
    if qtype == q.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == q.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


def _nbytes(gguf: Any, shape: tuple[int, ...], qtype: Any) -> tuple[tuple[int, ...], Any, int]:
    """(shape to declare, numpy dtype to declare, bytes) for `add_tensor_info`."""
    import numpy as np

    q = gguf.GGMLQuantizationType
    if qtype in (q.F32, q.F16):
        np_dtype = np.float32 if qtype == q.F32 else np.float16
        return shape, np_dtype, int(np.prod(shape)) * np.dtype(np_dtype).itemsize
    byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, qtype)
    return byte_shape, np.uint8, int(np.prod(byte_shape))


def _tokenizer_proto(causal_lm: Any) -> tuple[Any, bytes]:
    pre = getattr(causal_lm, "preprocessor", None)
    tok = getattr(pre, "tokenizer", None)
    proto = getattr(tok, "proto", None)
    if tok is None or proto is None:
        raise UsageError("--format gguf: the model has no SentencePiece tokenizer to write",
                         "export a preset or run whose preset has a tokenizer")
    if isinstance(proto, str):
        proto = Path(proto).read_bytes()
    return tok, bytes(proto)


def export_gguf(causal_lm: Any, out: str | Path, dtype: str = DEFAULT_DTYPE, *, name: str | None = None,
                log: Any = None, force: bool = False) -> dict[str, Any]:
    """Merge LoRA and write `causal_lm` as one GGUF file.

    Args:
        causal_lm: a keras-hub `GemmaCausalLM` or `Gemma3CausalLM` with its preprocessor
            (LoRA-enabled or not).
        out: str | Path. The `.gguf` file to write; must not exist unless `force`.
        dtype: str. Matrix type: "f32", "f16", "bf16" or "q8_0". Defaults to "f16".
        name: str | None. `general.name` (e.g. the run or preset name).
        log: object with `.step` / `.info` / `.warn`. Defaults to silent.
        force: bool. Replace an existing `out`. Defaults to False.

    Returns:
        dict: out, format, dtype, architecture, backbone, params, tensors, tensor_types, bytes,
        lora_merged, seconds.
    """
    log = log or NullReporter()
    t0 = time.monotonic()
    check_dtype(dtype)
    out = check_gguf_out(out, force)
    try:
        import gguf
    except ImportError:
        raise UsageError("--format gguf needs the `gguf` package", "pip install 'gemma-cli[gguf]'") from None
    from gemma_cli.engine.core import runtime

    runtime.setup()
    import keras
    import numpy as np

    from gemma_cli.engine.model.lora import merge_lora

    backbone = causal_lm.backbone
    mapping = mapping_for(type(backbone).__name__)
    arch = mapping.gguf_arch(backbone)
    tok, proto = _tokenizer_proto(causal_lm)

    def tid(attr: str) -> int | None:
        v = getattr(tok, attr, None)
        return int(v) if v is not None else None

    vocab = mapping.vocab_from_proto(proto, bos_id=tid("start_token_id"), eos_id=tid("end_token_id"),
                             pad_id=tid("pad_token_id"))
    causal_lm, n_merged = merge_lora(causal_lm, log=log)
    backbone = causal_lm.backbone
    if getattr(backbone, "vision_encoder", None) is not None:
        log.warn("the vision encoder is not exported: llama.cpp keeps it in a separate mmproj file")
    table = mapping.tensor_table(backbone, arch)
    n_vocab, n_rows = len(vocab.tokens), int(backbone.vocabulary_size)
    if n_rows < n_vocab:
        raise UsageError(f"--format gguf: the embedding has {n_rows} rows for {n_vocab} tokens")

    def value(t: Any) -> Any:
        arr = t.to_gguf(keras.ops.convert_to_numpy(t.variable).astype(np.float32))
        if t.name == "token_embd.weight" and n_rows > n_vocab:
            arr = arr[:n_vocab]  # llama.cpp drops padding rows beyond the vocabulary
        return arr

    def shape_of(t: Any) -> tuple[int, ...]:
        # layouts only reshape/transpose: run them on a zero-stride view to get the shape
        shape = t.to_gguf(np.broadcast_to(np.float32(0), tuple(t.variable.shape))).shape
        shape = (n_vocab, *shape[1:]) if t.name == "token_embd.weight" else shape
        return tuple(int(d) for d in shape)

    plan = []
    for t in table:
        shape = shape_of(t)
        qtype = tensor_type(gguf, t.name, shape, dtype)
        plan.append((t, shape, qtype, _nbytes(gguf, shape, qtype)))
    counts: dict[str, int] = {}
    for _, _, qtype, _ in plan:
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    params = int(sum(int(np.prod(shape)) for _, shape, _, _ in plan))
    label = name or arch
    log.step(f"Writing {arch} GGUF ({dtype}, {len(plan)} tensors, {params:,} params) to {out} ...")

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(path=None, arch=arch)
        try:
            writer.add_type(gguf.GGUFType.MODEL)
            writer.add_name(label)
            writer.add_size_label(gguf.size_label(params, 0, 0, 0))  # as llama.cpp computes it
            mapping.write_hparams(writer, backbone, arch)
            writer.add_file_type(_types(gguf, dtype)[1])
            mapping.write_tokenizer(writer, vocab, arch)
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            for t, _, qtype, (decl_shape, np_dtype, nbytes) in plan:
                writer.add_tensor_info(t.name, decl_shape, np.dtype(np_dtype), nbytes,
                                       raw_dtype=None if np_dtype is not np.uint8 else qtype)
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for t, _, qtype, (_, _, nbytes) in plan:
                data = _encode(gguf, value(t), qtype)
                if data.nbytes != nbytes:
                    raise RuntimeFailure(f"internal: {t.name} encodes to {data.nbytes} bytes, planned {nbytes}")
                writer.write_tensor_data(data)
        finally:
            writer.close()

    atomic_file(out, write)
    size = out.stat().st_size
    seconds = round(time.monotonic() - t0, 2)
    log.info(f"Wrote {out} ({size / 2**20:.1f} MiB, {dtype}, {n_merged} LoRA kernels merged) in {seconds:.1f} s")
    return {
        "out": str(out),
        "format": "gguf",
        "dtype": dtype,
        "architecture": arch,
        "backbone": type(backbone).__name__,
        "params": params,
        "tensors": len(plan),
        "tensor_types": counts,
        "bytes": size,
        "lora_merged": n_merged,
        "seconds": seconds,
    }
