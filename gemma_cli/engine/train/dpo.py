"""Preference tuning (`train.method: dpo`): DPO, IPO, hinge, SimPO or ORPO through keras' `fit`.

The data pipeline (`engine/data`) renders each preference record as two rows side by side —
chosen, rejected — on one stream, loss weights on the completion tokens only; the objective
(`engine/objectives/preference.py`) compares their log-probabilities with the reference
model's. The reference (`dpo.reference: auto`) is the model itself with its LoRA adapters
switched off (`engine/model/lora.adapters_off`): a second forward pass in the same step, no
second copy of the weights. A full fine-tune would need the reference log-probs computed before
training (`precompute`), which this version does not do: the config check refuses it.
"""

from __future__ import annotations

from typing import Any

from gemma_cli.engine.train.sft import SFTRecipe
from gemma_cli.errors import UsageError


def settings(cfg: Any) -> Any:
    """The run's `dpo:` section (defaults when the config has none)."""
    from gemma_cli.config import DpoConfig

    return cfg.dpo or DpoConfig()


class DPORecipe(SFTRecipe):
    """`Recipe` with the preference objective and keras' `fit` as the loop (the SFT loop)."""

    method = "dpo"

    def setup_data(self) -> Any:
        d = super().setup_data()
        if d.bundle.info.kind != "preference":  # preflight said so already; callers may skip it
            raise UsageError(f"data: train.method: dpo needs preference records; the data holds {d.bundle.info.kind} records")
        return d

    def objective(self) -> Any:
        from gemma_cli.engine.model.lora import adapters_off
        from gemma_cli.engine.objectives import cross_entropy
        from gemma_cli.engine.objectives.preference import Preference

        m = self.model
        assert m is not None
        p = settings(self.cfg)
        chunk = cross_entropy.for_config(self.cfg, int(m.causal_lm.backbone.vocabulary_size), m.batch_axis_size).chunk
        return Preference(p.loss, beta=p.beta, gamma=p.gamma, lam=p.lambda_, label_smoothing=p.label_smoothing,
                          reference=adapters_off if p.uses_reference else None, chunk=chunk)
