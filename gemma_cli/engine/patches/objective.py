"""Install an objective (`engine/objectives/`) on a compiled keras-hub CausalLM.

keras' `fit`/`evaluate` call three methods of the model inside the traced step: `call` (the
forward), `compute_loss` and `compute_metrics`. `install(causal_lm, objective)` replaces them on
the instance — the one place the engine does so:

- `call` returns the backbone's hidden states when the objective applies the head itself
  (`objective.wants_logits` False: the chunked loss), the model's own forward otherwise;
- `compute_loss` returns the objective's loss (plus the model's regularisation losses) and
  feeds its auxiliary metrics to the `keras.metrics.Mean` trackers compiled under the same
  names (`metric_trackers`), and the accuracy from the objective's argmax matches;
- `compute_metrics` adds the accuracy from the logits when the objective gave no matches.
  keras then reports them, by name, in the logs the hooks read.

The model must be compiled with `metric_trackers(objective)` among its metrics (the run's
compile step does it: `engine/model/optimizer.py`). `uninstall` restores keras' own methods.
Generation is untouched: it does not go through `call`.

Guard: keras-hub's CausalLM must still route its forward through `call` and keras' trainer
through `compute_loss(x, y, y_pred, sample_weight, training)`; `install` checks the
signature and refuses with a clear error when a keras upgrade changed it.
"""

from __future__ import annotations

import inspect
from typing import Any

from gemma_cli.engine.objectives import Objective, Output
from gemma_cli.errors import RuntimeFailure


def metric_trackers(objective: Objective) -> list[Any]:
    """One `keras.metrics.Mean` per auxiliary metric of `objective`, named as it names them."""
    import keras

    return [keras.metrics.Mean(name=n) for n in objective.metric_names]


def _check(lm: Any) -> None:
    params = list(inspect.signature(type(lm).compute_loss).parameters)
    if params[1:6] != ["x", "y", "y_pred", "sample_weight", "training"]:
        raise RuntimeFailure(
            f"keras changed Model.compute_loss (arguments {params[1:]}): gemma cannot install its training "
            "objective", hint="install the keras version pinned in pyproject.toml")


def install(causal_lm: Any, objective: Objective) -> None:
    """Make `causal_lm`'s training and evaluation steps compute `objective`.

    Call after `compile` and before `fit`/`evaluate` (keras keeps the steps it traced; this
    clears them).

    Args:
        causal_lm: keras_hub.models.CausalLM. Compiled with `metric_trackers(objective)`.
        objective: Objective. What to minimise and measure.
    """
    import keras

    lm = causal_lm
    _check(lm)
    uninstall(lm)  # keras' own methods first: `call` below wraps the plain one
    backbone = lm.backbone
    aux = set(objective.metric_names)
    state: dict[str, Any] = {}

    own = set(objective.batch_keys)
    plain_call = lm.call

    def model_inputs(inputs: Any) -> Any:
        return {k: v for k, v in inputs.items() if k not in own} if own and isinstance(inputs, dict) else inputs

    def call(inputs: Any, training: Any = None, mask: Any = None) -> Any:
        if objective.wants_logits:
            return plain_call(model_inputs(inputs), training=training)
        hidden = backbone(model_inputs(inputs), training=training)
        image = getattr(backbone, "image_sequence_length", None)  # PaliGemma: the image's tokens come first
        return hidden[:, image:] if image else hidden

    def trackers() -> list[Any]:
        compiled = lm._compile_metrics  # noqa: SLF001
        return list(compiled.metrics) if compiled is not None else []

    def compute_loss(x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None, training: bool = True) -> Any:
        compiled = lm._compile_loss  # noqa: SLF001
        if compiled is not None and not compiled.built:  # keras builds it through this method
            compiled.build(y, y_pred)
        metrics = lm._compile_metrics  # noqa: SLF001
        if metrics is not None and not metrics.built:
            metrics.build(y, y_pred)
        out: Output = objective.compute(lm, x, y, y_pred, sample_weight, training)
        if set(out.metrics) != aux:
            raise RuntimeFailure(f"objective {objective.name} returned metrics {sorted(out.metrics)}, "
                                 f"declared {sorted(aux)}")
        # Metric state is updated here, not in compute_metrics: keras runs compute_loss through
        # `stateless_compute_loss`, which hands the new metric variables out of the gradient
        # trace; values kept for compute_metrics would be tracers leaking out of it.
        state["matched"] = out.matches is not None
        for m in trackers():
            if m.name in aux:
                keras.metrics.Mean.update_state(m, out.metrics[m.name])
            elif out.matches is not None and isinstance(m, keras.metrics.SparseCategoricalAccuracy):
                keras.metrics.Mean.update_state(m, out.matches, sample_weight=sample_weight)
        extra = [keras.ops.sum(v) for v in lm.losses]
        return out.loss + sum(extra) if extra else out.loss

    def compute_metrics(x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        compiled = lm._compile_metrics  # noqa: SLF001
        if compiled is not None and not compiled.built:  # keras builds them through this method
            compiled.build(y, y_pred)
        if not state.get("matched") and objective.wants_logits:
            for m in trackers():
                if isinstance(m, keras.metrics.SparseCategoricalAccuracy):
                    m.update_state(y, y_pred, sample_weight=sample_weight)
        return lm.get_metrics_result()

    # plain attributes on the instance (not tracked by keras, not serialized)
    put = object.__setattr__
    put(lm, "_gemma_plain", {k: lm.__dict__.get(k) for k in ("call", "compute_loss", "compute_metrics")})
    if not objective.wants_logits or own:
        put(lm, "call", call)
    put(lm, "compute_loss", compute_loss)
    put(lm, "compute_metrics", compute_metrics)
    put(lm, "_gemma_objective", objective)
    # the train/test functions close over the methods: make keras trace them anew
    lm.train_function = lm.test_function = None


def uninstall(causal_lm: Any) -> None:
    """Undo `install` (keras' own loss and metrics again)."""
    saved = causal_lm.__dict__.get("_gemma_plain")
    if saved is None:
        return
    for k, v in saved.items():
        if v is None:
            causal_lm.__dict__.pop(k, None)
        else:
            object.__setattr__(causal_lm, k, v)
    for k in ("_gemma_plain", "_gemma_objective"):
        causal_lm.__dict__.pop(k, None)
    causal_lm.train_function = causal_lm.test_function = None


def installed(causal_lm: Any) -> Objective | None:
    """The objective `install` put on `causal_lm`, or None."""
    return causal_lm.__dict__.get("_gemma_objective")
