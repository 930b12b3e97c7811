"""`gemma init [--preset P] [--data PATH]`: a commented gemma.yaml for the machine it runs on.

The mesh comes from this machine's devices (jax, imported inside the command; the
`GEMMA_CPU_DEVICES` simulation applies) and from a plan of the preset on them: the widest
model axis the family's default layout divides evenly. The text is validated by the schema
before it is written, and an existing gemma.yaml is never overwritten.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from gemma_cli.commands.common import DebugOpt, JsonOpt, QuietOpt, boundary, make_output
from gemma_cli.errors import UsageError
from gemma_cli.targets import LOCAL_CONFIG

LOCAL_PRESET = "presets/gemma3_270m"  # what `make preset` converts, offline
REMOTE_PRESET = "gemma3_270m"
_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".txt": "txt"}


def _q(value: str) -> str:
    """A YAML scalar for any string (JSON strings are YAML)."""
    return json.dumps(value)


def data_lines(spec: str) -> list[str]:
    """The `data:` section's source lines for `--data`: a file or glob, or `tfds:NAME`.

    The first record of a local file decides the text: its `text` field, else a template over
    its first two string fields (`Instruction:\\n{instruction}\\n\\nResponse:\\n{response}`).
    """
    if spec.startswith("tfds:"):
        name = spec[len("tfds:") :]
        if not re.fullmatch(r"[a-z0-9_]+(/[\w.-]+)?(:[\w.]+)?", name):
            raise UsageError(f"--data {spec}: not a tfds dataset name (tfds:imdb_reviews)")
        return [
            _c(f"  name: {_q(name)}", "a tensorflow-datasets dataset"),
            "  split: train",
            _c("  field: text", "the feature holding the text"),
        ]
    matches = sorted(glob.glob(os.path.expanduser(spec)))
    if not matches:
        raise UsageError(f"--data {spec}: no such file", hint="give a .jsonl, .csv or .txt file (or a glob), or tfds:NAME")
    fmt = _FORMATS.get(Path(matches[0]).suffix.lower())
    if fmt is None:
        raise UsageError(f"--data {spec}: cannot tell the format from '{Path(matches[0]).suffix}'",
                         hint="use .jsonl, .csv or .txt")
    paths = f"  paths: [{_q(spec)}]"
    lines = [paths if len(matches) == 1 else _c(paths, f"{len(matches)} files")]
    fields = _fields(Path(matches[0]), fmt)
    if fmt == "txt" or "text" in fields:
        lines.append(_c("  field: text", "the field holding the text"))
    elif len(fields) >= 2:
        a, b = fields[0], fields[1]
        tpl = f"{a.capitalize()}:\n{{{a}}}\n\n{b.capitalize()}:\n{{{b}}}"
        lines.append(f"  template: {_q(tpl)}")
        lines.append(f"  # fields in {Path(matches[0]).name}: {', '.join(fields)}")
    elif len(fields) == 1:
        lines.append(f"  field: {_q(fields[0])}")
    else:
        raise UsageError(f"--data {spec}: the first record of {matches[0]} has no text field")
    return lines


def _fields(path: Path, fmt: str) -> list[str]:
    """The string fields of the file's first record (empty for plain text)."""
    try:
        with path.open(encoding="utf-8") as f:
            if fmt == "csv":
                return list(csv.DictReader(f).fieldnames or [])
            if fmt == "txt":
                return []
            for n, line in enumerate(f, 1):
                if line.strip():
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise UsageError(f"{path}:{n}: expected a JSON object per line")
                    return [k for k, v in rec.items() if isinstance(v, str)]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--data {path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    raise UsageError(f"--data {path}: no records")


def _c(line: str, comment: str) -> str:
    """`line` with `# comment` aligned at column 38."""
    return f"{line:<37} # {comment}"


def render(
    *,
    preset: str,
    devices: int,
    platform: str,
    mesh: tuple[int, int],
    mesh_notes: list[str],
    indivisible: str,
    data: list[str] | None,
) -> str:
    """The commented gemma.yaml text (plain string work; validated by the caller).

    Args:
        preset: str. `model.preset`.
        devices: int. Devices on this machine.
        platform: str. cpu | gpu | tpu (float32 on CPU, bfloat16 on accelerators).
        mesh: tuple[int, int]. Devices on the batch and the model axis.
        mesh_notes: list[str]. Why this mesh (comment lines written above it).
        indivisible: str. `layout.indivisible`.
        data: list[str] | None. The data section's source lines (`data_lines`), or None for a
            commented-out example.
    """
    precision = "float32" if platform == "cpu" else "bfloat16"
    b, m = mesh
    batch = b if b >= 2 else 2
    stem = Path(preset.split("://")[-1].rstrip("/")).name
    name = (re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "run") + "_lora"
    lines = [
        f"# gemma run config written by `gemma init` for this machine: {devices} {platform} device(s).",
        f"# Check:     gemma config validate        (./{LOCAL_CONFIG} is found without a path)",
        "# Sharding:  gemma inspect --layer decoder_block_1 --optimizer",
        f"# Train:     gemma finetune {LOCAL_CONFIG}",
        f"# Override:  gemma finetune {LOCAL_CONFIG} train.max_steps=10 optimizer.learning_rate=1e-4",
        "# Then:      gemma runs;  gemma generate -p \"...\"   (the run of this config, latest checkpoint)",
        _c(f"name: {name}", "runs go to runs/<name>"),
        "",
        "model:",
        f"  preset: {_q(preset)}",
        "  # a keras-hub name (gemma3_1b, gemma_7b_en), kaggle://..., hf://... or a preset directory",
        _c(f"  precision: {precision}", "float32 on CPU; bfloat16 on GPU/TPU"),
        "  lora:",
        _c("    rank: 4", "adapters on attention query and value; no `lora:` = full fine-tune"),
        "",
        "mesh:",
        f"  # {devices} device(s) here: {b} on the batch axis x {m} on the model axis.",
        *(f"  # {n}" for n in mesh_notes),
        f"  shape: [{b}, {m}]",
        "  axes: [batch, model]",
        "",
        "layout:",
        _c("  rules: default", "the family's layout; see it with `gemma inspect`"),
        _c(f"  indivisible: {indivisible}", "a dimension the mesh does not divide: "
           + ("stop with the fix" if indivisible == "error" else "replicate it and warn")),
        "",
    ]
    if data:
        lines += [
            "data:",
            *data,
            "  sequence_length: 128",
            _c(f"  batch_size: {batch}", f"global; a multiple of the batch axis ({b})"),
            _c("  # eval_holdout: 64", "hold out the first N records for an eval loss"),
        ]
    else:
        lines += [
            "# data:                               add the training data before `gemma finetune`",
            _c("#   paths: [data/train.jsonl]", ".jsonl/.csv/.txt files or globs (or name: <tfds>)"),
            "#   field: text",
            "#   sequence_length: 128",
            _c(f"#   batch_size: {batch}", f"global; a multiple of the batch axis ({b})"),
        ]
    lines += [
        "",
        "optimizer:",
        "  name: adamw",
        "  learning_rate: 1.0e-4",
        "  schedule: cosine",
        "  warmup_steps: 10",
        "",
        "train:",
        "  epochs: 1",
        _c("  # max_steps: 100", "stop after N optimizer steps (wins over epochs)"),
        "  checkpoint_every: 100",
        "  log_every: 10",
        "",
        "generate:",
        "  max_length: 128",
        "",
    ]
    return "\n".join(lines)


def _write_new(path: Path, text: str) -> None:
    """Write `path` whole, or not at all; never replace an existing file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, path)  # fails if `path` exists, even when it appeared meanwhile
    except FileExistsError:
        raise UsageError(f"{path}: already exists; nothing was written",
                         hint="edit it, or move it away to start over") from None
    finally:
        tmp.unlink()


def init(
    preset: Annotated[
        str | None,
        typer.Option("--preset", help=f"The model: a keras-hub name, kaggle://, hf:// or a preset dir. "
                     f"Defaults to {LOCAL_PRESET} when it exists here, else {REMOTE_PRESET}.",
                     show_default=False),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Training data: a .jsonl, .csv or .txt file (or a glob), or tfds:NAME.",
                     show_default=False),
    ] = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write a commented gemma.yaml for this machine: mesh from its devices, default layout, LoRA.

    The mesh is the widest model axis the preset's default layout divides evenly on this
    machine's devices (GEMMA_CPU_DEVICES=8 simulates 8). Validated before it is written; an
    existing gemma.yaml is never overwritten (exit 2). Every verb then finds it without a path.

    Examples:

      gemma init --data data/train.jsonl

      gemma init --preset gemma_7b_en --data tfds:imdb_reviews
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        target = Path(LOCAL_CONFIG)
        if target.exists():
            raise UsageError(f"{target}: already exists; nothing was written",
                             hint="edit it, or move it away to start over")
        if preset is None:
            preset = LOCAL_PRESET if (Path(LOCAL_PRESET) / "config.json").is_file() else REMOTE_PRESET
        section = data_lines(data) if data else None
        from gemma_cli.engine.plan import machine

        with out.status("Counting devices and planning the layout ..."):
            devices, platform = machine.describe()
            precision = "float32" if platform == "cpu" else "bfloat16"
            choice = machine.mesh_for(preset, devices, precision=precision, lora_rank=4)
        if not choice.planned:
            notes = [f"Not checked here: {choice.note}. Check it with `gemma inspect`."]
            out.warn(f"{preset}: {choice.note}")
        else:
            notes = [f"The widest model axis the default layout of {preset} divides evenly."
                     if choice.indivisible == "error" else (choice.note or "") + "."]
            if choice.tried:
                notes.append("Wider ones do not:")
                notes += [f"  {t.split(' from rule ')[0]}" for t in choice.tried]
        text = render(preset=preset, devices=devices, platform=platform, mesh=choice.shape,
                      mesh_notes=notes, indivisible=choice.indivisible, data=section)
        from gemma_cli.config import dump_config, parse_config

        cfg = parse_config(text, str(target))  # our own text: a problem here is a bug, exit 2 anyway
        _write_new(target, text)
        doc: dict[str, Any] = {
            "path": str(target),
            "devices": devices,
            "platform": platform,
            "mesh": list(choice.shape),
            "planned": choice.planned,
            "config": dump_config(cfg),
        }
        out.result(doc, human=lambda c: c.print(
            f"wrote {target}: {preset} with LoRA rank 4, mesh {list(choice.shape)} on {devices} "
            f"{platform} device(s)" + ("" if data else " (no data yet: add a data section)")
            + f"\nnext: gemma inspect --layer decoder_block_1   then   gemma finetune {target}",
            markup=False))
