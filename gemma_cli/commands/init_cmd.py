"""`gemma init [--preset P] [--data PATH]`: a commented gemma.yaml for the machine it runs on.

The mesh comes from this machine's devices (jax, imported inside the command; the
`GEMMA_CPU_DEVICES` simulation applies) and from a plan of the preset on them: the split
finetune takes for a config without mesh.shape (`engine/plan/machine.auto_mesh`: the lowest
estimated collective traffic among the splits whose memory plan fits). The text is validated by the schema
before it is written, and an existing gemma.yaml is never overwritten.
"""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from gemma_cli import defaults as D
from gemma_cli.commands.common import DebugOpt, JsonOpt, QuietOpt, boundary, make_output
from gemma_cli.errors import UsageError
from gemma_cli.targets import LOCAL_CONFIG

LOCAL_PRESET = "presets/gemma3_270m"  # what `make preset` converts, offline
REMOTE_PRESET = "gemma3_270m"


def _q(value: str) -> str:
    """A YAML scalar for any string (JSON strings are YAML)."""
    return json.dumps(value)


def data_lines(spec: str, preset: str | None = None) -> list[str]:
    """The `data:` section's lines for `--data`: a file or glob (.jsonl, .csv, .txt, .parquet),
    a dataset directory (save_to_disk output, a folder of Parquet/JSONL files), `hf://ORG/NAME`
    or `tfds:NAME`.

    The first record decides how it trains, as the data pipeline will read it:
    - chat (`messages`, ShareGPT `conversations`) and `prompt`/`completion` pairs:
      `format: chat` with the loss on the model's turns / the completion only;
    - a `text` field (or plain text lines): trained on in full;
    - other records: a template over their first two string fields, the loss on the second.
    `sequence_length` is the 95th percentile of the first 1,000 records' token counts (the
    preset's tokenizer when it is a local directory, else about 4 characters a token), rounded
    up to a multiple of 128 and at most the default, 1024.
    """
    if spec.startswith("tfds:"):
        name = spec[len("tfds:") :]
        if not re.fullmatch(r"[a-z0-9_]+(/[\w.-]+)?(:[\w.]+)?", name):
            raise UsageError(f"--data {spec}: not a tfds dataset name (tfds:imdb_reviews)")
        return [
            _c(f"  name: {_q(name)}", "a tensorflow-datasets dataset"),
            "  split: train",
            _c("  field: text", "the feature holding the text"),
            "  sequence_length: 128",
        ]
    from gemma_cli.engine.data import hf_datasets, sources

    if spec.startswith("hf://"):
        source = hf_datasets.open_hf(spec, "train", None, None, "--data", 1024)
        lines = [_c(f"  name: {_q(spec)}", "a Hugging Face dataset (its local cache, or the Hub)")]
    else:
        matches = sorted(glob.glob(os.path.expanduser(spec)))
        if not matches:
            raise UsageError(f"--data {spec}: no such file",
                             hint="give a .jsonl, .csv, .txt or .parquet file (or a glob), a dataset directory, hf://ORG/NAME or tfds:NAME")
        files = [m for m in matches if not Path(m).is_dir()]
        for f in files:
            if sources.EXTENSIONS.get(Path(f).suffix.lower()) is None:
                raise UsageError(f"--data {spec}: cannot tell the format from '{Path(f).suffix}'",
                                 hint="use .jsonl, .csv, .txt or .parquet")
        source = hf_datasets.open_paths([spec] if not files else files, None, "--data", 1024)
        paths = f"  paths: [{_q(spec)}]"
        lines = [paths if len(matches) == 1 else _c(paths, f"{len(matches)} files")]
    if len(source) == 0:
        raise UsageError(f"--data {spec}: no records")
    where, rec = source[0]
    lines += _record_lines(where, rec)
    lines.append(_sequence_line(source, lines, preset))
    return lines


