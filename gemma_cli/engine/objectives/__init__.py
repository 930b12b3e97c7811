"""Training objectives: what a training step minimises, and what else it measures.

An `Objective` turns one batch and the model's output into `(loss, {name: value})`: the scalar
the optimizer minimises and the auxiliary metrics the method wants to show (DPO's reward
margin, GRPO's KL). It is installed on a compiled keras-hub CausalLM by one mechanism,
`engine/patches/objective.py`, and its metrics then flow, by name, into the logs keras hands
the training hooks: `metrics.jsonl`, TensorBoard, the progress line, the eval results,
`summary.json` and `gemma runs show` (`engine/train/hooks.py`), with no hook knowing them.

Objectives are pure functions of tensors: they import keras/jax inside their methods and
nothing from the layers above (model loading, data, training loops).

Example:
    >>> from gemma_cli.engine.objectives.cross_entropy import CrossEntropy
    >>> obj = CrossEntropy(chunk=256)     # masked next-token cross-entropy, 256 positions a chunk
    >>> obj.metric_names                  # no auxiliary metrics
    ()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Output:
    """What an objective computed for one batch.

    Args:
        loss: tensor. The scalar to minimise (reduced as keras reduces a compiled loss).
        metrics: dict[str, tensor]. Auxiliary scalars, keyed by the names in
            `Objective.metric_names` (each averaged over steps like the loss). Defaults to {}.
        matches: tensor | None. 1.0/0.0 per target token where the argmax is the label, for
            the accuracy metric when the objective never materialises full logits. Defaults
            to None (the accuracy is computed from the logits, if any).
    """

    loss: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    matches: Any = None


class Objective:
    """The interface: `compute(model, x, y, y_pred, sample_weight, training) -> Output`.

    Attributes:
        name: str. Short name (`cross_entropy`, `dpo`), shown in logs.
        metric_names: tuple[str, ...]. The auxiliary metrics `compute` returns, every step,
            always the same names (keras traces the step once).
        wants_logits: bool. Whether the model's forward should return logits [B, S, V]
            (True), or the backbone's hidden states [B, S, H], for objectives that apply the
            output head themselves (chunked losses). Defaults to True.
        batch_keys: tuple[str, ...]. Inputs of the batch `x` that only the objective reads
            (GRPO's `advantages`); the model's forward never sees them. Defaults to ().
    """

    name: str = "objective"
    metric_names: tuple[str, ...] = ()
    wants_logits: bool = True
    batch_keys: tuple[str, ...] = ()

    def compute(self, model: Any, x: Any, y: Any, y_pred: Any, sample_weight: Any, training: bool) -> Output:
        """The loss and metrics of one batch (traced inside the compiled train/eval step).

        Args:
            model: keras_hub.models.CausalLM. The model being trained (its compiled loss object
                is `model.loss`; its head is `model.backbone.token_embedding`).
            x: dict. The batch inputs (`token_ids`, `padding_mask`, ...).
            y: tensor. The labels.
            y_pred: tensor. The forward's output: logits or hidden states (`wants_logits`).
            sample_weight: tensor | None. Per-token weights (0 drops a token).
            training: bool. Training (True) or evaluation.
        """
        raise NotImplementedError
