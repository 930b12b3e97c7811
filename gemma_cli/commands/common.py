"""What every verb shares: the option types, the output factory and the error boundary.

Command modules import from here, never from `gemma_cli.cli`; `cli.py` imports the command
modules and registers their functions on the app (one direction, as the `hf` CLI does).
Nothing here imports keras, keras_hub, jax, tensorflow or tensorflow_datasets.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
import typer.core

from gemma_cli.engine.core import stdio
from gemma_cli.errors import GemmaError, translate
from gemma_cli.output import Output

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
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo the work and replace --out.")]
ConfigArg = Annotated[
    str | None,
    typer.Argument(help="Run config (YAML); - reads stdin. Required.", show_default=False, metavar="CONFIG"),
]
_DEFAULTS = "Omitted: $GEMMA_CONFIG, else ./gemma.yaml, else the most recent run under runs/."
TargetConfigArg = Annotated[
    str | None,
    typer.Argument(
        help=f"Run config (YAML; - reads stdin) or a fine-tune run directory. {_DEFAULTS}",
        show_default=False,
        metavar="CONFIG|RUN",
    ),
]
TargetArg = Annotated[
    str | None,
    typer.Argument(
        help="A run config (YAML), a fine-tune run directory, or a preset (dir or name). "
        + _DEFAULTS.replace("run under runs/.", "run under runs/ (its latest checkpoint)."),
        show_default=False,
        metavar="CONFIG|RUN|PRESET",
    ),
]


@contextmanager
def boundary(out: Output) -> Iterator[None]:
    """The error boundary of a verb: known errors → one line + exit code, no traceback.

    Library exceptions that come from input or the environment are translated first
    (`gemma_cli.errors.translate`). With `--json`/`--jsonl` stdout is kept for documents while
    the verb runs (`gemma_cli.engine.core.stdio`), and a failure still prints one JSON document there,
    `{"error": ..., "exit_code": ..., "problems": [...]}`, as well as its line on stderr.
    """
    if out.documents:
        stdio.enter()
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        _fail(out, "interrupted", 130)
    except BrokenPipeError:
        # a closed pipe (`gemma ... | head`) is not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        raise typer.Exit(0) from None
    except Exception as e:
        known = translate(e)
        if out.debug:
            traceback.print_exc()
        if known is not None:
            _fail(out, known.line(), known.exit_code, getattr(known, "problems", None), known)
        # an unexpected failure: one line unless --debug
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        line = f"{type(e).__name__}: {e}" if out.debug else (
            f"{type(e).__name__}: {first[:500]} (run again with --debug for the traceback)")
        _fail(out, line, 1)
    finally:
        if out.documents:
            stdio.leave()


def _fail(out: Output, line: str, code: int, problems: list[str] | None = None, err: GemmaError | None = None) -> None:
    out.error(line)
    if out.json_mode and not out.emitted:
        doc = {"error": line.splitlines()[0] if line else "", "exit_code": code}
        if problems:
            doc["problems"] = list(problems)
        if err is not None and err.hint:
            doc["hint"] = err.hint
        out.result(doc)
    raise typer.Exit(code) from None


class Group(typer.core.TyperGroup):
    """The root command group: with `--json` on the command line, a command line that does not
    parse (an unknown option, a missing argument) is still answered with one JSON document on
    stdout and one `Error:` line on stderr, exit 2, like every other failure."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if "--json" not in argv or not standalone_mode:
            return super().main(args=argv, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=standalone_mode, **extra)
        try:
            rv = super().main(args=argv, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except typer.Abort:
            sys.stderr.write("Error: aborted\n")
            sys.exit(1)
        except Exception as e:
            if not (hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int)):
                raise  # not a command-line parsing error (click's ClickException, as vendored by typer)
            line = " ".join(e.format_message().split())
            sys.stderr.write(f"Error: {line}\n")
            sys.stdout.write(json.dumps({"error": line, "exit_code": e.exit_code}, indent=2) + "\n")
            sys.stdout.flush()
            sys.exit(e.exit_code)
        if isinstance(rv, int):  # a typer.Exit(code) from the verb
            sys.exit(rv)
        return rv


def make_output(json_mode: bool = False, quiet: bool = False, debug: bool = False,
                documents: bool | None = None) -> Output:
    return Output(json_mode=json_mode, quiet=quiet, debug=debug, documents=documents)
