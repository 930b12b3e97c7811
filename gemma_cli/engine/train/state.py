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
    step: int = 0
    last_loss: float = math.nan
    diverged: str | None = None
    stop_signal: str | None = None
    last_saved: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    # the keras running mean at the last sync: its value and how many steps it covered
    mean_at_sync: float = 0.0
    steps_in_mean: int = 0
    synced_step: int = 0
    # the log window: the sum of per-step losses and their count since the last log line
    window_sum: float = 0.0
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

    def metrics_reset(self) -> None:
        """keras reset its metrics (an evaluation ran): its running mean starts again."""
        self.mean_at_sync, self.steps_in_mean = 0.0, 0

    def record_sync(self, mean: float, now: float) -> float:
        """Take keras' running mean at the current step; return the mean loss since the last sync."""
        k = self.step - self.synced_step
        if k <= 0:
            return self.last_loss
        n = self.steps_in_mean + k
        loss = (mean * n - self.mean_at_sync * self.steps_in_mean) / k if self.steps_in_mean else mean
        self.mean_at_sync, self.steps_in_mean = mean, n
        if self.time_to_first_step is None:
            self.time_to_first_step = now - self.t0  # includes compilation
        else:
            self.steps_timed += k
            self.time_timed += now - self.t_sync
        self.t_sync = now
        self.synced_step = self.step
        self.last_loss = loss
        self.window_sum += loss * k
        self.window_steps += k
        return loss

    def take_window(self) -> float:
        """The mean loss of the log window, and start a new window."""
        mean = self.window_sum / self.window_steps if self.window_steps else self.last_loss
        self.window_sum, self.window_steps = 0.0, 0
        return mean
