"""TensorBoard scalars without TensorFlow: the `tensorboard` package's own event writer.

`tf.summary` would import TensorFlow (seconds, and absent on many JAX machines); the event
files written here are the same format and TensorBoard reads them as usual.
"""

from __future__ import annotations

import time
from pathlib import Path


class ScalarWriter:
    """Append scalar summaries to an event file in `logdir`.

    Args:
        logdir: Path. The run's `tensorboard/` directory (created).

    Example:
        >>> w = ScalarWriter(Path("runs/x/tensorboard"))
        >>> w.scalars(10, {"train/loss": 2.3})
        >>> w.close()
    """

    def __init__(self, logdir: Path):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        Path(logdir).mkdir(parents=True, exist_ok=True)
        self._w = EventFileWriter(str(logdir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()]
        )
        self._w.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
        self._w.flush()

    def close(self) -> None:
        self._w.close()
