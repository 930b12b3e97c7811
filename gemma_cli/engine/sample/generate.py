"""`gemma generate`: load a config's model (a run's checkpoint) on its mesh, then sample.

Loading is here; sampling is `engine/sample/sampler.py`, which training code uses on the live
model as well.
"""

from __future__ import annotations

import string
from typing import Any

from gemma_cli.config import template_fields
from gemma_cli.engine.sample.sampler import Sampler
from gemma_cli.errors import UsageError


def wrap_template(prompt: str, template: str) -> str:
    """Fill a data template's first field with `prompt`, cut at its last field (the answer)."""
    parts = list(string.Formatter().parse(template))
    fields = template_fields(template)
    if len(fields) < 2:
        raise UsageError("--template: data.template needs at least two fields (prompt and answer)")
    out = ""
    for literal, f, _, _ in parts:
        out += literal
        if f == fields[-1]:
            break
        if f:
            out += prompt if f == fields[0] else ""
    return out


class Generator(Sampler):
    """A model loaded on the config's mesh (a run's checkpoint) with its `Sampler`.

    Args:
        cfg: RunConfig. Preset, mesh and the generate section.
        reporter: Reporter. Progress and timings (stderr).
        checkpoint: Path | None. A fine-tune run's checkpoint to load (LoRA or full weights).
        batch_size: int | None. Prompts per batch, rounded up to the batch axis.
    """

    def __init__(self, cfg: Any, reporter: Any, checkpoint: Any = None, batch_size: int | None = None):
        from gemma_cli.engine.core import runtime

        runtime.setup()
        from gemma_cli.engine.model import runs
        from gemma_cli.engine.plan import layout as layoutlib
        from gemma_cli.engine.plan import machine

        self.cfg = cfg
        choice = machine.choose(cfg)  # no mesh.shape: the default finetune would pick here
        if choice is not None:
            reporter.info(choice.why)
        layout = layoutlib.layout_for(cfg, with_lora=checkpoint is not None)
        for w in layout.plan.warnings:
            reporter.debug_line(w)
        reporter.step(f"Loading {cfg.model.preset} on mesh {dict(zip(cfg.mesh.axes, layout.mesh_shape, strict=True))}")
        lm = runs.load(cfg, checkpoint, reporter=reporter, distribution=layout.distribution)
        super().__init__(lm, layout.distribution, cfg.generate, batch_axis=layout.batch_axis_size,
                         batch_size=batch_size, reporter=reporter)
