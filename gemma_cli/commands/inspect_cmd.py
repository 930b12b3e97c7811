"""`gemma inspect`: how a run config shards weights and optimizer state, before any TPU hour.

Plans any preset on any mesh without weights (the architecture is traced, nothing allocated);
`--live` builds the real distribution and reads the specs back from the arrays.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from gemma_cli.commands.common import (
    DebugOpt,
    JsonOpt,
    OverridesArg,
    QuietOpt,
    TargetArg,
    boundary,
    make_output,
)
from gemma_cli.errors import UsageError
from gemma_cli.output import human_bytes, human_count

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)


# Memory per chip, as engine/plan/memory.py's DEVICES (kept here so that parsing imports no engine).
DEVICE_NAMES = ("v4", "v5e", "v5p", "v6e", "a100-40", "a100-80", "h100", "h200")


def parse_size(text: str, option: str = "--device-memory") -> int:
    """`16GiB`, `16G`, `80GB`, `1024` (bytes) → bytes. Binary units for G/Gi alike."""
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"{option} {text!r}: expected a size such as 16GiB or 95G")
    unit = (m.group(2) or "b").lower().rstrip("b").rstrip("i")
    return int(float(m.group(1)) * 1024 ** {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit])


def parse_device(text: str) -> tuple[str, int | None]:
    """`--device`: a known chip (`v5e`, `h100`, ...) → (name, None: the engine knows its size),
    or a size (`24GiB`) → (the size as given, bytes)."""
    key = text.strip().lower()
    if key in DEVICE_NAMES:
        return key, None
    if _SIZE.match(text):
        return text.strip(), parse_size(text, "--device")
    import difflib

    close = difflib.get_close_matches(key, DEVICE_NAMES, n=1)
    hint = f"did you mean {close[0]}?" if close else f"known devices: {', '.join(DEVICE_NAMES)}; or a size such as 24GiB"
    raise UsageError(f"--device {text!r}: not a known device or a size", hint=hint)


def _spec(spec: list[Any]) -> str:
    inner = ", ".join(
        "None"
        if a is None
        else (f"({', '.join(repr(x) for x in a)})" if isinstance(a, list) else repr(a))
        for a in spec
    )
    return f"P({inner})"


def _shape(shape: list[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _rel(path: str, layer: str) -> str:
    return path[len(layer) + 1 :] if path.startswith(layer + "/") else path


def render(doc: dict[str, Any], console: Any) -> None:
    """Rich tables, one per selected layer, then the totals footer."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if not console.is_terminal:  # piped or redirected: whole rows, one per line
        console = Console(highlight=False, soft_wrap=True, width=max(console.width, 220))

    bad = {p["variable"]: p["level"] for p in doc["problems"] if p["variable"]}
    live = doc["model"]["mode"] == "live"
    m = doc["mesh"]
    mesh_txt = " × ".join(f"{a}={s}" for a, s in zip(m["axes"], m["shape"], strict=False))
    layers: dict[str, list[dict[str, Any]]] = {}
    for r in doc["variables"]:
        layers.setdefault(r["path"].split("/", 1)[0], []).append(r)
    opt_by_layer: dict[str, list[dict[str, Any]]] = {}
    for r in doc["optimizer_variables"]:
        opt_by_layer.setdefault(r["variable"].split("/", 1)[0], []).append(r)

    def add(t: Table, r: dict[str, Any], path: str, key: str) -> None:
        level = bad.get(r[key])
        style = "red" if level in ("error", "mismatch") else "yellow" if level == "warning" else None
        rule = r["rule"] if r["rule"] is not None else "— (no rule: replicated)"
        if r.get("note"):
            rule = f"{r['rule'] or '— (no rule)'}\n↳ {r['note']}"
        cells = [
            Text(path, style=style),
            _shape(r["shape"]),
            r["dtype"],
            Text(
                _spec(r["spec"]),
                style=style or ("dim" if all(a is None for a in r["spec"]) else None),
            ),
        ]
        if live:  # the plan next to what the arrays say
            ps = r.get("plan_spec")
            same = ps == r["spec"] or (ps is not None and level != "mismatch")  # size-1 axes split nothing
            cells.append(Text("= live" if same else (_spec(ps) if ps is not None else "— (not planned)"),
                              style="dim" if same else "red"))
        cells += [
            _shape(r["shard_shape"]),
            human_bytes(r["bytes_per_device"]),
            Text(rule, style="dim" if r["rule"] is None else None),
        ]
        t.add_row(*cells)

    cols = ["path", "shape", "dtype", "PartitionSpec", "shard/device", "bytes/device", "rule"]
    if live:
        cols.insert(4, "plan")
    for name in list(layers) + [n for n in opt_by_layer if n not in layers]:
        below = (
            f"; {doc['model']['optimizer']} state below the line" if opt_by_layer.get(name) else ""
        )
        t = Table(
            title=f"[bold]{name}[/]  [dim]({doc['model']['preset']} on mesh {mesh_txt}{below})[/]",
            title_justify="left",
        )
        for c in cols:
            t.add_column(
                c,
                justify="right" if c == "bytes/device" else "left",
                overflow="fold",
                no_wrap=c == "path",
            )
        for r in layers.get(name, []):
            add(t, r, _rel(r["path"], name), "path")
        if opt_by_layer.get(name):
            t.add_section()
            for r in opt_by_layer[name]:
                add(t, r, f"{_rel(r['variable'], name)} · {r['slot']}", "variable")
        console.print(t)
    if not layers and not opt_by_layer:
        console.print("[yellow]no variable matches the selection[/]")

    tot = doc["totals"]
    mdl = doc["model"]
    layout = f", layout {mdl['layout']}" if mdl.get("layout") else ""
    lines = [
        f"[bold]{mdl['preset']}[/] ({mdl['backbone']}, {mdl['precision']}, "
        f"{'LoRA rank ' + str(mdl['lora_rank']) if mdl['lora_rank'] else 'full fine-tune'}, {mdl['optimizer']}) "
        f"— {mdl['mode']} on mesh {mesh_txt} ({m['devices']} devices){layout}",
        f"params: {tot['params']:,} ({human_count(tot['params'])}), trainable: {tot['trainable_params']:,} "
        f"({human_count(tot['trainable_params'])}); shown {len(doc['variables'])} of {tot['variables']} variables",
        f"per device: weights {human_bytes(tot['weights_bytes_per_device'])}, gradients "
        f"{human_bytes(tot['gradients_bytes_per_device'])}, optimizer state {human_bytes(tot['optimizer_bytes_per_device'])} "
        f"({tot['optimizer_variables']} variables)",
    ]
    lines += _memory_lines(doc)
    if tot["unmatched_variables"]:
        lines.append(f"{tot['unmatched_variables']} variables match no rule and are replicated")
    for u in doc["unused_rules"]:
        lines.append(
            f"[yellow]rule matches no variable:[/] {u['pattern']!r} → {u['axes']} ({u['source']})"
        )
    if live:
        ck = mdl.get("checkpoint")
        lines.append(f"live: {'checkpoint ' + ck + ' loaded' if ck else 'no checkpoint loaded'}; "
                     + ("[green]every variable as planned[/]" if not tot.get("mismatches")
                        else f"[red]{tot['mismatches']} variable(s) differ from the plan[/]"))
    for p in doc["problems"]:
        color = "red" if p["level"] in ("error", "mismatch") else "yellow"
        lines.append(f"[{color}]{p['level']}:[/] {p['message']}")
    for n in doc["notes"]:
        lines.append(f"[dim]note: {n}[/]")
    for line in lines:
        console.print(line)


