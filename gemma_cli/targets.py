"""What a verb works on: the CONFIG / RUN / PRESET argument, or the default when it is omitted.

The command line names a run config file (or `-` for stdin), a fine-tune run directory, or a
preset (a keras-hub name, `kaggle://…`, `hf://…`, a local preset or Hugging Face checkpoint directory). Without one,
`inspect`, `generate`, `export` and `config show|validate` look, in order, at

1. `$GEMMA_CONFIG` (a config file or a run directory; naming nothing there is an error, not a
   reason to look further),
2. `gemma.yaml` in the working directory (for `generate`/`export`: the run it trained, when
   its `train.output_dir` holds a checkpoint),
3. the most recent run under `runs/` (its resolved `config.yaml`; for `generate`/`export` the
   most recent one with a checkpoint, and its latest checkpoint),

and say on stderr which one they chose. The result is a `Target`, plain data the engine loads
without asking what kind of argument it came from. Plain Python: no keras, jax or tensorflow.

Example:
    >>> t = resolve(None, [], verb="generate", log=out)   # prints "using runs/x (...)"
    >>> t.config.model.preset, t.checkpoint
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemma_cli.errors import UsageError

if TYPE_CHECKING:  # pydantic and the schema load only when a verb runs (`gemma --help` stays light)
    from gemma_cli.config import RunConfig

ENV_VAR = "GEMMA_CONFIG"
LOCAL_CONFIG = "gemma.yaml"
RUNS_DIR = "runs"

COMMAND_LINE = "named on the command line"
FROM_ENV = f"from ${ENV_VAR}"
FROM_LOCAL = f"{LOCAL_CONFIG} in the working directory"
FROM_RUNS = f"the most recent run under {RUNS_DIR}/"

# what each verb accepts, and whether it needs the fine-tuned weights of a run
_ACCEPTS = {
    "inspect": ("config", "run", "preset"),
    "generate": ("config", "run", "preset"),
    "export": ("config", "run", "preset"),
    "eval": ("config", "run", "preset"),
    "config": ("config", "run"),
}
_NEEDS_CHECKPOINT = {"generate", "export", "eval"}
_USAGE = {
    "inspect": "inspect configs/x.yaml",
    "generate": "generate runs/x -p ...",
    "export": "export runs/x --out DIR",
    "eval": "eval runs/x --data heldout.jsonl",
    "config": "config show configs/x.yaml",
}
_KIND_WORDS = {"config": "a run config", "run": "a fine-tune run directory", "preset": "a preset"}
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*=")


@dataclass(frozen=True)
class Target:
    """A resolved CONFIG / RUN / PRESET: what the engine loads.

    Args:
        config: RunConfig. The validated config, overrides applied (a preset gets a minimal
            one: float32, mesh [1, -1]).
        kind: str. "config", "run" or "preset".
        source: str. What was used, as the user would type it (a path or a preset name).
        run_dir: Path | None. The run directory, for kind "run".
        checkpoint: Path | None. The checkpoint to load on top of the preset (the run's
            latest), or None for the preset's own weights.
        chosen_because: str. Why this one: named on the command line, from $GEMMA_CONFIG,
            gemma.yaml in the working directory, the most recent run under runs/.
    """

    config: RunConfig
    kind: str
    source: str
    run_dir: Path | None = None
    checkpoint: Path | None = None
    chosen_because: str = COMMAND_LINE

    def describe(self) -> str:
        """The stderr line saying which one was chosen, e.g. `using runs/x (the most ...)`."""
        ck = f", latest checkpoint {self.checkpoint.name}" if self.checkpoint is not None else ""
        return f"using {self.source} ({self.chosen_because}{ck})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "chosen_because": self.chosen_because,
        }


def split_overrides(arg: str | None, overrides: list[str] | None) -> tuple[str | None, list[str]]:
    """`gemma inspect train.seed=3` parses `train.seed=3` as CONFIG: give it back to overrides."""
    items = list(overrides or [])
    if arg is not None and _OVERRIDE.match(arg) and not Path(arg).exists():
        return None, [arg, *items]
    return arg, items


def preset_config(preset: str, overrides: list[str] | None = None) -> RunConfig:
    """The minimal config for using a preset on its own: float32 on a [1, -1] mesh."""
    from gemma_cli.config import parse_config

    text = f"model:\n  preset: {json.dumps(preset)}\n  precision: float32\nmesh:\n  shape: [1, -1]\n"
    return parse_config(text, "<preset>", overrides or [])


def _latest_checkpoint(run_dir: Path) -> Path | None:
    from gemma_cli.engine.model import checkpoint

    return checkpoint.latest(run_dir)


def _run_target(run_dir: Path, overrides: list[str], verb: str, because: str, source: str,
                checkpoint: Path | None = None) -> Target:
    from gemma_cli.config import load_config

    ckpt = checkpoint or _latest_checkpoint(run_dir)
    if verb in _NEEDS_CHECKPOINT and ckpt is None:
        raise UsageError(
            f"{source}: a run directory with no checkpoint yet",
            hint="finetune first, or give the config",
        )
    cfg = load_config(str(run_dir / "config.yaml"), overrides)
    return Target(cfg, "run", source, run_dir, ckpt if verb != "config" else None, because)


def _checkpoint_of_run(p: Path) -> bool:
    """`p` is a complete `step_N` checkpoint under a run's `checkpoints/` (the run's config beside it)."""
    from gemma_cli.engine.model import checkpoint

    return (p.is_dir() and p.parent.name == "checkpoints" and (p.parent.parent / "config.yaml").is_file()
            and p.resolve() in {c.resolve() for c in checkpoint.complete(p.parent.parent)})


def _named(arg: str, overrides: list[str], verb: str, because: str = COMMAND_LINE) -> Target:
    """A CONFIG / RUN / PRESET the user named; its kind decides how it is loaded."""
    from gemma_cli.config import load_config

    accepts = _ACCEPTS[verb]
    p = Path(arg).expanduser()
    if arg == "-" or p.is_file():
        kind = "config"
    elif p.is_dir() and (p / "config.yaml").exists():
        kind = "run"
    elif p.is_dir() and (p / "config.json").exists():
        kind = "preset"
    elif _checkpoint_of_run(p):  # RUN/checkpoints/step_N: that step of the run
        if "run" not in accepts:
            words = " or ".join(_KIND_WORDS[k] for k in accepts)
            raise UsageError(f"{arg}: a checkpoint of a run; `gemma {verb}` takes {words}")
        return _run_target(p.parent.parent, overrides, verb, because, arg, checkpoint=p)
    elif p.is_dir():
        raise UsageError(
            f"{arg}: neither a run config, a finetune output_dir, a keras-hub preset nor a Hugging Face checkpoint directory"
        )
    elif "://" in arg:
        kind = "preset"
    elif arg.endswith((".yaml", ".yml")) or "preset" not in accepts:
        raise UsageError(f"{arg}: no such config file", hint="see configs/ for examples")
    elif "/" in arg or arg.startswith((".", "~")):
        words = " or ".join(_KIND_WORDS[k] for k in accepts)
        raise UsageError(f"{arg}: no such file or directory", hint=f"give {words}")
    else:
        kind = "preset"  # a keras-hub preset name
    if kind not in accepts:
        words = " or ".join(_KIND_WORDS[k] for k in accepts)
        raise UsageError(f"{arg}: {_KIND_WORDS[kind]}; `gemma {verb}` takes {words}")
    if kind == "config":
        cfg = load_config(arg if arg == "-" else str(p), overrides)
        return Target(cfg, "config", arg, chosen_because=because)
    if kind == "run":
        return _run_target(p, overrides, verb, because, arg)
    return Target(preset_config(arg, overrides), "preset", arg, chosen_because=because)


def _local_target(overrides: list[str], verb: str) -> Target:
    """gemma.yaml; for generate/export the run it trained, once that run has a checkpoint."""
    t = _named(LOCAL_CONFIG, overrides, verb, FROM_LOCAL)
    if verb in _NEEDS_CHECKPOINT:
        out = t.config.output_dir
        if (out / "config.yaml").exists() and _latest_checkpoint(out) is not None:
            return _run_target(out, overrides, verb, f"the run of {LOCAL_CONFIG}", str(out))
    return t


def _recent_run(overrides: list[str], verb: str) -> tuple[Target | None, str]:
    """The most recent usable run under runs/, and a note on newer ones that were skipped."""
    from gemma_cli import rundir

    skipped: list[str] = []
    for run in rundir.list_runs(RUNS_DIR):
        if run.status == "broken":
            skipped.append(f"{run.path} is broken: {run.reason}")
            continue
        if verb in _NEEDS_CHECKPOINT and run.checkpoint is None:
            skipped.append(f"{run.path} has no checkpoint yet")
            continue
        because = FROM_RUNS + ("; skipped newer: " + "; ".join(skipped) if skipped else "")
        return _run_target(Path(run.path), overrides, verb, because, run.path), ""
    return None, "; ".join(skipped)


def resolve(arg: str | None, overrides: list[str] | None = None, *, verb: str, log: Any = None) -> Target:
    """The target of `verb`: the one named, else the first default found (said on `log`).

    Args:
        arg: str | None. CONFIG / RUN / PRESET as typed, or None when omitted.
        overrides: list[str] | None. `key=value` items applied to the config.
        verb: str. "inspect", "generate", "export" or "config" (what is accepted differs).
        log: object with `.info`. Where the choice of a default is said. Defaults to silent.

    Raises:
        UsageError: nothing named and nothing found (exit 2, naming the three places), or
            $GEMMA_CONFIG naming a file that does not exist, or a bad argument.
    """
    arg, items = split_overrides(arg, overrides)
    if arg is not None:
        return _named(arg, items, verb)
    t = _default(items, verb)
    if log is not None:
        log.info(t.describe())
    return t


def _default(items: list[str], verb: str) -> Target:
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        p = Path(env).expanduser()
        if not p.exists():
            raise UsageError(
                f"${ENV_VAR} names {env}, which does not exist",
                hint=f"unset {ENV_VAR} or point it at a run config or a run directory",
            )
        if not (p.is_file() or (p / "config.yaml").exists()):
            raise UsageError(f"${ENV_VAR} names {env}, which is neither a run config nor a run directory")
        return _named(env, items, verb, FROM_ENV)
    if Path(LOCAL_CONFIG).is_file():
        return _local_target(items, verb)
    t, skipped = _recent_run(items, verb)
    if t is not None:
        return t
    runs = f"no run under {RUNS_DIR}/" if not skipped else f"no usable run under {RUNS_DIR}/ ({skipped})"
    if verb in _NEEDS_CHECKPOINT and not skipped:
        runs = f"no run with a checkpoint under {RUNS_DIR}/"
    raise UsageError(
        f"no CONFIG given and none found: ${ENV_VAR} is not set, no {LOCAL_CONFIG} in "
        f"{Path.cwd()}, {runs}",
        hint=f"name one (gemma {_USAGE[verb]}), or write {LOCAL_CONFIG} with `gemma init`",
    )


def default_source() -> str | None:
    """The file the default is read from when it is a file: $GEMMA_CONFIG or ./gemma.yaml."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return env
    return LOCAL_CONFIG if Path(LOCAL_CONFIG).is_file() else None


