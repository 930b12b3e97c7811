"""`gemma finetune CONFIG [key=value ...]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gemma_cli.commands.common import (
    ConfigArg,
    DebugOpt,
    JsonOpt,
    OverridesArg,
    QuietOpt,
    boundary,
    make_output,
)

AUTO = "auto"


def finetune(
    config: ConfigArg = None,
    overrides: OverridesArg = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in train.output_dir "
                                         "(CONFIG may be the run directory itself: its saved config.yaml). "
                                         "`--resume auto`: continue if there is one, else start fresh (for preemptible jobs: "
                                         "the same command line can be re-run forever; a finished run exits 0).")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Build the mesh, check the layout, read a batch; train nothing.")
    ] = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fine-tune a model as the run config says (LoRA or full), sharded over the device mesh.

    Progress goes to stderr; metrics.jsonl, TensorBoard scalars, loss.png and checkpoints go to
    train.output_dir. Ctrl-C or SIGTERM finishes the step, saves a checkpoint and prints the
    --resume command.

    Examples:

      gemma finetune configs/imdb_7b_tpu.yaml

      gemma finetune gemma.yaml          (the config `gemma init` wrote; CONFIG is never looked up)

      gemma finetune configs/gemma3_270m_demo.yaml train.max_steps=10 --json

      GEMMA_CPU_DEVICES=8 gemma finetune configs/gemma3_270m_demo.yaml --dry-run

      until gemma finetune configs/imdb_7b_tpu.yaml --resume auto; do sleep 60; done   (preemptible)

      gemma finetune runs/imdb_7b --resume          (a run directory: its saved config.yaml)
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        from gemma_cli import targets
        from gemma_cli.config import load_config

        config, overrides, mode = resume_mode(resume, config, list(overrides or []))
        path = targets.finetune_config(config)
        if Path(path).is_dir():  # a run directory: its saved config, with --resume
            path, overrides = targets.run_dir_config(Path(path), overrides, resume=mode)
        cfg = load_config(path, overrides)
        from gemma_cli import preflight

        preflight.require(preflight.finetune(cfg, resume=mode, dry_run=dry_run))
        from gemma_cli.engine.core import runtime

        runtime.setup()
        if json_:
            runtime.silence_keras_stdout()
        from gemma_cli.engine.train import finetune as run

        summary = run(cfg, out, resume=mode, dry_run=dry_run)
        if dry_run:
            from gemma_cli import run_facts

            summary["will_train"] = run_facts.describe(cfg)
        out.result(summary, human=lambda c: _human(c, summary))


def resume_mode(resume: bool, config: str | None, overrides: list[str]) -> tuple[str | None, list[str], bool | str]:
    """`--resume auto` (a flag and the word after it, which the command line reads as a
    positional argument): (config, overrides, mode) with mode False, True or "auto".

    Both orders work: `finetune CONFIG --resume auto [k=v ...]` and `finetune --resume auto CONFIG`.
    """
    if not resume:
        return config, overrides, False
    if config == AUTO and overrides and not Path(AUTO).exists():
        return overrides[0], overrides[1:], AUTO
    if overrides and overrides[0] == AUTO:
        return config, overrides[1:], AUTO
    return config, overrides, True


def _human(console: Any, s: dict[str, Any]) -> None:
    if s.get("already_finished"):
        console.print(f"[green]already finished[/] at step {s['steps']}: {s['checkpoint']} (nothing to do)")
        return
    if s.get("dry_run"):
        console.print(
            f"[green]dry run ok[/]: {s['params']['total']:,} params ({s['params']['trainable']:,} trainable), "
            f"mesh {s['mesh']['shape']} {s['mesh']['axes']}, batch {s['batch']}, {s['steps']} steps planned"
        )
        if s.get("will_train"):
            from gemma_cli import run_facts

            console.print(f"  will train: {run_facts.sentence(s['will_train'])}", markup=False)
        return
    ev = f", eval loss {s['eval_loss']:.4f}" if s.get("eval_loss") is not None else ""
    tps = f", {s['tokens_per_second']:,.0f} tok/s" if s.get("tokens_per_second") else ""
    console.print(
        f"[green]done[/]: {s['steps']} steps, loss {s['first_loss']:.4f} → {s['final_loss']:.4f}{ev}{tps}\n"
        f"  checkpoint: {s['checkpoint']}\n  metrics:    {s['files']['metrics']}"
        + (f"\n  loss curve: {s['files']['loss_curve']}" if s["files"].get("loss_curve") else "")
        + f"\n  generate:   gemma generate {s['output_dir']} -p \"...\""
    )
