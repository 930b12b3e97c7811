"""The training loop's hooks: small keras callbacks, one job each, sharing a `RunState`.

- `StepTracker`: counts steps; at sync points reads keras' running means (the loss and every
  auxiliary metric of the objective, by name) into per-window values.
- `DivergenceGuard`: a non-finite loss stops the run.
- `ProgressView`: the reporter's progress display, and a line per log window without one.
- `MetricsLog`: `metrics.jsonl` and the trackers of `train.report_to` (TensorBoard, wandb,
  mlflow: `trackers.py`), one record per `train.log_every`.

Metrics are a dict end to end: whatever names the objective declares (`RunState.metric_names`)
reach `metrics.jsonl`, TensorBoard (`train/<name>`, `eval/<name>`), the progress line, the eval
results and `summary.json` without any hook knowing them.
- `Evaluation`: the eval loss at step 0 (the baseline), every `train.eval_every`, and at the end.
- `Checkpointing`: a checkpoint every `train.checkpoint_every` (and on demand at the end).
- `StopOnSignal`: SIGTERM/SIGINT finish the step, then stop (a second Ctrl-C aborts).
- `loss_plot`: `loss.png` from the history, at the end.

`HookList` runs them in order after every step with the raw (on-device) logs: nothing is
copied to the host unless a hook needs a value, so the device is synchronised only at log,
eval, checkpoint and stop points rather than every step.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from gemma_cli.engine.core.report import Reporter
from gemma_cli.engine.train.state import RunState


class HookList(keras.callbacks.CallbackList):
    """keras' CallbackList, but per-step hooks get the logs as they are (no host copy)."""

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        for cb in self.callbacks:
            cb.on_train_batch_end(batch, logs=logs)


class Schedule:
    """Which steps are sync points, from the train config."""

    def __init__(self, train_cfg: Any, total: int, has_eval: bool):
        self.t, self.total, self.has_eval = train_cfg, total, has_eval

    def log(self, step: int) -> bool:
        return step % self.t.log_every == 0 or step == self.total

    def eval(self, step: int) -> bool:
        return bool(self.has_eval and self.t.eval_every and step % self.t.eval_every == 0)

    def checkpoint(self, step: int) -> bool:
        return bool(self.t.checkpoint_every and step % self.t.checkpoint_every == 0 and step < self.total)


class StepTracker(keras.callbacks.Callback):
    def __init__(self, state: RunState, schedule: Schedule, stopper: StopOnSignal):
        super().__init__()
        self.state, self.schedule, self.stopper = state, schedule, stopper
        self.synced = False  # whether this step's loss was read

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        st = self.state
        st.step = st.start + batch + 1
        s = st.step
        self.synced = False
        if self.stopper.signal and not st.stop_signal:
            st.stop_signal = self.stopper.signal  # this step is the last one
        if (
            st.time_to_first_step is None
            or self.schedule.log(s)
            or self.schedule.eval(s)
            or self.schedule.checkpoint(s)
            or st.stop_signal
        ):
            st.record_sync(read_means(logs, st.metric_names), time.time())  # the one host sync
            self.synced = True


def read_means(logs: Any, names: tuple[str, ...]) -> dict[str, float]:
    """keras' running means of `names` from a step's logs, copied to the host in one transfer
    (a name missing from the logs reads NaN)."""
    import jax

    logs = logs or {}
    values = jax.device_get({n: logs[n] for n in names if n in logs})
    return {n: float(values[n]) if n in values else math.nan for n in names}


def format_metrics(values: dict[str, float], skip: tuple[str, ...] = ("loss",)) -> str:
    """`name 0.1234  other 5.678` for the progress line (the loss has its own column)."""
    return "  ".join(f"{k} {v:.4g}" for k, v in values.items() if k not in skip)


class DivergenceGuard(keras.callbacks.Callback):
    def __init__(self, state: RunState, tracker: StepTracker):
        super().__init__()
        self.state, self.tracker = state, tracker

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self.tracker.synced and not math.isfinite(self.state.last_loss):
            self.state.diverged = f"loss became {self.state.last_loss}"
            self.model.stop_training = True


