"""`gemma runs [DIR]` (one row per run) and `gemma runs show RUN` (its config and summary).

Everything comes from the files each run writes (`gemma_cli/rundir.py`); nothing is loaded.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from gemma_cli.commands.common import DebugOpt, JsonOpt, QuietOpt, boundary, make_output
from gemma_cli.errors import UsageError

_STYLE = {
    "running": "cyan",
    "finished": "green",
    "interrupted": "yellow",
    "diverged": "red",
    "broken": "red",
}


class _RunsGroup(TyperGroup):
    """`gemma runs [DIR]` and `gemma runs show RUN` side by side.

    click gives a group's own positional argument the first word, so `show` would be read as
    DIR; when the first word names a subcommand the group's DIR is left out of that parse.
    Options may follow DIR (`gemma runs old_runs --json`).
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        first = next((a for a in args if not a.startswith("-")), None)
        if first is not None and first in self.commands:
            saved = self.params
            self.params = [p for p in saved if getattr(p, "param_type_name", "") != "argument"]
            try:
                return super().parse_args(ctx, args)
            finally:
                self.params = saved
        ctx.allow_interspersed_args = True  # DIR is the last word a group reads here
        return super().parse_args(ctx, args)


runs_app = typer.Typer(
    cls=_RunsGroup,
    invoke_without_command=True,
    no_args_is_help=False,
)


def _when(iso: str | None) -> str:
    if not iso:
        return "—"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")


def _loss(x: Any) -> str:
    if x is None:
        return "—"
    return f"{x:.4f}" if isinstance(x, (int, float)) else str(x)


def _steps(r: dict[str, Any]) -> str:
    done = r["steps"] if r["steps"] is not None else "—"
    return f"{done} / {r['total_steps']}" if r["total_steps"] else f"{done} / ?"


def _table(rows: list[dict[str, Any]], console: Any, root: str) -> None:
    from rich.table import Table
    from rich.text import Text

    if not rows:
        console.print(f"no runs under {root}/", markup=False)
        return
    if not console.is_terminal:  # piped or redirected: whole rows, one per line
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=True, width=max(console.width, 200))
    t = Table(title=f"runs under {root}/", title_justify="left")
    for c in ("run", "preset", "started", "steps", "train loss", "eval loss", "checkpoint", "status", "why"):
        t.add_column(c, justify="right" if c in ("steps", "train loss", "eval loss") else "left",
                     overflow="fold")
    for r in rows:
        status = Text(r["status"], style=_STYLE.get(r["status"]))
        ck = Path(r["checkpoint"]).name if r["checkpoint"] else "—"
        t.add_row(
            Text(r["name"]),
            Text(r["preset"] or "—"),
            _when(r["started"]),
            _steps(r),
            _loss(r["train_loss"]),
            _loss(r["eval_loss"]),
            Text(ck),
            status,
            Text(r["reason"] or "", style="dim"),
        )
    console.print(t)


@runs_app.callback()
def runs(
    ctx: typer.Context,
    directory: Annotated[
        str | None,
        typer.Argument(help="Where the runs are, or one run directory. Defaults to runs/.",
                       show_default=False, metavar="DIR"),
    ] = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """One row per run: preset, start, steps done / planned, last losses, latest checkpoint, status.

    Status: running | finished | interrupted | diverged | broken (with the reason).

    Examples:

      gemma runs

      gemma runs --json

      gemma runs show gemma3_270m_demo
    """
    if ctx.invoked_subcommand is not None:
        return
    out = make_output(json_, quiet, debug)
    with boundary(out):
        from gemma_cli import rundir

        root = directory or "runs"
        if directory is not None and not Path(directory).is_dir():
            raise UsageError(f"{directory}: no such directory")
        rows = [r.to_dict() for r in rundir.list_runs(root)]
        shown = root.rstrip("/") or "/"
        out.result({"dir": shown, "runs": rows}, human=lambda c: _table(rows, c, shown))


@runs_app.command("show")
def show(
    run: Annotated[str, typer.Argument(help="A run directory, or a run's name under runs/.",
                                       show_default=False)],
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Print a run's status line, its resolved config and its summary.

    Example: gemma runs show gemma3_270m_demo
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        from gemma_cli import rundir

        path = rundir.find_run(run)
        if path is None:
            raise UsageError(f"{run}: no such run (looked for ./{run} and runs/{run})",
                             hint="`gemma runs` lists them")
        info = rundir.read_run(path).to_dict()
        config_text = _read(path / rundir.CONFIG_FILE)
        config_doc = None
        if config_text is not None:
            import yaml

            try:
                config_doc = yaml.safe_load(config_text)
            except yaml.YAMLError:
                config_doc = None
        summary_text = _read(path / rundir.SUMMARY_FILE)
        summary = None
        if summary_text is not None:
            try:
                summary = json.loads(summary_text)
            except ValueError:
                summary = None
        doc = {"run": info, "config": config_doc, "summary": summary}

        def human(console: Any) -> None:
            from rich.text import Text

            line = Text(f"{info['name']}: ")
            line.append(info["status"], style=_STYLE.get(info["status"]))
            if info["reason"]:
                line.append(f" ({info['reason']})")
            line.append(f", {_steps(info)} steps, train loss {_loss(info['train_loss'])}, "
                        f"eval loss {_loss(info['eval_loss'])}, started {_when(info['started'])}")
            console.print(line)
            console.print(f"checkpoint: {info['checkpoint'] or '—'}", markup=False)
            console.print(f"\n# {path / rundir.CONFIG_FILE}", markup=False)
            out.text(config_text if config_text is not None else "(missing)")
            console.print(f"# {path / rundir.SUMMARY_FILE}", markup=False)
            out.text(json.dumps(summary, indent=2) if summary is not None
                     else ("(not valid JSON)" if summary_text is not None else "(none: the run has not finished)"))

        out.result(doc, human=human)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
