"""The `gemma` command line: the Typer app, the shared options and the error boundary.

Each verb lives in `gemma_cli/commands/<verb>.py`: parse, load config, call the engine inside
the function body, hand the plain result to `Output`. Nothing here imports keras, keras_hub,
jax, tensorflow or tensorflow_datasets: `gemma --help` must stay instant.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from gemma_cli import __version__
from gemma_cli.errors import GemmaError
from gemma_cli.output import Output

app = typer.Typer(
    name="gemma",
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

# Shared options, declared once and used by every verb.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")]
DebugOpt = Annotated[
    bool, typer.Option("--debug", help="Show tracebacks and debug output.", envvar="GEMMA_DEBUG")
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="key=value overrides typed by the schema, e.g. optimizer.learning_rate=1e-4 mesh.shape=[1,8]",
        show_default=False,
    ),
]
ConfigArg = Annotated[str, typer.Argument(help="Run config (YAML); - reads stdin.", show_default=False)]


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


@contextmanager
def boundary(out: Output) -> Iterator[None]:
    """The error boundary of a verb: known errors → one line + exit code, no traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except GemmaError as e:
        if out.debug:
            traceback.print_exc()
        out.error(e.line())
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        out.error("interrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        # a closed pipe (`gemma ... | head`) is not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        raise typer.Exit(0) from None
    except Exception as e:  # an unexpected failure: one line unless --debug
        if out.debug:
            traceback.print_exc()
            out.error(f"{type(e).__name__}: {e}")
        else:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            out.error(f"{type(e).__name__}: {first[:500]} (run again with --debug for the traceback)")
        raise typer.Exit(1) from None


def make_output(json_mode: bool = False, quiet: bool = False, debug: bool = False) -> Output:
    return Output(json_mode=json_mode, quiet=quiet, debug=debug)


def _register() -> None:
    # Each module adds its verbs to `app`; all are light (no heavy imports at module level).
    from gemma_cli.commands import (  # noqa: F401
        config_cmd,
        convert_cmd,
        finetune_cmd,
        generate_cmd,
        inspect_cmd,
        login_cmd,
    )


_register()


def main() -> None:
    app()

