"""`gemma config validate` and `gemma config show`."""

from __future__ import annotations

from typing import Annotated

import typer

from gemma_cli.commands.common import (
    DebugOpt,
    JsonOpt,
    OverridesArg,
    QuietOpt,
    TargetConfigArg,
    boundary,
    make_output,
)

config_app = typer.Typer(
    help="Check and print run configs (no model is loaded).", no_args_is_help=True
)


@config_app.command("validate")
def validate(
    config: TargetConfigArg = None,
    overrides: OverridesArg = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Skip what concerns downloads: credentials and the host answering.")
    ] = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Validate a run config: every problem with its file:line, exit 2 if any.

    Without CONFIG: $GEMMA_CONFIG, ./gemma.yaml, or the most recent run's config.yaml.

    Beyond the schema, what `gemma finetune` checks before it loads anything: the preset (a
    local directory complete, a name known, a download's credentials and host), the data
    (paths, every record's fields), train.output_dir writable. The success line says what
    will train: method, LoRA rank and targets or a full fine-tune (with an estimate of the
    trainable parameters when the architecture is at hand), quantization, data, mesh, steps;
    `--json` gives them as the `will_train` fields.

    Example: gemma config validate configs/imdb_7b_tpu.yaml train.max_steps=10
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        from rich.text import Text

        from gemma_cli import preflight, targets
        from gemma_cli.errors import ConfigError, PreflightError

        shown = config
        try:
            if targets.split_overrides(config, overrides)[0] is None:
                shown = targets.default_source()  # named in the --json document when invalid
            cfg = targets.resolve(config, overrides, verb="config", log=out).config
            preflight.require(preflight.validate(cfg, network=not offline))
        except (ConfigError, PreflightError) as e:  # report --json errors as a document too
            if json_:
                out.error(e.line())
                # the failure contract of every verb (`error`, `exit_code`, `problems`), plus `valid`
                out.result({"valid": False, "config": shown, "error": e.line().splitlines()[0],
                            "exit_code": e.exit_code, "problems": e.problems})
                raise typer.Exit(e.exit_code) from None
            raise
        from gemma_cli import run_facts

        shown = cfg.source_path or shown or "<stdin>"
        facts = run_facts.describe(cfg)
        out.result(
            {"valid": True, "config": shown, "name": cfg.name, "preset": cfg.model.preset,
             "checked": "schema, preset, data, output_dir" + ("" if offline else ", credentials, network"),
             "will_train": facts},
            human=lambda c: c.print(Text("✓ ", style="green") + Text(f"{shown} is valid: {run_facts.sentence(facts)}")),
        )


@config_app.command("show")
def show(
    config: TargetConfigArg = None,
    overrides: OverridesArg = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Print the merged, resolved config (YAML; --json for scripts).

    Without CONFIG: $GEMMA_CONFIG, ./gemma.yaml, or the most recent run's config.yaml.

    Example: gemma config show configs/imdb_7b_tpu.yaml optimizer.learning_rate=1e-4
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        from gemma_cli import targets
        from gemma_cli.config import dump_config, to_yaml

        data = dump_config(targets.resolve(config, overrides, verb="config", log=out).config)
        out.result(data, human=lambda c: out.text(to_yaml(data)))