def _memory_lines(doc: dict[str, Any]) -> list[str]:
    """Activations, logits, the total against the device, and the measured peak (live)."""
    tot = doc["totals"]
    mem = doc.get("memory")
    batch = f"batch {tot['batch_per_device']}/device × {tot['sequence_length']} tokens"
    total = f"total ~{human_bytes(tot['total_bytes_per_device'])} per device (estimate"
    if mem is None:
        lines = [f"  activations ~{human_bytes(tot['activations_bytes_per_device'])} ({batch})"]
        total += ")"
    else:
        est, alt = mem["estimate"], mem["alternatives"]
        other = "none" if mem["remat"] == "blocks" else "blocks"
        chunked = (
            f"loss in chunks of {mem['loss_chunk']} positions; whole logits ~{human_bytes(est['logits_plain'])}"
            if mem["loss_chunk"]
            else "whole logits"
        )
        lines = [
            f"  activations ~{human_bytes(est['activations'])} (remat {mem['remat']}; with remat {other}: "
            f"~{human_bytes(est['activations_remat_' + other])}), logits ~{human_bytes(est['logits'])} ({chunked}); {batch}"
        ]
        if est.get("dequantized"):
            lines.append(f"  dequantized kernel ~{human_bytes(est['dequantized'])} (keras {doc['model'].get('quantize')} "
                         "is storage-only: each matmul rebuilds its kernel at the compute dtype, one at a time)")
        total += f"; remat {other}: ~{human_bytes(alt['remat_' + other + '_total'])})"
        if est.get("images"):
            lines.append(f"  vision tower ~{human_bytes(est['images'])} (its activations for the batch's image slots)")
        if est.get("reference"):
            lines.append(f"  reference forward pass (dpo) ~{human_bytes(est['reference'])}: its hidden states and logits")
    if tot["device_memory_bytes"]:
        name = f" ({tot['device']})" if tot.get("device") else ""
        total += f" of {human_bytes(tot['device_memory_bytes'])}{name}: " + (
            "[green]fits[/]" if tot["fits"] else "[red]does not fit[/]"
        )
    lines.append(total)
    if mem is not None and mem.get("measured"):
        ms = mem["measured"]
        lines.append(
            f"measured (XLA memory analysis of the compiled train step): peak {human_bytes(ms['peak'])} per device "
            f"(arguments {human_bytes(ms['argument'])}, temporaries {human_bytes(ms['temp'])}); "
            f"the estimate is {100 * mem['error']:+.0f}% off"
        )
        co = ms.get("collectives")
        if co:
            kinds = ", ".join(f"{k} {v['count']}" for k, v in co.items() if k != "total" and v["count"])
            lines.append(
                f"collectives of the compiled train step: {human_bytes(co['total']['bytes_per_device'])} sent per device "
                f"per step ({co['total']['count']} ops: {kinds or 'none'})"
            )
    for n in doc.get("layout_notes", []):
        lines.append(f"[cyan]layout:[/] {n}")
    return lines


