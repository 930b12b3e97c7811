"""The run state of a fine-tune: plain data shared by the trainer and its hooks."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunState:
    """Where a run is. Written by the step tracker and the hooks, read by the summary.

    Losses: keras reports the running mean of the loss since its metrics were last reset
    (at the start and by every evaluation). The tracker reads that mean only at sync points
    (log, eval, checkpoint, stop, last step) and turns two readings into the mean of the
    steps between them, so the device is not synchronised every step.
    """

    start: int
    total: int
    tokens_per_step: int
    useful_tokens_per_step: float
    # what the tracker reads from keras' logs: the loss, then the objective's auxiliary metrics
    metric_names: tuple[str, ...] = ("loss",)
    step: int = 0
    diverged: str | None = None
    stop_signal: str | None = None
    last_saved: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    # keras' running means at the last sync (loss and every auxiliary metric), and how many
    # steps they covered
    mean_at_sync: dict[str, float] = field(default_factory=dict)
    steps_in_mean: int = 0
    synced_step: int = 0
    # the value of each metric over the steps since the previous sync
    last: dict[str, float] = field(default_factory=dict)
    # the log window: per metric, the sum of per-step values and their count since the last log line
    window_sum: dict[str, float] = field(default_factory=dict)
    window_steps: int = 0
    # timing
    t0: float = field(default_factory=time.time)
    time_to_first_step: float | None = None
    t_sync: float = 0.0
    steps_timed: int = 0
    time_timed: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.step = self.synced_step = self.last_saved = self.start

    @property
    def step_seconds(self) -> float | None:
        return self.time_timed / self.steps_timed if self.steps_timed else None

    @property
    def tokens_per_second(self) -> float:
        s = self.step_seconds
        return self.tokens_per_step / s if s else 0.0

    @property
    def last_loss(self) -> float:
        return self.last.get("loss", math.nan)

    def metrics_reset(self) -> None:
        """keras reset its metrics (an evaluation ran): its running means start again."""
        self.mean_at_sync, self.steps_in_mean = {}, 0

    def record_sync(self, means: dict[str, float] | float, now: float) -> float:
        """Take keras' running means at the current step (`{"loss": ..., "<metric>": ...}`, or
        the loss alone); return the mean loss since the last sync.

        Every metric is turned from a running mean into its mean over the steps since the
        previous sync the same way, so an objective's auxiliary metrics are logged per window
        exactly like the loss.
        """
        if not isinstance(means, dict):
            means = {"loss": float(means)}
        k = self.step - self.synced_step
        if k <= 0:
            return self.last_loss
        n = self.steps_in_mean + k
        for name, mean in means.items():
            before = self.mean_at_sync.get(name)
            value = (mean * n - before * self.steps_in_mean) / k if self.steps_in_mean and before is not None else mean
            self.last[name] = value
            self.window_sum[name] = self.window_sum.get(name, 0.0) + value * k
        self.mean_at_sync, self.steps_in_mean = dict(means), n
        if self.time_to_first_step is None:
            self.time_to_first_step = now - self.t0  # includes compilation
        else:
            self.steps_timed += k
            self.time_timed += now - self.t_sync
        self.t_sync = now
        self.synced_step = self.step
        self.window_steps += k
        return self.last_loss

    def take_window(self) -> dict[str, float]:
        """The mean of every metric over the log window (`loss` first), and start a new window."""
        if self.window_steps:
            out = {name: s / self.window_steps for name, s in self.window_sum.items()}
        else:
            out = dict(self.last)
        out.setdefault("loss", self.last_loss)
        self.window_sum, self.window_steps = {}, 0
        return {"loss": out.pop("loss"), **out}
