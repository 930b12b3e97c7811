"""Preference tuning (`train.method: dpo`): DPO, IPO, hinge, SimPO or ORPO through keras' `fit`.

The data pipeline (`engine/data`) renders each preference record as two rows side by side —
chosen, rejected — on one stream, loss weights on the completion tokens only; the objective
(`engine/objectives/preference.py`) compares their log-probabilities with the reference
model's. The reference:

- LoRA (`dpo.reference: auto`): the model itself with its adapters switched off
  (`engine/model/lora.adapters_off`), a second forward pass in the same step, no second copy
  of the weights;
- a full fine-tune (`auto`), or `precompute`: the log-probs of every training and eval pair
  under the model before training, computed in one pass before the first step, stored with the
  run (`reference_logps.npz`, reused by `--resume`) and carried in each batch (`ref_logps`);
- `none`, `simpo`, `orpo`: no reference.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

from gemma_cli.engine.train.sft import SFTRecipe
from gemma_cli.errors import UsageError

REFERENCE_FILE = "reference_logps.npz"


def settings(cfg: Any) -> Any:
    """The run's `dpo:` section (defaults when the config has none)."""
    from gemma_cli.config import DpoConfig

    return cfg.dpo or DpoConfig()


def reference_mode(cfg: Any) -> str:
    """`adapters` (LoRA, adapters off), `precompute` (log-probs before training) or `none`."""
    p = settings(cfg)
    if not p.uses_reference:
        return "none"
    lora = cfg.model.lora
    if p.reference == "precompute" or not (lora and lora.rank > 0):
        return "precompute"
    return "adapters"


def row_logps(causal_lm: Any, chunk: int | None) -> Any:
    """f(x, y, w) → [rows] summed log-probs of the weighted labels under the model's weights now
    (one jitted forward pass; the chunked head when `chunk`)."""
    import jax
    import keras
    from keras import ops

    from gemma_cli.engine.objectives.cross_entropy import token_losses

    bb = causal_lm.backbone
    tvars, ntvars = bb.trainable_variables, bb.non_trainable_variables
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    @jax.jit
    def f(tv: Any, ntv: Any, x: Any, y: Any, w: Any) -> Any:
        with keras.StatelessScope(state_mapping=list(zip(tvars, tv, strict=True)) + list(zip(ntvars, ntv, strict=True))):
            hidden = bb(x, training=False)
            ce, _ = token_losses(causal_lm, hidden, y, chunk or hidden.shape[1], loss)
        return -ops.sum(ops.cast(ce, "float32") * ops.cast(w, "float32"), axis=1)

    return lambda x, y, w: f([v.value for v in tvars], [v.value for v in ntvars], x, y, w)


class DPORecipe(SFTRecipe):
    """`Recipe` with the preference objective and keras' `fit` as the loop (the SFT loop)."""

    method = "dpo"

    def _chunk(self) -> int | None:
        from gemma_cli.engine.objectives import cross_entropy

        m = self.model
        assert m is not None
        return cross_entropy.for_config(self.cfg, int(m.causal_lm.backbone.vocabulary_size), m.batch_axis_size).chunk

    def setup_data(self) -> Any:
        d = super().setup_data()
        if d.bundle.info.kind != "preference":  # preflight said so already; callers may skip it
            raise UsageError(f"data: train.method: dpo needs preference records; the data holds {d.bundle.info.kind} records")
        if reference_mode(self.cfg) == "precompute":
            self._precompute_reference()
            d.eval = d.bundle.eval  # the eval batches now carry their reference values
        return d

    def _precompute_reference(self) -> None:
        """The reference log-probs of every pair before training (the weights are still the
        initial ones here, on --resume too: the checkpoint is restored with the optimizer)."""
        import numpy as np

        from gemma_cli.engine.core.files import atomic_file
        from gemma_cli.engine.data import pack

        m, d, log = self.model, self.data, self.reporter
        assert m is not None and d is not None
        bundle = d.bundle
        counts = {s: bundle.records(s) for s in ("train", "eval")}
        path = self.out_dir / REFERENCE_FILE
        if self.resume_from is not None and path.is_file():
            with np.load(path) as z:
                tables = {s: z[s] for s in ("train", "eval")}
            if all(len(tables[s]) == counts[s] for s in tables):
                log.info(f"  reference log-probs: reused {path} ({counts['train']:,} + {counts['eval']:,} pairs)")
                bundle.attach_reference(tables["train"], tables["eval"])
                return
            log.warn(f"{path} does not match the data ({counts}); computing the reference log-probs again")
        need = 8 * (counts["train"] + counts["eval"]) + 4096
        where = next((p for p in (self.out_dir, *self.out_dir.parents) if p.exists()), Path("."))
        free = shutil.disk_usage(where).free
        if free < need:
            raise UsageError(f"dpo.reference: precompute: the reference log-probs of {counts['train'] + counts['eval']:,} "
                             f"pairs need {need:,} bytes in {self.out_dir}; {free:,} are free there")
        if self.dry_run:
            return
        log.step(f"Computing the reference log-probs of {counts['train']:,} training and {counts['eval']:,} eval pairs "
                 "(the model before training, one forward pass each)")
        fn = row_logps(m.causal_lm, self._chunk())
        positions = "position_ids" in [i.name for i in m.causal_lm.backbone.inputs]
        tables = {}
        for split in ("train", "eval"):
            out = []
            for arrays in bundle.pair_batches(split, self.cfg.data.batch_size):
                x, y, w = pack.model_batch(arrays, False, positions)
                real = int(arrays.get("real_rows", len(y)))
                out.append(np.asarray(fn(x, y, w))[:real])
            tables[split] = (np.concatenate(out) if out else np.zeros(0, np.float32)).reshape(-1, 2)
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez(buf, **tables)
            atomic_file(path, lambda tmp: tmp.write_bytes(buf.getvalue()))
            log.info(f"  reference log-probs: {path}")
        bundle.attach_reference(tables["train"], tables["eval"])

    def objective(self) -> Any:
        from gemma_cli.engine.model.lora import adapters_off
        from gemma_cli.engine.objectives.preference import Preference

        p = settings(self.cfg)
        mode = reference_mode(self.cfg)
        ref = {"adapters": adapters_off, "precompute": "batch", "none": None}[mode]
        return Preference(p.loss, beta=p.beta, gamma=p.gamma, lam=p.lambda_, label_smoothing=p.label_smoothing,
                          reference=ref, chunk=self._chunk())
