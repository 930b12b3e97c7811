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


def parse_size(text: str) -> int:
    """`16GiB`, `16G`, `80GB`, `1024` (bytes) → bytes. Binary units for G/Gi alike."""
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"--device-memory {text!r}: expected a size such as 16GiB or 95G")
    unit = (m.group(2) or "b").lower().rstrip("b").rstrip("i")
    return int(float(m.group(1)) * 1024 ** {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit])


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
            same = ps == r["spec"]
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
    lines = [
        f"[bold]{mdl['preset']}[/] ({mdl['backbone']}, {mdl['precision']}, "
        f"{'LoRA rank ' + str(mdl['lora_rank']) if mdl['lora_rank'] else 'full fine-tune'}, {mdl['optimizer']}) "
        f"— {mdl['mode']} on mesh {mesh_txt} ({m['devices']} devices)",
        f"params: {tot['params']:,} ({human_count(tot['params'])}), trainable: {tot['trainable_params']:,} "
        f"({human_count(tot['trainable_params'])}); shown {len(doc['variables'])} of {tot['variables']} variables",
        f"per device: weights {human_bytes(tot['weights_bytes_per_device'])}, gradients "
        f"{human_bytes(tot['gradients_bytes_per_device'])}, optimizer state {human_bytes(tot['optimizer_bytes_per_device'])} "
        f"({tot['optimizer_variables']} variables), activations ~{human_bytes(tot['activations_bytes_per_device'])} "
        f"(batch {tot['batch_per_device']}/device × {tot['sequence_length']} tokens)",
    ]
    total = f"total ~{human_bytes(tot['total_bytes_per_device'])} per device"
    if tot["device_memory_bytes"]:
        ok = tot["fits"]
        total += f" of {human_bytes(tot['device_memory_bytes'])}: " + (
            "[green]fits[/]" if ok else "[red]does not fit[/]"
        )
    lines.append(total)
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
    device_memory: Annotated[
        str | None,
        typer.Option(
            "--device-memory", help="Memory per device to compare with, e.g. 16GiB (plan mode)."
        ),
    ] = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show how weights and optimizer state are sharded: spec, shard shape, bytes per device.

    Plans any preset on the config's mesh without weights or devices. Exit 2 if a sharded dimension does not divide its mesh axis (shown in red, with the fix); with --live, exit 1 if a live variable is not laid out as planned.

    Without CONFIG: $GEMMA_CONFIG, ./gemma.yaml, or the most recent run under runs/.

    Examples:

      gemma inspect configs/imdb_7b_tpu.yaml --layer decoder_block_1 --optimizer

      gemma inspect --layer decoder_block_1 --live
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        from gemma_cli import targets

        target = targets.resolve(config, overrides, verb="inspect", log=out)
        cfg = target.config
        mem = parse_size(device_memory) if device_memory else None
        for what, rx in (("--layer", layer), ("--match", match)):
            if rx is not None:
                try:
                    re.compile(rx)
                except re.error as e:
                    raise UsageError(f"{what} {rx!r}: regex does not compile: {e}") from None
        from gemma_cli import preflight

        preflight.require(preflight.inspect(target, live=live))
        from gemma_cli.engine import runtime

        # a plan reads shapes only: no tf.data, so skip TensorFlow's multi-second import
        runtime.setup(without_tensorflow=not live)
        if json_:
            runtime.silence_keras_stdout()
        from gemma_cli.engine import inspect_report

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
                checkpoint=target.checkpoint,
            )
        doc["target"] = target.to_dict()
        if not json_:
            for p in doc["problems"]:
                if p["level"] == "warning":
                    out.warn(p["message"])
        out.result(doc, human=lambda c: render(doc, c))
        if any(p["level"] == "error" for p in doc["problems"]):
            raise typer.Exit(2)
        if any(p["level"] == "mismatch" for p in doc["problems"]):
            raise typer.Exit(1)  # the arrays are not laid out as planned: ours to fix, not the user's
