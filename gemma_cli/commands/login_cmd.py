"""`gemma login kaggle|hf|status` and `gemma logout kaggle|hf`.

Secrets come from a hidden prompt (a terminal), the environment, stdin or a file — never from
argv — and are never printed. Storage and checks live in `gemma_cli.auth`.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from gemma_cli import auth
from gemma_cli.commands.common import DebugOpt, JsonOpt, QuietOpt, boundary, make_output
from gemma_cli.errors import RuntimeFailure, UsageError
from gemma_cli.output import Output, table

login_app = typer.Typer(
    help="Store Kaggle / Hugging Face credentials where kagglehub and huggingface_hub read them, "
    "and show which are configured. Secrets are read from a hidden prompt, the environment, "
    "stdin or a file, never from the command line, and never printed.",
    no_args_is_help=True,
)


class Service(str, Enum):
    kaggle = "kaggle"
    hf = "hf"


CheckOpt = Annotated[
    bool,
    typer.Option("--check", help="Verify against the service first (network); store only if accepted."),
]
NAMES = {"kaggle": "Kaggle", "hf": "Hugging Face"}


def _interactive() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _verify(out: Output, cred: auth.Credential) -> auth.CheckResult:
    with out.status(f"Checking the {NAMES[cred.service]} credential"):
        res = auth.check(cred)
    if not res.valid:
        raise RuntimeFailure(f"{NAMES[cred.service]} {res.detail}; nothing was stored")
    return res


def _saved(out: Output, service: str, path: Path, source: str, extra: dict[str, Any],
           res: auth.CheckResult | None) -> None:
    data = {"service": service, "stored": str(path), "mode": "0600", "from": source, **extra,
            "check": res.to_dict() if res else None}
    who = f" for {extra['username']}" if extra.get("username") else ""
    checked = f", {res.detail}" if res else ""
    out.result(data, human=lambda c: c.print(
        f"[green]✓[/] {NAMES[service]} credentials{who} saved to {path} (mode 0600{checked})"))
    # What the libraries will actually use first, if not what was just stored.
    now = auth.credential(service)
    if now.origin != str(path):
        out.warn(f"{now.origin} takes precedence over {path} for {NAMES[service]}")


@login_app.command("kaggle")
def login_kaggle(
    from_file: Annotated[
        str | None,
        typer.Option("--from-file", metavar="KAGGLE_JSON",
                     help='Read {"username", "key"} from a kaggle.json file; - reads it from stdin.'),
    ] = None,
    check: CheckOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Store Kaggle credentials in kaggle.json (KAGGLE_CONFIG_DIR or ~/.kaggle, mode 0600).

    Sources, first found wins: --from-file, KAGGLE_USERNAME + KAGGLE_KEY, an interactive prompt
    (username, then the key hidden). Get a key at https://www.kaggle.com/settings (API).

    Example: gemma login kaggle --from-file ~/Downloads/kaggle.json
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        if from_file is not None:
            where = "stdin" if from_file == "-" else from_file
            try:
                text = sys.stdin.read() if from_file == "-" else Path(from_file).expanduser().read_text("utf-8")
            except OSError as e:
                raise UsageError(f"cannot read {where}: {e.strerror or type(e).__name__}") from None
            username, key = auth.parse_kaggle_json(text, where)
            source = f"file {where}"
        elif auth.clean(os.environ.get("KAGGLE_USERNAME")) and auth.clean(os.environ.get("KAGGLE_KEY")):
            username, key = auth.clean(os.environ.get("KAGGLE_USERNAME")), auth.clean(os.environ.get("KAGGLE_KEY"))
            source = "env KAGGLE_USERNAME+KAGGLE_KEY"
        elif _interactive():
            username = auth.clean(typer.prompt("Kaggle username", err=True))
            key = auth.clean(typer.prompt("Kaggle API key (hidden)", hide_input=True, err=True))
            source = "prompt"
        else:
            raise UsageError(
                "no Kaggle credentials to store and no terminal to ask on",
                hint="set KAGGLE_USERNAME and KAGGLE_KEY, or pass --from-file kaggle.json (- reads stdin)",
            )
        if not username or not key:
            raise UsageError("the Kaggle username and key must not be empty")
        res = _verify(out, auth.Credential("kaggle", True, username=username, key=key)) if check else None
        path = auth.save_kaggle(username, key)
        _saved(out, "kaggle", path, source, {"username": username}, res)


@login_app.command("hf")
def login_hf(
    token_stdin: Annotated[
        bool, typer.Option("--token-stdin", help="Read the token from stdin (e.g. from a secret manager).")
    ] = False,
    check: CheckOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Store a Hugging Face token in huggingface_hub's token file (HF_TOKEN_PATH or HF_HOME/token).

    Sources, first found wins: --token-stdin, HF_TOKEN, a hidden prompt. No network call unless
    --check. Create a token at https://huggingface.co/settings/tokens.

    Example: pass show hf | gemma login hf --token-stdin --check
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        if token_stdin:
            token = auth.clean(sys.stdin.readline())
            source = "stdin"
            if not token:
                raise UsageError("--token-stdin read no token from stdin")
        elif auth.clean(os.environ.get("HF_TOKEN")):
            token, source = auth.clean(os.environ.get("HF_TOKEN")), "env HF_TOKEN"
        elif _interactive():
            token = auth.clean(typer.prompt("Hugging Face token (hidden)", hide_input=True, err=True))
            source = "prompt"
        else:
            raise UsageError(
                "no Hugging Face token to store and no terminal to ask on",
                hint="set HF_TOKEN, or pipe it: ... | gemma login hf --token-stdin",
            )
        if not token:
            raise UsageError("the Hugging Face token must not be empty")
        if not token.startswith("hf_"):
            out.warn("this does not look like a Hugging Face access token (they start with hf_)")
        res = _verify(out, auth.Credential("hf", True, token=token)) if check else None
        path = auth.save_hf_token(token)
        _saved(out, "hf", path, source, {"masked": auth.mask(token)}, res)


@login_app.command("status")
def login_status(
    service: Annotated[Service | None, typer.Argument(help="Only this service.", show_default=False)] = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Also verify each configured credential against its service "
                     "(network; honours HF_ENDPOINT and KAGGLE_API_ENDPOINT). Off by default: "
                     "without it nothing leaves this machine."),
    ] = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show which credentials are configured and where from (env or file); never the secret.

    Exit 1 with --check if a credential is rejected or a service cannot be reached.

    Example: gemma login status --check --json
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        services = [service.value] if service else list(auth.SERVICES)
        rows: list[dict[str, Any]] = []
        rejected = False
        for s in services:
            cred = auth.credential(s)
            row = cred.to_dict()
            if check and cred.configured:
                res = auth.check(cred)
                row["check"] = res.to_dict()
                rejected |= not res.valid
            rows.append(row)
        out.result({"credentials": rows}, human=lambda c: c.print(_status_table(rows, check)))
        if rejected:
            raise typer.Exit(1)


def _status_table(rows: list[dict[str, Any]], check: bool) -> Any:
    body = []
    for r in rows:
        if r["configured"]:
            who = r["username"] or r["masked"] or ""
            state = "[green]yes[/]"
        else:
            who = r.get("problem") or f"run: gemma login {r['service']}"
            state = "[red]broken[/]" if r.get("problem") else "[yellow]no[/]"
        src = f"{r['source']} {r['origin']}" if r["source"] else "-"
        line = [NAMES[r["service"]], state, src, who]
        if check:
            c = r.get("check")
            line.append("-" if c is None else (f"[green]{c['detail']}[/]" if c["valid"] else f"[red]{c['detail']}[/]"))
        body.append(line)
    cols = ["service", "configured", "from", "account"] + (["check"] if check else [])
    return table(None, cols, body)


def logout(
    service: Annotated[Service, typer.Argument(help="kaggle or hf.", show_default=False)],
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Remove a stored credential (kaggle.json, or the Hugging Face token file) and say what went.

    Example: gemma logout hf
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        s = service.value
        removed = auth.remove_kaggle() if s == "kaggle" else auth.remove_hf()
        where = auth.kaggle_json_path() if s == "kaggle" else auth.hf_token_path()
        out.result(
            {"service": s, "removed": [str(p) for p in removed]},
            human=lambda c: c.print(
                "\n".join(f"Removed {p}" for p in removed) if removed
                else f"No stored {NAMES[s]} credential at {where}"),
        )
        still = auth.credential(s)
        if still.configured:
            out.warn(f"{NAMES[s]} is still configured from {still.source} {still.origin}")
