"""What a fine-tune run directory says about itself, read from the files the run writes.

A run (`train.output_dir`, by default `runs/<name>`) holds:

    config.yaml           the resolved config; (re)written when the run starts or resumes
    status.json           running | finished | interrupted | diverged (engine/core/status_file.py)
    metrics.jsonl         a train line every train.log_every steps, an eval line per evaluation
    summary.json          written once, when the run finished
    checkpoints/latest    the name of the newest complete checkpoint
    checkpoints/step_N/   state.json (step, loss, total_steps) + the adapter or the full model

`read_run(path)` turns that into a `RunInfo` of plain data and never raises for a bad
directory: what cannot be read or does not add up makes the status `broken`, with the reason.
Runs written before `status.json` existed get their status from `summary.json` (finished) or
its absence (interrupted). Plain Python: no keras, jax or tensorflow.

Example:
    >>> for run in list_runs("runs"):
    ...     print(run.name, run.status, run.steps, run.total_steps, run.checkpoint)
"""

from __future__ import annotations

import json
import math
import re
import socket
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gemma_cli.engine.core.status_file import STATUS_FILE

STATUSES = ("running", "finished", "interrupted", "diverged", "broken")
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
RUN_FILES = (CONFIG_FILE, STATUS_FILE, SUMMARY_FILE, METRICS_FILE, "checkpoints")
_STEP_DIR = re.compile(r"step_\d{8}")  # checkpoints being written are `step_N.tmp-*`


class _Broken(Exception):
    """A file of the run that cannot be read; the message is the reason shown."""


@dataclass
class RunInfo:
    """One run as `gemma runs` shows it.

    Args:
        name: str. The directory's name.
        path: str. The directory.
        status: str. One of `STATUSES`.
        reason: str | None. Why it is interrupted, diverged or broken.
        config_name: str | None. `name` in its config.
        preset: str | None. `model.preset` in its config.
        started: float | None. When it first started (epoch seconds).
        last_start: float | None. When it last started or resumed (orders "most recent").
        steps: int | None. Steps done (the furthest of metrics, checkpoints, summary).
        total_steps: int | None. Steps planned.
        train_loss: float | None. The last logged train loss.
        eval_loss: float | None. The last eval loss.
        checkpoint: str | None. The latest complete checkpoint directory.
        checkpoint_step: int | None. Its step.
    """

    name: str
    path: str
    status: str
    reason: str | None = None
    config_name: str | None = None
    preset: str | None = None
    started: float | None = None
    last_start: float | None = None
    steps: int | None = None
    total_steps: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    checkpoint: str | None = None
    checkpoint_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["started"] = _iso(self.started)
        d["last_start"] = _iso(self.last_start)
        for k in ("train_loss", "eval_loss"):  # NaN is not JSON
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = str(d[k])
        return d


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t).isoformat(timespec="seconds") if t else None


