"""The smallest TPU slice each big model fits, from `gemma inspect`'s per-device estimate.

For each model, LoRA and full fine-tune, layout (`default`, `fsdp`) and `train.remat`
(`none`, `blocks`), and each TPU generation: the fewest chips whose per-chip estimate
(weights + gradients + AdamW state + activations + logits, `engine/plan/memory.py`) fits the chip,
over every mesh (batch × model) of that many chips whose model axis is a power of two up to 16
and whose batch axis divides the global batch. Plans only: no weights, no devices. Prints one
JSON document (stdout) that `benchmarks/run.py` turns into a report section.

    python benchmarks/fit_table.py [--quick]
"""

from __future__ import annotations

import functools
import json
import sys
import time

BATCH, SEQ, LORA_RANK = 16, 2048, 8
MODELS = [("Gemma 7B", "gemma_7b_en"), ("Gemma 2 27B", "gemma2_27b_en"), ("Gemma 3 27B", "gemma3_27b_text"),
          ("Gemma 4 31B", "gemma4_31b")]  # fmt: skip
# chips per slice, and the slice name for that many chips (v4 and v5p count TensorCores: 2 per chip)
SLICES = {
    "v5e": ([1, 4, 8, 16, 32, 64, 128, 256], lambda n: f"v5e-{n}"),
    "v5p": ([4, 8, 16, 32, 64, 128, 256], lambda n: f"v5p-{2 * n}"),
    "v4": ([4, 8, 16, 32, 64, 128, 256], lambda n: f"v4-{2 * n}"),
}
MODES = [("default", "none"), ("default", "blocks"), ("fsdp", "none"), ("fsdp", "blocks")]


def main() -> int:
    t0 = time.time()
    from gemma_cli.engine.core import runtime

    runtime.setup(without_tensorflow=True)
    from gemma_cli.config import parse_config
    from gemma_cli.engine import families
    from gemma_cli.engine.plan import inspect as inspect_report
    from gemma_cli.engine.plan import memory

    models = [(label, name) for label, name in MODELS if families.get_preset(name) is not None]
    missing = [label for label, name in MODELS if families.get_preset(name) is None]
    quick = "--quick" in sys.argv

    @functools.cache
    def totals(name: str, lora: int, rules: str, mesh: tuple[int, int]) -> dict[str, int]:
        """Per-chip estimate with remat none and blocks (one plan serves both)."""
        lora_yaml = f"lora: {{rank: {lora}}}" if lora else ""
        cfg = parse_config(
            f"model: {{preset: {name}, precision: bfloat16, {lora_yaml}}}\n"
            f"mesh: {{shape: {list(mesh)}}}\nlayout: {rules}\n"
            f"data: {{paths: [x.jsonl], batch_size: {BATCH}, sequence_length: {SEQ}}}\n"
            "optimizer: {name: adamw}\n"
        )
        alt = inspect_report.describe(cfg)["memory"]["alternatives"]
        return {"none": alt["remat_none_total"], "blocks": alt["remat_blocks_total"]}

    rows = []
    for label, name in models:
        for lora in (LORA_RANK, 0):
            for chip, (counts, slice_name) in SLICES.items():
                if quick and chip != "v5e":
                    continue
                limit = memory.DEVICES[chip]
                cells = []
                for rules, remat in MODES:
                    best = None
                    for n in counts:
                        fits = []
                        for m in (1, 2, 4, 8, 16):
                            if n % m or BATCH % (n // m):
                                continue
                            t = totals(name, lora, rules, (n // m, m))[remat]
                            if t <= limit:
                                fits.append((t, (n // m, m)))
                        if fits:
                            t, mesh = min(fits)
                            best = {"slice": slice_name(n), "chips": n, "mesh": list(mesh), "bytes_per_chip": t}
                            break
                    cells.append(best)
                rows.append({"model": label, "preset": name, "finetune": f"LoRA {lora}" if lora else "full",
                             "chip": chip, "chip_bytes": limit, "cells": cells})  # fmt: skip
    print(json.dumps({
        "batch": BATCH, "sequence_length": SEQ, "lora_rank": LORA_RANK, "modes": [f"{r} + remat {m}" for r, m in MODES],
        "rows": rows, "missing": missing, "seconds": round(time.time() - t0, 1),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
