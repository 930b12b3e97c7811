"""The `gemma` command line: the Typer app and the registration of every verb.

Registration runs one way: this module imports the command modules (`gemma_cli/commands/`)
and adds their functions to `app`; the command modules import their shared options and the
error boundary from `gemma_cli.commands.common`, never from here. Nothing here imports keras,
keras_hub, jax, tensorflow or tensorflow_datasets: `gemma --help` must stay instant.
"""

from __future__ import annotations

from typing import Annotated

import typer

from gemma_cli import __version__
from gemma_cli.commands import (
    config_cmd,
    convert_cmd,
    eval_cmd,
    export_cmd,
    finetune_cmd,
    generate_cmd,
    init_cmd,
    inspect_cmd,
    login_cmd,
    runs_cmd,
)
from gemma_cli.commands.common import Group, boundary, make_output  # noqa: F401  (re-exported for scripts)

app = typer.Typer(
    name="gemma",
    cls=Group,
    help="Fine-tune Gemma models with Keras 3, keras-hub and JAX from YAML run configs.\n\n"
    "Quick start (offline, this machine): make demo.  Every verb takes --json (one JSON "
    "document on stdout), --quiet and --debug. Exit codes: 0 ok, 1 runtime failure, "
    "2 usage or config error.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gemma {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """Fine-tune Gemma models with Keras 3, keras-hub and JAX from YAML run configs."""


# ---- the verbs, in the order `gemma --help` lists them -------------------------------------
app.command("init")(init_cmd.init)
app.command("finetune")(finetune_cmd.finetune)
app.command("inspect")(inspect_cmd.inspect)
app.command("generate")(generate_cmd.generate)
app.command("eval")(eval_cmd.eval_)
app.command("export")(export_cmd.export)
app.command("upload")(export_cmd.upload)
app.add_typer(runs_cmd.runs_app, name="runs")
app.add_typer(config_cmd.config_app, name="config")
app.add_typer(convert_cmd.convert_app, name="convert")
app.add_typer(login_cmd.login_app, name="login")
app.command("logout")(login_cmd.logout)


def main() -> None:
    app()
