"""The training callback: Rich progress on stderr, metrics JSONL, TensorBoard, eval, checkpoints.

Keras' running-mean loss is turned back into per-step losses; the JSONL gets one line every
`train.log_every` steps with the window's mean loss, tokens/s and learning rate.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras


def _all_finite(variables: list[Any]) -> bool:
    """Whether every element of every variable is finite (one reduction per variable)."""
    from keras import ops

    return all(bool(ops.all(ops.isfinite(v.value))) for v in variables if "float" in str(v.dtype))


class TrainCallback(keras.callbacks.Callback):
    def __init__(
        self,
        *,
        cfg: Any,
        log: Any,
        out_dir: Path,
        start: int,
        total: int,
        tokens_per_step: int,
        useful_tokens_per_step: float,
        eval_ds: Any,
        stopper: Any,
        main: bool,
        save: Callable[[int, float], Path],
    ):
        super().__init__()
        self.cfg, self.log, self.out_dir = cfg, log, Path(out_dir)
        self.start, self.total, self.step = start, total, start
        self.tokens_per_step, self.useful_per_step = tokens_per_step, useful_tokens_per_step
        self.eval_ds, self.stopper, self.main, self._save = eval_ds, stopper, main, save
        self.diverged: str | None = None
        self.last_saved = start
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self._n = 0  # batches in keras' current running mean
        self._prev_mean = 0.0
        self._window: list[float] = []
        self._last_loss = float("nan")
        self._t0 = time.time()
        self._t_first: float | None = None
        self._t_window = time.time()
        self._steps_timed = 0
        self._time_timed = 0.0
        self._progress = None
        self._task = None
        self._metrics_f = None
        self._tb = None

    # --------------------------------------------------------------------------- setup ---
    def on_train_begin(self, logs: Any = None) -> None:
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._metrics_f = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            try:
                import tensorflow as tf

                self._tb = tf.summary.create_file_writer(str(self.out_dir / "tensorboard"))
            except Exception as e:  # TensorBoard is a nicety, never a failure
                self.log.warn(f"TensorBoard disabled: {e}")
        # a live bar on a terminal; plain lines every log_every steps in logs and pipes
        if self.log.show_progress and self.main and self.log.err.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.log.err,
                transient=False,
                refresh_per_second=4,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.total, completed=self.start, loss="-", tps="-")
        if self.eval_ds is not None and self.start == 0:
            self.evaluate()  # the baseline: eval loss before any update

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._metrics_f is not None:
            self._metrics_f.close()
            self._metrics_f = None
        if self._tb is not None:
            self._tb.flush()

    # ------------------------------------------------------------------------- per step ---
    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        logs = logs or {}
        now = time.time()
        new_step = self.start + batch + 1
        k = max(new_step - self.step, 1)
        self.step = new_step
        mean = float(logs.get("loss", float("nan")))
        n_new = self._n + k
        # keras reports the running mean since the last metrics reset
        loss = (mean * n_new - self._prev_mean * self._n) / k if self._n else mean
        self._n, self._prev_mean = n_new, mean
        self._last_loss = loss
        if self._t_first is None:
            self._t_first = now - self._t0  # includes compilation
            self._t_window = now
        else:
            self._steps_timed += k
            self._time_timed += now - self._t_window
            self._t_window = now
        self._window.append(loss)
        if not math.isfinite(loss):
            self.diverged = f"loss became {loss}"
            self.model.stop_training = True
            return
        tps = self.tokens_per_step / (self._time_timed / self._steps_timed) if self._steps_timed else 0.0
        if self._progress is not None:
            self._progress.update(self._task, completed=self.step, loss=f"{loss:.4f}", tps=f"{tps:,.0f}")
        t = self.cfg.train
        if self.step % t.log_every == 0 or self.step == self.total:
            self._write_metrics(tps)
        if t.eval_every and self.eval_ds is not None and self.step % t.eval_every == 0:
            self.evaluate()
        if t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.step < self.total:
            self.save_now()
        if self.stopper.signal:
            self.log.warn(f"{self.stopper.signal}: stopping after step {self.step}, saving a checkpoint")
            self.model.stop_training = True

    def _write_metrics(self, tps: float) -> None:
        window = self._window
        self._window = []
        lr = self._lr()
        rec = {
            "step": self.step,
            "loss": sum(window) / len(window),
            "last_loss": self._last_loss,
            "learning_rate": lr,
            "tokens_per_second": round(tps, 1),
            "useful_tokens_per_second": round(tps * self.useful_per_step / max(self.tokens_per_step, 1), 1),
            "elapsed": round(time.time() - self._t0, 3),
        }
        self.history.append(rec)
        if self._metrics_f is not None:
            self._metrics_f.write(json.dumps(rec) + "\n")
            self._metrics_f.flush()
        if self._tb is not None:
            import tensorflow as tf

            with self._tb.as_default(step=self.step):
                tf.summary.scalar("train/loss", rec["loss"])
                tf.summary.scalar("train/learning_rate", lr)
                tf.summary.scalar("train/tokens_per_second", tps)
        if self._progress is None:
            self.log.info(f"step {self.step}/{self.total}  loss {rec['loss']:.4f}  lr {lr:.2e}  {tps:,.0f} tok/s")

    def _lr(self) -> float:
        opt = self.model.optimizer
        try:
            lr = opt.learning_rate
            return float(lr(opt.iterations) if callable(lr) else lr)
        except Exception:
            return float("nan")

    def evaluate(self) -> float:
        self.model.jax_state_sync()
        res = self.model.evaluate(self.eval_ds, verbose=0, return_dict=True)
        # evaluate() reset the train metrics: keras' running mean starts again
        self._n, self._prev_mean = 0, 0.0
        ev = {"step": self.step, "eval_loss": float(res["loss"]), "eval_accuracy": float(res.get("sparse_categorical_accuracy", float("nan")))}
        self.evals.append(ev)
        if self._metrics_f is not None:
            self._metrics_f.write(json.dumps(ev) + "\n")
            self._metrics_f.flush()
        if self._tb is not None:
            import tensorflow as tf

            with self._tb.as_default(step=self.step):
                tf.summary.scalar("eval/loss", ev["eval_loss"])
        msg = f"eval at step {self.step}: loss {ev['eval_loss']:.4f}"
        if self._progress is not None:
            self._progress.console.print(msg)
        else:
            self.log.info(msg)
        return ev["eval_loss"]

    def save_now(self) -> Path | None:
        self.model.jax_state_sync()
        # the loss of step k was computed before update k: an update that overflowed shows
        # only in the weights, and a checkpoint of them would be kept as "last good"
        if not _all_finite(self.model.trainable_variables):
            self.diverged = "the weights became NaN/inf"
            self.model.stop_training = True
            return None
        path = self._save(self.step, self._last_loss)
        self.last_saved = self.step
        msg = f"checkpoint step {self.step} → {path}"
        if self._progress is not None:
            self._progress.console.print(msg)
        else:
            self.log.info(msg)
        return path

    # --------------------------------------------------------------------------- end ---
    def summary(self) -> dict[str, Any]:
        eval_loss = None
        if self.eval_ds is not None:
            if not self.evals or self.evals[-1]["step"] != self.step:
                self.evaluate()
            eval_loss = self.evals[-1]["eval_loss"]
        step_time = self._time_timed / self._steps_timed if self._steps_timed else None
        files = {"metrics": str(self.out_dir / "metrics.jsonl"), "tensorboard": str(self.out_dir / "tensorboard")}
        if self.main and self.history:
            png = self._plot()
            if png:
                files["loss_curve"] = png
        first_loss = self.history[0]["loss"] if self.history else None
        return {
            "steps": self.step,
            "total_steps": self.total,
            "first_loss": first_loss,
            "final_loss": self.history[-1]["loss"] if self.history else self._last_loss,
            "eval_loss": eval_loss,
            "evals": self.evals,
            "step_seconds": step_time,
            "tokens_per_second": (self.tokens_per_step / step_time) if step_time else None,
            "time_to_first_step": self._t_first,
            "files": files,
        }

    def _plot(self) -> str | None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot([h["step"] for h in self.history], [h["loss"] for h in self.history], label="train loss")
        if self.evals:
            ax.plot([e["step"] for e in self.evals], [e["eval_loss"] for e in self.evals], "o-", label="eval loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(self.cfg.name or "run")
        ax.legend()
        fig.tight_layout()
        path = self.out_dir / "loss.png"
        tmp = self.out_dir / ".loss.png.tmp.png"
        fig.savefig(tmp)
        plt.close(fig)
        tmp.replace(path)
        return str(path)
