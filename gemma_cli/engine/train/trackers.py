"""Experiment trackers (`train.report_to`): TensorBoard, Weights & Biases, MLflow.

Each tracker gets, through one interface:
- `start(config)`: the resolved run config (a nested dict) when training begins;
- `log(step, scalars)`: every metric of a log window or an evaluation, by name
  (`train/loss`, `train/learning_rate`, `train/<aux metric>`, `eval/loss`, ...);
- `finish(summary)`: the run's summary (`summary.json`'s content) at the end;
- `close()`: always, also after a failure.

`metrics.jsonl` is written whatever `report_to` says (the run directory's own record); trackers
only add sinks. wandb and mlflow are imported only when chosen; `missing(report_to)` says,
without importing them, which chosen ones are not installed (the CLI's preflight turns that into
exit 2 before the model loads). Only the main process reports.

Where each writes:
- tensorboard: `RUN/tensorboard/` event files (the `tensorboard` package's writer, no TensorFlow).
- wandb: `wandb.init(project=$WANDB_PROJECT or "gemma", name=<config name>, dir=RUN)`;
  `WANDB_MODE=offline` writes `RUN/wandb/offline-run-*` for a later `wandb sync`.
- mlflow: the tracking URI from `MLFLOW_TRACKING_URI` (MLflow's default `./mlruns` otherwise),
  experiment `$MLFLOW_EXPERIMENT_NAME` or "gemma"; the config as flattened params, the summary
  as `summary.json` and its numbers as metrics.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

EXTRAS = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}  # tracker → (module, extra)


def chosen(report_to: list[str] | tuple[str, ...]) -> list[str]:
    """The trackers of `train.report_to`, `none` meaning none."""
    return [] if "none" in report_to else list(dict.fromkeys(report_to))


def missing(report_to: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """(tracker, extra to install) for each chosen tracker whose package is not installed."""
    out = []
    for name in chosen(report_to):
        if name in EXTRAS:
            module, extra = EXTRAS[name]
            if importlib.util.find_spec(module) is None:
                out.append((name, extra))
    return out


class Tracker:
    """One sink of a run's metrics (see the module docstring)."""

    name = ""

    def start(self, config: dict[str, Any]) -> None:
        pass

    def log(self, step: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def finish(self, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    """Scalars into `RUN/tensorboard/` event files."""

    name = "tensorboard"

    def __init__(self, out_dir: Path):
        from gemma_cli.engine.train.tensorboard import ScalarWriter

        self._w: Any = ScalarWriter(Path(out_dir) / "tensorboard")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self._w is not None:
            self._w.scalars(step, scalars)

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


class WandbTracker(Tracker):
    """A Weights & Biases run (online, or offline files with `WANDB_MODE=offline`)."""

    name = "wandb"

    def __init__(self, out_dir: Path, run_name: str):
        import wandb

        self._wandb = wandb
        self.out_dir, self.run_name = Path(out_dir), run_name
        self._run: Any = None

    def start(self, config: dict[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._run = self._wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "gemma", name=self.run_name, dir=str(self.out_dir),
            config=config, reinit=True,
        )

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self._run is not None:
            self._run.log(dict(scalars), step=int(step))

    def finish(self, summary: dict[str, Any]) -> None:
        if self._run is not None:
            self._run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))})

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"optimizer": {"learning_rate": 1e-4}}` → `{"optimizer.learning_rate": 1e-4}`."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class MlflowTracker(Tracker):
    """An MLflow run in the tracking store `MLFLOW_TRACKING_URI` names (a server or a folder)."""

    name = "mlflow"

    def __init__(self, out_dir: Path, run_name: str):
        import mlflow

        self._mlflow = mlflow
        self.run_name = run_name
        self._run: Any = None

    def start(self, config: dict[str, Any]) -> None:
        mlflow = self._mlflow
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "gemma")
        self._run = mlflow.start_run(run_name=self.run_name)
        params = {k: ("" if v is None else str(v))[:500] for k, v in flatten(config).items()}
        mlflow.log_params(params)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self._run is not None:
            self._mlflow.log_metrics({k: float(v) for k, v in scalars.items()}, step=int(step))

    def finish(self, summary: dict[str, Any]) -> None:
        if self._run is None:
            return
        self._mlflow.log_dict(summary, "summary.json")
        nums = {f"summary/{k}": float(v) for k, v in summary.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
        if nums:
            self._mlflow.log_metrics(nums)

    def close(self) -> None:
        if self._run is not None:
            self._mlflow.end_run()
            self._run = None


def build(report_to: list[str] | tuple[str, ...], out_dir: Path, run_name: str, warn: Any = None) -> list[Tracker]:
    """The trackers `report_to` names. TensorBoard failing to start is a warning (a nicety);
    wandb or mlflow failing to start is an error: the user asked for that record."""
    from gemma_cli.errors import UsageError

    out: list[Tracker] = []
    for name in chosen(report_to):
        if name == "tensorboard":
            try:
                out.append(TensorBoardTracker(out_dir))
            except Exception as e:  # noqa: BLE001 — TensorBoard is a nicety, never a failure
                if warn is not None:
                    warn(f"TensorBoard disabled: {e}")
            continue
        try:
            out.append(WandbTracker(out_dir, run_name) if name == "wandb" else MlflowTracker(out_dir, run_name))
        except ImportError:
            extra = EXTRAS[name][1]
            raise UsageError(f"train.report_to: {name} is not installed", hint=f"pip install 'gemma-cli[{extra}]'") from None
    return out