# ----------------------------------------------------------------------------- readers ---
def _json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise _Broken(f"{what}: cannot read ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError):
        raise _Broken(f"{what}: not valid JSON (half-written?)") from None


def _config(run: Path) -> Any:
    from gemma_cli.config import parse_config
    from gemma_cli.errors import ConfigError

    path = run / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _Broken(f"{CONFIG_FILE}: cannot read ({e})") from None
    try:
        return parse_config(text, CONFIG_FILE)
    except ConfigError as e:
        raise _Broken(e.problems[0] if e.problems else f"{CONFIG_FILE}: invalid") from None


def _metrics(run: Path) -> tuple[int | None, float | None, float | None]:
    """(last step, last train loss, last eval loss); a torn last line (a kill) is ignored."""
    path = run / METRICS_FILE
    if not path.exists():
        return None, None, None
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise _Broken(f"{METRICS_FILE}: cannot read ({e})") from None
    step = loss = eval_loss = None
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError
        except ValueError:
            if i == len(lines):
                break
            raise _Broken(f"{METRICS_FILE}:{i}: not a JSON object") from None
        if isinstance(rec.get("step"), int):
            step = rec["step"] if step is None else max(step, rec["step"])
        if isinstance(rec.get("loss"), (int, float)):
            loss = float(rec["loss"])
        if isinstance(rec.get("eval_loss"), (int, float)):
            eval_loss = float(rec["eval_loss"])
    return step, loss, eval_loss


def _checkpoint(run: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint `latest` names (checked whole), else None when there is none yet."""
    from gemma_cli.engine.model import checkpoint as ck

    root = ck.ckpt_root(run)
    if not root.exists():
        return None, None
    pointer = root / "latest"
    if pointer.exists():
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise _Broken(f"checkpoints/latest: cannot read ({e})") from None
        ckpt = root / name
        where = f"checkpoints/{name}"
        if not _STEP_DIR.fullmatch(name) or not ckpt.is_dir():
            raise _Broken(f"checkpoints/latest names {name or 'nothing'}, which does not exist")
    else:
        done = sorted(p for p in root.iterdir() if _STEP_DIR.fullmatch(p.name) and p.is_dir())
        if not done:
            return None, None
        ckpt, where = done[-1], f"checkpoints/{done[-1].name}"
    if not (ckpt / "state.json").exists():
        raise _Broken(f"{where}: no state.json (half-written?)")
    state = _json(ckpt / "state.json", f"{where}/state.json")
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise _Broken(f"{where}/state.json: no step")
    if not ((ckpt / ck.LORA_FILE).is_file() or (ckpt / ck.FULL_DIR).is_dir()):
        raise _Broken(f"{where}: neither {ck.LORA_FILE} nor {ck.FULL_DIR}/ (half-written?)")
    return ckpt, state


def _alive(status: dict[str, Any]) -> tuple[bool | None, str]:
    """Whether the process that wrote `running` is still there (None: another host)."""
    host, pid = status.get("host"), status.get("pid")
    if host and host != socket.gethostname():
        return None, f"on host {host}; not checked from here"
    if not isinstance(pid, int):
        return False, "status.json names no pid"
    try:
        import psutil

        proc = psutil.Process(pid)
        born = status.get("pid_started")
        if isinstance(born, (int, float)) and abs(proc.create_time() - born) > 2:
            return False, f"process {pid} ended without recording how (killed or crashed)"
        return True, f"pid {pid}"
    except Exception:  # noqa: BLE001 — psutil.NoSuchProcess, AccessDenied: not ours to run
        return False, f"process {pid} ended without recording how (killed or crashed)"


def read_run(path: str | Path) -> RunInfo:
    """Everything `gemma runs` shows about the run in `path`; a bad directory is `broken`."""
    run = Path(path)
    info = RunInfo(name=run.name, path=str(run), status="broken")
    try:
        _fill(run, info)
    except _Broken as e:
        info.status, info.reason = "broken", str(e)
    except OSError as e:  # a directory that vanished or cannot be listed
        info.status, info.reason = "broken", f"cannot read: {e.strerror or e}"
    return info


def _fill(run: Path, info: RunInfo) -> None:
    cfg_path = run / CONFIG_FILE
    if not run.is_dir():
        raise _Broken("not a directory")
    if not cfg_path.exists():
        raise _Broken(f"no {CONFIG_FILE} (not a run, or it stopped before training began)")
    info.last_start = cfg_path.stat().st_mtime
    info.started = info.last_start
    cfg = _config(run)
    info.config_name, info.preset = cfg.name, cfg.model.preset
    if cfg.train.max_steps:
        info.total_steps = cfg.train.max_steps * cfg.optimizer.gradient_accumulation_steps

    status = None
    if (run / STATUS_FILE).exists():
        status = _json(run / STATUS_FILE, STATUS_FILE)
        if not isinstance(status, dict) or status.get("status") not in STATUSES[:-1]:
            raise _Broken(f"{STATUS_FILE}: no known status")
        if isinstance(status.get("started"), (int, float)):
            info.started = float(status["started"])
        if isinstance(status.get("total_steps"), int):
            info.total_steps = status["total_steps"]
    summary = None
    if (run / SUMMARY_FILE).exists():
        summary = _json(run / SUMMARY_FILE, SUMMARY_FILE)
        if not isinstance(summary, dict):
            raise _Broken(f"{SUMMARY_FILE}: not a JSON object")
    m_step, info.train_loss, info.eval_loss = _metrics(run)
    ckpt, state = _checkpoint(run)
    steps = [s for s in (m_step, state and state["step"]) if isinstance(s, int)]
    if ckpt is not None and state is not None:
        info.checkpoint, info.checkpoint_step = str(ckpt), state["step"]
        if info.total_steps is None and isinstance(state.get("total_steps"), int):
            info.total_steps = state["total_steps"]
    if summary is not None:
        for key, attr in (("steps", None), ("total_steps", "total_steps"), ("final_loss", "train_loss"), ("eval_loss", "eval_loss")):
            v = summary.get(key)
            if key == "steps" and isinstance(v, int):
                steps.append(v)
            elif attr and isinstance(v, (int, float)):
                setattr(info, attr, v)
    if status is not None and isinstance(status.get("step"), int):
        steps.append(status["step"])
    info.steps = max(steps) if steps else 0

    if status is None:  # a run from before status.json
        if summary is not None:
            info.status = "finished"
        elif info.train_loss is not None and not math.isfinite(info.train_loss):
            info.status, info.reason = "diverged", "the logged loss is not finite"
        else:
            info.status, info.reason = "interrupted", f"no {SUMMARY_FILE}: it stopped before the end"
        return
    info.status, info.reason = status["status"], status.get("reason")
    if info.status == "running":
        alive, why = _alive(status)
        if alive is False:
            info.status, info.reason = "interrupted", why
        else:
            info.reason = why if alive is None else None
    elif info.status == "finished" and summary is None:
        raise _Broken(f"{STATUS_FILE} says finished but there is no {SUMMARY_FILE}")


def list_runs(root: str | Path = "runs") -> list[RunInfo]:
    """Every run directory directly under `root` (or `root` itself if it is one), newest first.

    Every visible subdirectory is listed, so that a stray or half-made one shows as `broken`.
    """
    base = Path(root)
    if not base.is_dir():
        return []
    if (base / CONFIG_FILE).exists() or (base / STATUS_FILE).exists():
        return [read_run(base)]
    runs = [read_run(p) for p in sorted(base.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return sorted(runs, key=lambda r: r.last_start or 0.0, reverse=True)


def find_run(name: str, root: str | Path = "runs") -> Path | None:
    """A run given as a directory, or by its name under `root`."""
    for p in (Path(name), Path(root) / name):
        if p.is_dir():
            return p
    return None