def inspect(
    config: TargetArg = None,
    overrides: OverridesArg = None,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            help="Only this layer: an exact name (decoder_block_1) or a regex (decoder_block_(0|1)).",
        ),
    ] = None,
    match: Annotated[
        str | None,
        typer.Option("--match", help="Only variables whose path matches this regex (re.search)."),
    ] = None,
    optimizer: Annotated[
        bool, typer.Option("--optimizer", help="Also list the optimizer state of each variable.")
    ] = False,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="Load the model on this machine's mesh (a run: with its latest checkpoint), "
            "read the specs from the arrays and flag any that differ from the plan.",
        ),
    ] = False,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure/--no-measure",
            help="With --live: compile the train step for the config's batch and show XLA's measured peak per device.",
        ),
    ] = True,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="Say whether the step fits this device: v5e, v5p, v4, v6e, h100, a100-80, a100-40, h200, or a size such as 24GiB.",
        ),
    ] = None,
    device_memory: Annotated[
        str | None,
        typer.Option("--device-memory", help="Memory per device to compare with, e.g. 16GiB (as --device SIZE)."),
    ] = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show how weights and optimizer state are sharded: spec, shard shape, bytes per device.

    Plans any preset on the config's mesh without weights or devices, with an estimate of each
    device's memory in a training step (weights, gradients, optimizer state, activations with
    and without remat, logits) and whether it fits --device. Exit 2 if a sharded dimension does
    not divide its mesh axis (shown in red, with the fix); with --live, exit 1 if a live variable
    is not laid out as planned. --live also compiles the train step and prints XLA's measured
    peak per device next to the estimate.

    Without CONFIG: $GEMMA_CONFIG, ./gemma.yaml, or the most recent run under runs/.

    Examples:

      gemma inspect configs/imdb_7b_tpu.yaml --layer decoder_block_1 --optimizer --device v5e

      gemma inspect --layer decoder_block_1 --live
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        from gemma_cli import targets

        target = targets.resolve(config, overrides, verb="inspect", log=out)
        cfg = target.config
        if device and device_memory:
            raise UsageError("give --device or --device-memory, not both")
        dev_name, mem = parse_device(device) if device else (None, None)
        if device_memory:
            dev_name, mem = device_memory.strip(), parse_size(device_memory)
        for what, rx in (("--layer", layer), ("--match", match)):
            if rx is not None:
                try:
                    re.compile(rx)
                except re.error as e:
                    raise UsageError(f"{what} {rx!r}: regex does not compile: {e}") from None
        from gemma_cli import preflight

        preflight.require(preflight.inspect(target, live=live))
        from gemma_cli.engine.core import runtime

        # a plan reads shapes only: no tf.data, so skip TensorFlow's multi-second import
        runtime.setup(without_tensorflow=not live)
        if json_:
            runtime.silence_keras_stdout()
        from gemma_cli.engine.plan import inspect as inspect_report

        if dev_name is not None and mem is None:
            from gemma_cli.engine.plan import memory

            mem = memory.DEVICES[dev_name]
        from gemma_cli.engine.plan import machine

        with out.status(f"Choosing a mesh for {cfg.model.preset} ..."):
            # no mesh.shape: the mesh finetune would choose here, fitted to --device when given
            choice = machine.choose(cfg, mem)
        if choice is not None:
            out.info(choice.why)
        with out.status(
            f"{'Loading' if live else 'Planning'} {cfg.model.preset} on mesh {cfg.mesh.shape} ..."
        ):
            select = inspect_report.Selection(layer, match, names=("--layer", "--match"))
            doc = inspect_report.describe(
                cfg,
                live=live,
                select=select,
                optimizer=optimizer,
                device_memory=mem,
                device_name=dev_name,
                measure=live and measure,
                checkpoint=target.checkpoint,
            )
        doc["target"] = target.to_dict()
        doc["mesh_chosen"] = choice.why if choice is not None else None  # no mesh.shape: why this one
        if not json_:
            for p in doc["problems"]:
                if p["level"] == "warning":
                    out.warn(p["message"])
        out.result(doc, human=lambda c: render(doc, c))
        if any(p["level"] == "error" for p in doc["problems"]):
            raise typer.Exit(2)
        if any(p["level"] == "mismatch" for p in doc["problems"]):
            raise typer.Exit(1)  # the arrays are not laid out as planned: ours to fix, not the user's