def run_dir_config(run_dir: Path, overrides: list[str], *, resume: bool | str) -> tuple[str, list[str]]:
    """`gemma finetune RUN_DIR --resume`: the run's saved config.yaml (its train.output_dir
    pointed at RUN_DIR when it names another place, as a run dir moved or named from another
    directory), and the overrides."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise UsageError(f"{run_dir}: a directory without config.yaml is not a run directory",
                         hint="give the run config (a .yaml), or the train.output_dir of a run to continue it")
    if not resume:
        raise UsageError(f"{run_dir} is a run directory: add --resume (or --resume auto) to continue it",
                         hint=f"to start a new run from its config: gemma finetune {saved} train.output_dir=<new dir>")
    from gemma_cli.config import load_config

    out = load_config(str(saved)).output_dir
    if out.resolve() != run_dir.resolve():
        overrides = [f"train.output_dir={run_dir}", *overrides]
    return str(saved), overrides


def finetune_config(arg: str | None) -> str:
    """`gemma finetune` needs its CONFIG named (starting a run is explicit); say how."""
    if arg is not None and not (_OVERRIDE.match(arg) and not Path(arg).exists()):
        return arg
    if Path(LOCAL_CONFIG).is_file():
        hint = f"to train {LOCAL_CONFIG} of this directory: gemma finetune {LOCAL_CONFIG}"
    else:
        hint = f"e.g. gemma finetune configs/x.yaml; `gemma init` writes a {LOCAL_CONFIG} to start from"
    raise UsageError("gemma finetune needs the run config to train (CONFIG is not looked up)", hint=hint)
