"""`gemma config validate` and `gemma config show`."""

from __future__ import annotations

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

config_app = typer.Typer(
    help="Check and print run configs (no model is loaded).", no_args_is_help=True
)


@config_app.command("validate")
def validate(
    config: ConfigArg,
    overrides: OverridesArg = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Validate a run config: every problem with its file:line, exit 2 if any.

    Example: gemma config validate configs/imdb_7b_tpu.yaml train.max_steps=10
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        from gemma_cli.config import load_config

        try:
            cfg = load_config(config, overrides or [])
        except Exception as e:  # report --json errors as a document too
            from gemma_cli.errors import ConfigError

            if json_ and isinstance(e, ConfigError):
                out.result({"valid": False, "config": config, "problems": e.problems})
                raise typer.Exit(2) from None
            raise
        out.result(
            {"valid": True, "config": config, "name": cfg.name, "preset": cfg.model.preset},
            human=lambda c: c.print(f"[green]✓[/] {config} is valid ({cfg.model.preset})"),
        )


@config_app.command("show")
def show(
    config: ConfigArg,
    overrides: OverridesArg = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Print the merged, resolved config (YAML; --json for scripts).

    Example: gemma config show configs/imdb_7b_tpu.yaml optimizer.learning_rate=1e-4
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        from gemma_cli.config import dump_config, load_config, to_yaml

        data = dump_config(load_config(config, overrides or []))
        out.result(data, human=lambda c: out.text(to_yaml(data)))
