"""`gemma export` (merge LoRA, write HF / preset) and `gemma upload`."""

from __future__ import annotations

from typing import Annotated

import typer

from gemma_cli.commands.common import DebugOpt, ForceOpt, JsonOpt, QuietOpt, boundary, make_output
from gemma_cli.errors import UsageError


def export(
    out_dir: Annotated[str, typer.Option("--out", "-o", help="Directory to write.", show_default=False)],
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
        str, typer.Option("--format", "-f", help="hf (safetensors for transformers) or preset (keras-hub).")
    ] = "hf",
    force: ForceOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Merge LoRA into the kernels and write a Hugging Face model or a keras-hub preset.

    Examples:

      gemma export runs/gemma3_270m_demo --format hf --out exported/gemma3_270m_hf

      gemma export --out exported/latest   (the most recent run under runs/)
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        from gemma_cli.engine import export as ex

        if fmt not in ex.FORMATS:
            raise UsageError(f"--format {fmt}: unknown format", f"choose one of: {', '.join(ex.FORMATS)}")
        from gemma_cli import targets

        tgt = targets.resolve(source, [], verb="export", log=out)
        summary = {
            **ex.export(tgt.config, tgt.checkpoint, out_dir, fmt, log=out, force=force, source=tgt.source),
            "checkpoint": str(tgt.checkpoint) if tgt.checkpoint else None,
            "chosen_because": tgt.chosen_because,
        }
        out.result(
            summary,
            human=lambda c: c.print(
                f"{summary['out']}: {summary['format']} export of {summary['backbone']}, "
                f"{summary['params']:,} params, {summary['lora_merged']} LoRA kernels merged "
                f"({summary['seconds']:.1f} s)", markup=False),
        )


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
        from gemma_cli.engine import export as ex

        summary = ex.upload(directory, uri, log=out)
        out.result(summary, human=lambda c: c.print(f"uploaded {summary['dir']} → {summary['uri']}", markup=False))
