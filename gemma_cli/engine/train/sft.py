"""Supervised fine-tuning (`train.method: sft`, the default): cross-entropy through keras' `fit`.

Raw text, templates and chat conversations (loss on the answers) alike: the data pipeline
(`engine/data`) renders them into token ids, labels and per-token weights; the objective is
the masked next-token cross-entropy, in sequence chunks when `train.loss_chunk` asks for it.
"""

from __future__ import annotations

from typing import Any

from gemma_cli.engine.train.recipe import Recipe


class SFTRecipe(Recipe):
    """`Recipe` with the cross-entropy objective and keras' `fit` as the loop."""

    method = "sft"

    def objective(self) -> Any:
        from gemma_cli.engine.objectives import cross_entropy

        m = self.model
        assert m is not None
        return cross_entropy.for_config(self.cfg, int(m.causal_lm.backbone.vocabulary_size), m.batch_axis_size)

    def loop(self, callbacks: Any) -> None:
        d = self.data
        assert self.model is not None and d is not None
        self.model.causal_lm.fit(d.train, epochs=1, steps_per_epoch=d.total_steps - d.start_step, verbose=0,
                                 callbacks=callbacks)