def _record_lines(where: str, rec: dict[str, Any]) -> list[str]:
    from gemma_cli.engine.data.render import chat_style

    style = chat_style(rec, None)
    if "text" not in rec and style in ("messages", "conversations"):
        return [_c("  format: chat", f"conversations ({style}) in the model's turn format"),
                _c("  loss_on: assistant", "the model's turns carry the loss; user turns weigh 0")]
    if "text" not in rec and style == "pair":
        return [_c("  format: chat", "prompt/completion pairs as one user and one model turn"),
                _c("  loss_on: assistant", "the completion carries the loss, the prompt weighs 0")]
    fields = [k for k, v in rec.items() if isinstance(v, str)]
    if "text" in rec:
        return [_c("  field: text", "the field holding the text")]
    if len(fields) >= 2:
        a, b = fields[0], fields[1]
        tpl = f"{a.capitalize()}:\n{{{a}}}\n\n{b.capitalize()}:\n{{{b}}}"
        return [f"  template: {_q(tpl)}",
                _c(f"  response_field: {_q(b)}", f"{b} carries the loss; set loss_on: all to train on all"),
                f"  # fields in {where}: {', '.join(fields)}"]
    if len(fields) == 1:
        return [f"  field: {_q(fields[0])}"]
    raise UsageError(f"--data: the first record ({where}) has no text field; fields there: {sorted(rec)}")


