"""Everything that changes keras-hub objects, and the one order they are applied in.

A training model gets three changes, each guarded against a keras/keras-hub API change by its
own module:

1. `remat` — decoder blocks rematerialised; a keras scope around the model's *construction*
   (`remat.build`, called by model loading: `engine/model/load.py`).
2. `segments` — packed rows keep documents apart; the decoder blocks' mask and rotary
   positions, changed after construction and before the first trace.
3. `objective` — the loss and metrics of the method (`engine/objectives/`), installed after
   `compile` (it reads the compiled loss) and before `fit`/`evaluate`.

`prepare_for_training` applies 2 and 3, in this order, around the compile it is given; 1 has
happened when the model was built. One more, at load: `quantized` gives keras' int8 tied
logits projection the input gradient its other int8 layers have (`engine/model/load.py`,
right after `Model.quantize`). Nothing else in the engine patches a keras-hub object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gemma_cli.engine.objectives import Objective


def prepare_for_training(
    causal_lm: Any, *, segments: bool, objective: Objective, compile: Callable[[Any, list[Any]], Any]
) -> Any:
    """Segment attention (if `segments`), then `compile(causal_lm, metric_trackers)`, then the
    objective; returns what `compile` returned.

    Args:
        causal_lm: keras_hub.models.CausalLM. Built (remat, if any, applied at construction).
        segments: bool. The batches are packed: `padding_mask` carries segment ids.
        objective: Objective. The method's loss and auxiliary metrics.
        compile: callable. Compiles the model; gets the metric trackers the objective's
            metrics need (pass them to `compile(metrics=...)`).
    """
    from gemma_cli.engine.patches import objective as objective_patch
    from gemma_cli.engine.patches.segments import enable_segment_attention

    if segments:
        enable_segment_attention(causal_lm.backbone)
    result = compile(causal_lm, objective_patch.metric_trackers(objective))
    objective_patch.install(causal_lm, objective)
    return result
