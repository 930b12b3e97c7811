"""`gemma export` (merge LoRA, write HF / preset / GGUF; or the LoRA adapter for PEFT) and
`gemma upload`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gemma_cli.commands.common import DebugOpt, ForceOpt, JsonOpt, QuietOpt, boundary, make_output
from gemma_cli.errors import UsageError


def export(
    out_dir: Annotated[
        str, typer.Option("--out", "-o", help="Directory to write (a FILE.gguf for --format gguf).",
                          show_default=False)],
    source: Annotated[
        str | None,
        typer.Argument(
            help="A fine-tune run directory (its latest checkpoint), a keras-hub preset, or a run "
            "config (its preset). Omitted: $GEMMA_CONFIG, ./gemma.yaml (or the run it trained), "
            "else the most recent run under runs/ with a checkpoint.",
            show_default=False,
            metavar="RUN|PRESET|CONFIG",
        ),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="hf (safetensors for transformers), preset (keras-hub), "
                          "gguf (llama.cpp / Ollama) or peft (a run's LoRA adapter alone).")
    ] = "hf",
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="GGUF matrix type: f32, f16, bf16 or q8_0 (--format gguf; "
                                 "default f16).", show_default=False)
    ] = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Merge LoRA into the kernels and write a Hugging Face model, a keras-hub preset or a GGUF
    file (llama.cpp, Ollama); or write a run's LoRA adapter alone in PEFT's format.

    Examples:

      gemma export runs/gemma3_270m_demo --format hf --out exported/gemma3_270m_hf

      gemma export runs/gemma3_270m_demo --format gguf --dtype q8_0 --out exported/demo.q8_0.gguf

      gemma export runs/gemma3_270m_demo --format peft --out exported/demo_adapter

      gemma export --out exported/latest   (the most recent run under runs/)
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        from gemma_cli.engine.formats import export as ex

        if fmt not in ex.FORMATS:
            raise UsageError(f"--format {fmt}: unknown format", f"choose one of: {', '.join(ex.FORMATS)}")
        from gemma_cli import targets

        tgt = targets.resolve(source, [], verb="export", log=out)
        from gemma_cli import preflight

        preflight.require(preflight.target(tgt) + preflight.output(out_dir, "--out", force=force, file=fmt == "gguf"))
        summary = {
            **ex.export(tgt.config, tgt.checkpoint, out_dir, fmt, dtype=dtype, log=out, force=force,
                        source=tgt.source),
            "checkpoint": str(tgt.checkpoint) if tgt.checkpoint else None,
            "chosen_because": tgt.chosen_because,
        }
        out.result(summary, human=lambda c: c.print(_export_line(summary), markup=False))


def _export_line(s: dict[str, Any]) -> str:
    if s["format"] == "peft":
        return (f"{s['out']}: PEFT LoRA adapter of {s['backbone']}, {s['modules']} modules "
                f"({', '.join(s['target_modules'])}), {s['params']:,} params ({s['seconds']:.1f} s)")
    what = f"{s['format']} export of {s['backbone']}"
    if s["format"] == "gguf":
        what = f"GGUF {s['dtype']} ({s['architecture']}, {s['bytes'] / 2**20:.1f} MiB) of {s['backbone']}"
    return (f"{s['out']}: {what}, {s['params']:,} params, {s['lora_merged']} LoRA kernels merged "
            f"({s['seconds']:.1f} s)")


def upload(
    directory: Annotated[str, typer.Argument(help="A keras-hub preset directory.", show_default=False,
                                             metavar="DIR")],
    uri: Annotated[
        str, typer.Argument(help="kaggle://USER/MODEL/keras/VARIATION or hf://USER/MODEL", show_default=False)
    ],
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Upload a preset directory to Kaggle Models or the Hugging Face Hub.

    Example: gemma upload exported/gemma3_270m_preset hf://me/gemma3-270m-imdb
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        from gemma_cli.engine.formats import export as ex

        summary = ex.upload(directory, uri, log=out)
        out.result(summary, human=lambda c: c.print(f"uploaded {summary['dir']} → {summary['uri']}", markup=False))