def _sequence_line(source: Any, lines: list[str], preset: str | None) -> str:
    """`sequence_length:` from the 95th percentile of the first 1,000 records' lengths."""
    from types import SimpleNamespace

    from gemma_cli import defaults as D
    from gemma_cli.engine.data.render import Renderer

    def value(key: str) -> Any:
        for ln in lines:
            m = re.match(rf"  {key}: (.*?)(\s+#.*)?$", ln)
            if m:
                return json.loads(m.group(1)) if m.group(1).startswith('"') else m.group(1)
        return None

    cfg = SimpleNamespace(template=value("template"), format=value("format"), messages_field=None,
                          loss_on=value("loss_on"), field=value("field") or "text", response_field=value("response_field"))
    renderer = Renderer(cfg)
    count, how = _counter(preset)
    lengths = []
    for i in range(min(len(source), 1000)):
        where, rec = source[i]
        pieces = renderer(where, rec).pieces
        lengths.append(sum(1 if p.special else count(p.text) for p in pieces))
    lengths.sort()
    p95 = lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))]
    seq = min(max(128, -(-p95 // 128) * 128), D.SEQUENCE_LENGTH)
    return _c(f"  sequence_length: {seq}", f"95% of the first {len(lengths)} records fit ({p95} tokens, {how})")


def _counter(preset: str | None) -> tuple[Any, str]:
    """A token counter: the local preset's SentencePiece vocabulary, else ~4 characters a token."""
    if preset:
        for rel in ("assets/tokenizer/vocabulary.spm", "tokenizer.model"):
            f = Path(preset) / rel
            if f.is_file():
                try:
                    import sentencepiece as spm

                    sp = spm.SentencePieceProcessor(model_file=str(f))
                    return (lambda t, sp=sp: len(sp.encode(t))), "counted with the preset's tokenizer"
                except Exception:  # noqa: BLE001 — an estimate is enough here
                    break
    return (lambda t: -(-len(t) // 4)), "estimated at 4 characters a token"


def _c(line: str, comment: str) -> str:
    """`line` with `# comment` aligned at column 38."""
    return f"{line:<37} # {comment}"


def _why_lines(choice: Any) -> list[str]:
    """The auto mesh's reason as comment lines: the verdict, then one line per split considered."""
    if not choice.splits:
        return [choice.why]
    return [f"{choice.verdict}:", *(f"  {s}" for s in choice.splits)]


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
            _c(f"  batch_size: {batch}", f"global; a multiple of the batch axis ({b})"),
            _c("  # eval_holdout: 64", "hold out the first N records for an eval loss"),
        ]
    else:
        lines += [
            "# data:                               add the training data before `gemma finetune`",
            _c("#   paths: [data/train.jsonl]", "files, globs or a dataset directory (or name: hf://ORG/NAME)"),
            "#   field: text",
            f"#   sequence_length: {D.SEQUENCE_LENGTH}",
            _c(f"#   batch_size: {batch}", f"global; a multiple of the batch axis ({b})"),
        ]
    lines += [
        "",
        "# optimizer: the defaults (gemma_cli/defaults.py; `gemma config show` prints them all):",
        f"#   learning_rate: {D.LR_LORA:g} with LoRA, {D.LR_FULL:g} for a full fine-tune",
        f"#   schedule: {D.SCHEDULE}, warmup_ratio: {D.WARMUP_RATIO:g}",
        "",
        "train:",
        "  epochs: 1",
        _c("  # max_steps: 100", "stop after N optimizer steps (wins over epochs)"),
        "  checkpoint_every: 100",
        "  log_every: 10",
        _c("  report_to: [tensorboard]", "add wandb or mlflow (pip install 'gemma-cli[wandb]')"),
        "",
        "generate:",
        f"  max_new_tokens: {D.MAX_NEW_TOKENS}",
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
        typer.Option("--data", help="Training data: a .jsonl, .csv, .txt or .parquet file (or a glob), a dataset "
                     "directory (save_to_disk output), hf://ORG/NAME[:SUBSET][@SPLIT] or tfds:NAME. Chat and "
                     "prompt/completion records train on the answers only.",
                     show_default=False),
    ] = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write a commented gemma.yaml for this machine: mesh from its devices, default layout, LoRA.

    The mesh is the one finetune picks for a config without mesh.shape: of the splits of this
    machine's devices whose memory plan fits a device, the one whose train step sends the
    fewest collective bytes (GEMMA_CPU_DEVICES=8 simulates 8). Validated before it is written; an
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
        section = data_lines(data, preset) if data else None
        from gemma_cli.config import parse_config
        from gemma_cli.engine.plan import machine
        from gemma_cli.errors import RuntimeFailure

        with out.status("Counting devices and planning the layout ..."):
            devices, platform = machine.describe()
            # the rule finetune applies to a config without mesh.shape (machine.auto_mesh),
            # on this config with the batch axis free: its batch size follows the mesh
            draft = parse_config(render(preset=preset, devices=devices, platform=platform, mesh=(devices, 1),
                                        mesh_notes=[], indivisible="error", data=section), str(target))
            try:
                choice = machine.auto_mesh(draft, devices, machine.this_device_memory())
                planned, note = True, None
            except RuntimeFailure as e:  # the preset is remote and the network is not there
                choice = machine.AutoMesh((devices, 1), None, "", divides=True)
                planned, note = False, e.message
        if not planned:
            notes = [f"Not checked here: {note}. Check it with `gemma inspect`."]
            out.warn(f"{preset}: {note}")
        else:
            notes = _why_lines(choice)
        text = render(preset=preset, devices=devices, platform=platform, mesh=choice.shape, mesh_notes=notes,
                      indivisible="error" if choice.divides else "replicate", data=section)
        from gemma_cli.config import dump_config, parse_config

        cfg = parse_config(text, str(target))  # our own text: a problem here is a bug, exit 2 anyway
        _write_new(target, text)
        doc: dict[str, Any] = {
            "path": str(target),
            "devices": devices,
            "platform": platform,
            "mesh": list(choice.shape),
            "planned": planned,
            "config": dump_config(cfg),
        }
        out.result(doc, human=lambda c: c.print(
            f"wrote {target}: {preset} with LoRA rank 4, mesh {list(choice.shape)} on {devices} "
            f"{platform} device(s)" + ("" if data else " (no data yet: add a data section)")
            + f"\nnext: gemma inspect --layer decoder_block_1   then   gemma finetune {target}",
            markup=False))
