"""Export a preset or a fine-tune run: merge LoRA into the kernels, then write HF, a preset or
GGUF (`export_gguf`); or write the LoRA adapter alone for PEFT (`export_peft`).

- the model comes from the one run loader (`engine/model/runs.py`): a preset, or a fine-tune run's
  preset + LoRA adapter + checkpoint (the CLI resolves what the user named, `targets.py`).
- `model.lora.merge_lora(causal_lm)`: for every LoRA-enabled Dense/EinsumDense,
  `kernel + (lora_alpha / lora_rank) * (lora_kernel_a @ lora_kernel_b)` — the exact formula of
  keras 3's `Dense.kernel` / `EinsumDense.kernel` — computed in float32, then copied into a
  fresh backbone built from the same config without LoRA (so nothing downstream, neither
  `save_to_preset` nor the HF exporter, can see or re-add an adapter).
- `export(cfg, checkpoint, out, fmt)`: `--format hf` → `CausalLM.export_to_transformers`, then
  `fix_hf_export` (bos/eos ids from the tokenizer, the family's chat template in
  tokenizer_config.json, and the family's fix-ups for what keras-hub's exporter writes wrong:
  `Family.hf_export_fixup` / `hf_export_weights`); `--format preset` → `save_to_preset`,
  `--format gguf` → `export_gguf.export_gguf` (one file), `--format peft` →
  `export_peft.export_peft`; written atomically into a temporary sibling, then renamed.
- `upload(dir, uri)`: `keras_hub.upload_preset` after a credentials check (no network).

Example:
    >>> from gemma_cli.engine.formats.export import export
    >>> t = targets.resolve("runs/gemma3_270m_demo", verb="export")
    >>> export(t.config, t.checkpoint, "exported/hf", fmt="hf", log=out)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gemma_cli.engine.core.files import atomic_dir
from gemma_cli.engine.core.report import NullReporter
from gemma_cli.engine.model import lora
from gemma_cli.errors import RuntimeFailure, UsageError

FORMATS = ("hf", "preset", "gguf", "peft")


def _setup() -> None:
    from gemma_cli.engine.core import runtime

    runtime.setup()


def fix_hf_export(causal_lm: Any, out: Path) -> list[str]:
    """Correct what keras-hub's `export_to_transformers` wrote into `out`; returns what changed.

    For every family: `bos_token_id` / `eos_token_id` / `pad_token_id` in config.json (and its
    `text_config`) are the ids of the tokenizer's special tokens; tokenizer_config.json gets the family's chat template.
    Then the family's own fix-ups (`Family.hf_export_fixup` edits config.json and
    tokenizer_config.json, `Family.hf_export_weights` replaces model.safetensors).
    """
    from gemma_cli.engine import families

    backbone = causal_lm.backbone
    fam = families.for_backbone(type(backbone).__name__)
    cfg_path, tok_path = out / "config.json", out / "tokenizer_config.json"
    config = json.loads(cfg_path.read_text())
    tok_cfg = json.loads(tok_path.read_text()) if tok_path.is_file() else {}
    before = json.dumps([config, tok_cfg], sort_keys=True)
    changed: list[str] = []
    tokenizer = causal_lm.preprocessor.tokenizer if causal_lm.preprocessor is not None else None
    ids = {}
    if tokenizer is not None:
        # (Llama 3's keras-hub tokenizer has pad_token_id 0 without a pad token: left out)
        for key, token in (("bos_token_id", "start_token"), ("eos_token_id", "end_token"), ("pad_token_id", "pad_token")):
            if getattr(tokenizer, token, None) is not None:
                ids[key] = int(getattr(tokenizer, f"{token}_id"))
    for section in (config, config.get("text_config")):
        if isinstance(section, dict):
            section.update(ids)
    if fam is not None:
        template = fam.chat_template()
        if template is not None and tok_path.is_file():
            tok_cfg["chat_template"] = template
        if fam.hf_export_fixup is not None:
            fam.hf_export_fixup(backbone, config, tok_cfg)
        if fam.hf_export_vision is not None:
            fam.hf_export_vision(causal_lm, config, tok_cfg)
        if template is not None and getattr(backbone, "vision_encoder", None) is not None:
            (out / "chat_template.jinja").write_text(template)  # what transformers' processor reads
            changed.append("chat_template.jinja")
        for name, text in (fam.hf_export_files(causal_lm) if fam.hf_export_files is not None else {}).items():
            (out / name).write_text(text)
            changed.append(name)
        if fam.hf_export_weights is not None:
            from safetensors.numpy import save_file

            save_file(fam.hf_export_weights(backbone), str(out / "model.safetensors"), metadata={"format": "pt"})
            changed.append("model.safetensors")
    if json.dumps([config, tok_cfg], sort_keys=True) != before:
        cfg_path.write_text(json.dumps(config, indent=2))
        if tok_cfg:
            tok_path.write_text(json.dumps(tok_cfg, indent=2))
        changed += ["config.json", "tokenizer_config.json"] if tok_cfg else ["config.json"]
    return changed


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"{out}: exists and is not a directory", "choose another --out")
        if any(out.iterdir()) and not force:
            raise UsageError(f"{out}: exists and is not empty", "pass --force to replace it or choose another --out")


def export(
    cfg: Any, checkpoint: Path | None, out: str | Path, fmt: str = "hf", *, dtype: str | None = None,
    log: Any = None, force: bool = False, source: str | None = None,
) -> dict[str, Any]:
    """Load the model of `cfg` (+ `checkpoint`), write `out` in `fmt`. Returns a summary.

    Args:
        cfg: RunConfig. The preset and, for a fine-tune run, its LoRA settings.
        checkpoint: Path | None. The run's checkpoint to load (None: the preset as it is).
        out: str | Path. Directory to write (a `.gguf` file for "gguf"); must not exist (or be
            an empty directory) unless `force`.
        fmt: str. "hf" (safetensors + config for `transformers`), "preset" (keras-hub), "gguf"
            (one file for llama.cpp / Ollama) — these three merge LoRA into the kernels — or
            "peft" (the run's LoRA adapter alone). Defaults to "hf".
        dtype: str | None. GGUF matrix type ("f32", "f16", "bf16", "q8_0"); "gguf" only.
            Defaults to "f16".
        log: object with `.step` / `.info`. Defaults to silent.
        force: bool. Replace an existing `out`. Defaults to False.
        source: str | None. What the user named (reported back, and the GGUF's `general.name`).
    """
    from gemma_cli.engine.model import runs

    log = log or NullReporter()
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: unknown format", f"choose one of: {', '.join(FORMATS)}")
    if dtype is not None and fmt != "gguf":
        raise UsageError(f"--dtype {dtype}: applies to --format gguf only")
    t0 = time.monotonic()
    if fmt == "gguf":
        from gemma_cli.engine.formats import gguf_export as eg

        dtype = eg.check_dtype(dtype or eg.DEFAULT_DTYPE)
        eg.check_gguf_out(out, force)
        eg.check_family(cfg.model.preset)
    else:
        _prepare_out(Path(out).expanduser(), force)
    if fmt == "peft" and (checkpoint is None or not cfg.model.lora_rank):
        what = "is not a fine-tune run" if checkpoint is None else "is a full fine-tune"
        raise UsageError(f"--format peft: {source or cfg.model.preset} {what}, it has no LoRA adapter",
                         "export a LoRA fine-tune run directory, or use --format hf")
    _setup()
    log.step(f"Loading {source or cfg.model.preset} ...")
    t_load = time.monotonic()
    causal_lm = runs.load(cfg, checkpoint, reporter=log)
    load_seconds = round(time.monotonic() - t_load, 2)
    if fmt == "gguf":
        name = Path(str(source or cfg.model.preset).rstrip("/")).name
        summary = eg.export_gguf(causal_lm, out, dtype, name=name, log=log, force=force)
    elif fmt == "peft":
        from gemma_cli.engine.formats.peft import export_peft

        summary = export_peft(causal_lm, out, base=str(cfg.model.preset), log=log, force=force)
    else:
        summary = export_model(causal_lm, out, fmt, log=log, force=force)
    return {"source": source or cfg.model.preset, **summary, "load_seconds": load_seconds,
            "write_seconds": summary["seconds"], "seconds": round(time.monotonic() - t0, 2)}


def export_model(causal_lm: Any, out: str | Path, fmt: str = "hf", *, log: Any = None,
                 force: bool = False) -> dict[str, Any]:
    """Merge LoRA of an in-memory CausalLM and write it to `out` as "hf" or "preset"."""
    log = log or NullReporter()
    if fmt not in ("hf", "preset"):
        raise UsageError(f"--format {fmt}: unknown format", f"choose one of: {', '.join(FORMATS)}")
    t0 = time.monotonic()
    out = Path(out).expanduser()
    _prepare_out(out, force)
    causal_lm, n_merged = lora.merge_lora(causal_lm, log=log)
    backbone_cls = type(causal_lm.backbone).__name__
    if fmt == "hf":
        log.step(f"Exporting {backbone_cls} to Hugging Face format in {out} ...")

        from gemma_cli.engine import families

        fam = families.for_backbone(backbone_cls)

        def write(d: str) -> None:
            try:
                if fam is not None and fam.hf_export is not None:  # no keras-hub exporter (PaliGemma)
                    fam.hf_export(causal_lm, Path(d))
                else:
                    causal_lm.export_to_transformers(d)
            except ValueError as e:
                if "not implemented" in str(e):
                    raise UsageError(f"--format hf: keras-hub cannot export {backbone_cls} to transformers") from None
                raise
            fix_hf_export(causal_lm, Path(d))
    else:
        log.step(f"Saving keras-hub preset to {out} ...")

        def write(d: str) -> None:
            causal_lm.save_to_preset(d)

    atomic_dir(out, lambda tmp: write(str(tmp)))
    params = int(causal_lm.backbone.count_params())
    seconds = round(time.monotonic() - t0, 2)
    log.info(f"Exported {params:,} params ({n_merged} LoRA kernels merged) in {seconds:.1f} s → {out}")
    return {
        "out": str(out),
        "format": fmt,
        "backbone": backbone_cls,
        "params": params,
        "lora_merged": n_merged,
        "files": sorted(f.name for f in out.iterdir()),
        "seconds": seconds,
    }


def upload(directory: str, uri: str, *, log: Any = None) -> dict[str, Any]:
    """Upload a preset directory to `kaggle://user/model/keras/variation` or `hf://user/model`."""
    log = log or NullReporter()
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise UsageError(f"{d}: no such directory")
    if not (d / "config.json").is_file():
        raise UsageError(f"{d}: not a keras-hub preset (no config.json)",
                         "export one with `gemma export RUN --format preset --out DIR`")
    if uri.startswith("kaggle://"):
        service, name = "kaggle", "Kaggle"
    elif uri.startswith("hf://"):
        service, name = "hf", "Hugging Face"
    else:
        raise UsageError(f"{uri}: unknown destination", "use kaggle://USER/MODEL/keras/VARIATION or hf://USER/MODEL")
    if not uri.split("://", 1)[1].strip("/"):
        raise UsageError(f"{uri}: no model name after the scheme")
    from gemma_cli.engine.core import credentials

    if not credentials.credential(service).configured:
        raise UsageError(f"uploading to {name} needs credentials and none are configured",
                         f"run `gemma login {service}`")
    from gemma_cli.engine.core import remote

    # the upload's host answers, or one line now (not the library's retries)
    remote.require(service, f"uploading to {uri}", todo="upload later, where there is network")
    _setup()
    import keras_hub

    log.step(f"Uploading {d} to {uri} ...")
    t0 = time.monotonic()
    try:
        keras_hub.upload_preset(uri, str(d))
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"cannot upload {d} to {uri}: {e}") from None
    except Exception as e:
        raise RuntimeFailure(f"upload to {uri} failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
    return {"dir": str(d), "uri": uri, "seconds": round(time.monotonic() - t0, 2)}