class ProgressView(keras.callbacks.Callback):
    def __init__(self, state: RunState, reporter: Reporter, tracker: StepTracker, schedule: Schedule, show: bool):
        super().__init__()
        self.state, self.reporter, self.tracker, self.schedule, self.show = state, reporter, tracker, schedule, show
        self.bar: Any = None

    def on_train_begin(self, logs: Any = None) -> None:
        if self.show:
            self.bar = self.reporter.progress(self.state.total, self.state.start)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self.bar is None or self.state.diverged:
            return
        st = self.state
        if self.bar.live:
            fields = {"tps": f"{st.tokens_per_second:,.0f}"} if self.tracker.synced else {}
            if self.tracker.synced:
                fields["loss"] = f"{st.last_loss:.4f}"
                if len(st.last) > 1:
                    fields["metrics"] = format_metrics(st.last)
            self.bar.update(st.step, **fields)

    def note(self, message: str) -> None:
        if self.bar is not None:
            self.bar.note(message)
        else:
            self.reporter.info(message)

    def log_line(self, rec: dict[str, Any]) -> None:
        if self.bar is not None and not self.bar.live:
            extra = format_metrics({k: rec[k] for k in self.state.metric_names})
            self.reporter.info(
                f"step {rec['step']}/{self.state.total}  loss {rec['loss']:.4f}  lr {rec['learning_rate']:.2e}  "
                f"{rec['tokens_per_second']:,.0f} tok/s" + (f"  {extra}" if extra else "")
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class MetricsLog(keras.callbacks.Callback):
    """metrics.jsonl (appended, flushed per line) and the trackers of `train.report_to`
    (engine/train/trackers.py: TensorBoard, wandb, mlflow), main process only.

    Args:
        report_to: list[str]. The trackers; `["tensorboard"]` when None.
        run_name: str. The run's name for the trackers.
        config: dict. The resolved run config, handed to each tracker when training begins.
    """

    def __init__(self, state: RunState, out_dir: Path, schedule: Schedule, view: ProgressView, write: bool, reporter: Reporter,
                 report_to: list[str] | None = None, run_name: str = "run", config: dict[str, Any] | None = None):
        super().__init__()
        self.state, self.out_dir, self.schedule, self.view, self.write = state, Path(out_dir), schedule, view, write
        self.reporter = reporter
        self.report_to = list(report_to) if report_to is not None else ["tensorboard"]
        self.run_name, self.config = run_name, config or {}
        self._f: Any = None
        self.trackers: list[Any] = []

    def on_train_begin(self, logs: Any = None) -> None:
        if not self.write:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "metrics.jsonl"
        if self.state.start and path.exists():
            keep_metrics_until(path, self.state.start)
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self.state.files["metrics"] = str(self.out_dir / "metrics.jsonl")
        from gemma_cli.engine.train import trackers

        if "tensorboard" in trackers.chosen(self.report_to):
            self.state.files["tensorboard"] = str(self.out_dir / "tensorboard")
        self.trackers = trackers.build(self.report_to, self.out_dir, self.run_name, warn=self.reporter.warn)
        for t in self.trackers:
            t.start(self.config)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        st = self.state
        if st.diverged or not self.schedule.log(st.step):
            return
        tps = st.tokens_per_second
        window = st.take_window()
        rec = {
            "step": st.step,
            "loss": window.pop("loss"),
            "last_loss": st.last_loss,
            "learning_rate": learning_rate(self.model),
            "tokens_per_second": round(tps, 1),
            "useful_tokens_per_second": round(tps * st.useful_tokens_per_step / max(st.tokens_per_step, 1), 1),
            "elapsed": round(time.time() - st.t0, 3),
            **window,  # the objective's auxiliary metrics, by their names
        }
        st.history.append(rec)
        self.emit(rec, {"train/loss": rec["loss"], "train/learning_rate": rec["learning_rate"], "train/tokens_per_second": tps,
                        **{f"train/{k}": v for k, v in window.items()}})
        self.view.log_line(rec)

    def emit(self, rec: dict[str, Any], scalars: dict[str, float]) -> None:
        if self._f is not None:
            self._f.write(json.dumps(rec) + "\n")
            self._f.flush()
        for t in self.trackers:
            t.log(rec["step"], scalars)

    def close(self) -> None:
        """Close metrics.jsonl (the trackers stay open for the final eval and the summary)."""
        if self._f is not None:
            self._f.close()
            self._f = None

    def finish(self, summary: dict[str, Any] | None) -> None:
        """Hand the trackers the run's summary (None after a failure) and close them."""
        trackers, self.trackers = self.trackers, []
        for t in trackers:
            try:
                if summary is not None:
                    t.finish(summary)
            finally:
                t.close()


def keep_metrics_until(path: Path, step: int) -> None:
    """Before a resumed run appends: keep the whole lines of steps up to `step` (the
    checkpoint it resumes from). A killed run may have left a cut line, and lines of the
    steps after its last checkpoint, which the resumed run writes again."""
    from gemma_cli.engine.core.files import atomic_write

    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and isinstance(rec, dict) and rec.get("step", 0) <= step:
            kept.append(line)
    atomic_write(path, "".join(kept))


def learning_rate(model: Any) -> float:
    opt = model.optimizer
    try:
        lr = opt.learning_rate
        return float(lr(opt.iterations) if callable(lr) else lr)
    except Exception:  # noqa: BLE001 — a report value, never a failure
        return float("nan")


class Evaluation(keras.callbacks.Callback):
    """Evaluation at eval_every steps (and step 0): keras' `evaluate` on the eval data, or a
    method's own `custom() -> {name: value}` (GRPO scores greedy completions with its rewards)."""

    def __init__(self, state: RunState, eval_data: Any, schedule: Schedule, metrics: MetricsLog, view: ProgressView):
        super().__init__()
        self.state, self.data, self.schedule, self.metrics, self.view = state, eval_data, schedule, metrics, view
        self.custom: Callable[[], dict[str, float]] | None = None

    def on_train_begin(self, logs: Any = None) -> None:
        if self.data is not None and self.state.start == 0:
            self.run()  # the baseline: eval loss before any update

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if not self.state.diverged and self.schedule.eval(self.state.step):
            self.run()

    def run(self) -> float | None:
        st = self.state
        self.model.jax_state_sync()
        if self.custom is not None:
            return self._run_custom()
        res = self.model.evaluate(self.data, verbose=0, return_dict=True)
        st.metrics_reset()  # evaluate() reset the train metrics
        aux = {n: float(res[n]) for n in st.metric_names if n != "loss" and n in res}
        ev = {
            "step": st.step,
            "eval_loss": float(res["loss"]),
            "eval_accuracy": float(res.get("sparse_categorical_accuracy", float("nan"))),
            **{f"eval_{n}": v for n, v in aux.items()},
        }
        st.evals.append(ev)
        self.metrics.emit(ev, {"eval/loss": ev["eval_loss"], **{f"eval/{n}": v for n, v in aux.items()}})
        extra = format_metrics(aux)
        self.view.note(f"eval at step {st.step}: loss {ev['eval_loss']:.4f}" + (f"  {extra}" if extra else ""))
        st.t_sync = time.time()  # evaluation time is not step time
        return ev["eval_loss"]

    def _run_custom(self) -> float | None:
        st = self.state
        assert self.custom is not None
        res = self.custom()
        st.metrics_reset()  # the method reset its running means, as evaluate() does
        ev = {"step": st.step, **{f"eval_{k}": float(v) for k, v in res.items()}}
        st.evals.append(ev)
        self.metrics.emit(ev, {f"eval/{k}": float(v) for k, v in res.items()})
        self.view.note(f"eval at step {st.step}: {format_metrics(res, skip=())}")
        st.t_sync = time.time()
        return ev.get("eval_loss")

    def final(self) -> float | None:
        """The eval loss at the last step (evaluating once more if needed)."""
        if self.data is None:
            return None
        if not self.state.evals or self.state.evals[-1]["step"] != self.state.step:
            self.run()
        return self.state.evals[-1].get("eval_loss")


def all_finite(variables: list[Any]) -> bool:
    """Whether every element of every float variable is finite (one reduction per variable)."""
    from keras import ops

    return all(bool(ops.all(ops.isfinite(v.value))) for v in variables if "float" in str(v.dtype))


class Checkpointing(keras.callbacks.Callback):
    """Writes through `save(step, loss) -> Path` after checking the weights are finite."""

    def __init__(self, state: RunState, schedule: Schedule, save: Callable[[int, float], Path], view: ProgressView):
        super().__init__()
        self.state, self.schedule, self._save, self.view = state, schedule, save, view

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if not self.state.diverged and self.schedule.checkpoint(self.state.step):
            self.save_now()

    def save_now(self) -> Path | None:
        st = self.state
        self.model.jax_state_sync()
        # the loss of step k was computed before update k: an update that overflowed shows
        # only in the weights, and a checkpoint of them would be kept as "last good"
        if not all_finite(self.model.trainable_variables):
            st.diverged = "the weights became NaN/inf"
            self.model.stop_training = True
            return None
        path = self._save(st.step, st.last_loss)
        st.last_saved = st.step
        self.view.note(f"checkpoint step {st.step} → {path}")
        st.t_sync = time.time()
        return path


class StopOnSignal(keras.callbacks.Callback):
    """SIGTERM/SIGINT → finish the step, then stop; a second Ctrl-C aborts at once.

    Also a context manager installing the handlers for the duration of training.
    """

    def __init__(self, state: RunState, reporter: Reporter):
        super().__init__()
        self.state, self.reporter = state, reporter
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self.state.stop_signal and not self.model.stop_training:
            self.reporter.warn(f"{self.state.stop_signal}: stopping after step {self.state.step}, saving a checkpoint")
            self.model.stop_training = True


def loss_plot(state: RunState, out_dir: Path, title: str) -> str | None:
    """Write `loss.png` (train loss per log window, eval loss) atomically; None without matplotlib."""
    if not state.history:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rewards = [h for h in state.history if "reward" in h]  # GRPO: the reward curve beside the loss
    fig, axes = plt.subplots(1, 2 if rewards else 1, figsize=(11 if rewards else 6, 3.5), dpi=100, squeeze=False)
    ax = axes[0][0]
    ax.plot([h["step"] for h in state.history], [h["loss"] for h in state.history], label="train loss")
    evals = [e for e in state.evals if "eval_loss" in e]
    if evals:
        ax.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    if rewards:
        rx = axes[0][1]
        rx.plot([h["step"] for h in rewards], [h["reward"] for h in rewards], label="reward (rollouts)")
        ev = [e for e in state.evals if "eval_reward" in e]
        if ev:
            rx.plot([e["step"] for e in ev], [e["eval_reward"] for e in ev], "o-", label="eval reward (greedy)")
        rx.set_xlabel("step")
        rx.set_ylabel("reward")
        rx.legend()
    fig.tight_layout()
    path = Path(out_dir) / "loss.png"
    tmp = Path(out_dir) / ".loss.png.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return str(path)
