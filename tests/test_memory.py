"""`gemma inspect --device`: the per-device memory estimate, and XLA's measured peak with --live."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from gemma_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "gemma3_270m_demo.yaml")
# Gemma 3 1B, full fine-tune, 16 x 512 on one device: the shape FACTS.md measured on an H100
G1B = [DEMO, "model.preset=gemma3_1b", "model.precision=bfloat16", "model.lora.rank=0", "mesh.shape=[1,1]",
       "data.batch_size=16", "data.sequence_length=512"]  # fmt: skip


def doc_of(*args: str, code: int = 0) -> dict[str, Any]:
    r = CliRunner().invoke(app, ["inspect", *args, "--json"])
    assert r.exit_code == code, (r.exit_code, r.stdout[-2000:], r.stderr[-2000:])
    return json.loads(r.stdout)


def test_estimate_parts_remat_chunks_and_devices() -> None:
    plain = doc_of(*G1B, "train.remat=none", "train.loss_chunk=none", "--layer", "decoder_block_0", "--device", "h100")
    t, m = plain["totals"], plain["memory"]
    est = m["estimate"]
    # weights, gradients and AdamW state are the plan's: bf16, one copy each, two for Adam
    assert t["weights_bytes_per_device"] == t["params"] * 2
    assert t["gradients_bytes_per_device"] == t["params"] * 2 and t["optimizer_bytes_per_device"] == t["params"] * 4
    assert est["total"] == t["total_bytes_per_device"] == sum(est[k] for k in ("weights", "gradients", "optimizer", "activations", "logits"))
    assert m["remat"] == "none" and m["loss_chunk"] is None and est["logits"] == est["logits_plain"]
    assert t["device"] == "h100" and t["device_memory_bytes"] == 80 * 2**30 and t["fits"] is True
    # FACTS.md, H100: 29.4 GB without remat, 14.3 GB with it (the terms were fitted to these)
    assert abs(t["total_bytes_per_device"] / 29.4e9 - 1) < 0.1
    assert abs(m["alternatives"]["remat_blocks_total"] / 14.3e9 - 1) < 0.1

    remat = doc_of(*G1B, "train.remat=blocks", "train.loss_chunk=none", "--layer", "decoder_block_0")
    assert remat["memory"]["estimate"]["activations"] == est["activations_remat_blocks"] < est["activations_remat_none"] / 4
    # auto: 8 GiB of float32 logits per step → 16-position chunks of 256 MiB
    auto = doc_of(*G1B, "--layer", "decoder_block_0")
    assert auto["memory"]["loss_chunk"] == 16
    assert auto["memory"]["estimate"]["logits"] * 32 == est["logits_plain"]

    v5e = doc_of(*G1B, "--layer", "decoder_block_0", "--device", "v5e")["totals"]
    assert v5e["device_memory_bytes"] == 16 * 2**30 and v5e["fits"] is (v5e["total_bytes_per_device"] <= 16 * 2**30)
    assert doc_of(*G1B, "--layer", "decoder_block_0", "--device", "1GiB")["totals"]["fits"] is False


def test_device_errors_exit_2() -> None:
    r = CliRunner().invoke(app, ["inspect", DEMO, "--device", "v5ee"])
    assert r.exit_code == 2 and "--device 'v5ee'" in r.stderr and "did you mean v5e?" in r.stderr, r.stderr
    r = CliRunner().invoke(app, ["inspect", DEMO, "--device", "v5e", "--device-memory", "16GiB"])
    assert r.exit_code == 2 and "not both" in r.stderr


def test_live_measures_the_compiled_train_step(tmp_path: Path, tiny_presets: dict[str, Path]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {{preset: {tiny_presets['gemma3']}, precision: float32, lora: {{rank: 2}}}}\n"
        "mesh: {shape: [2, 4]}\nlayout: fsdp\n"
        "data: {paths: [x.jsonl], batch_size: 8, sequence_length: 64}\ntrain: {remat: blocks, loss_chunk: 16}\n"
    )
    d = doc_of(str(cfg), "--live", "--layer", "decoder_block_0")
    m = d["memory"]
    ms = m["measured"]
    assert ms is not None and ms["peak"] == ms["argument"] + ms["output"] - ms["alias"] + ms["temp"]
    # the state is donated: what goes in comes back in place; the arguments hold at least this
    # device's shard of the weights and the AdamW state
    assert ms["alias"] > 0 and ms["argument"] >= d["totals"]["weights_bytes_per_device"] + d["totals"]["optimizer_bytes_per_device"]
    assert m["error"] == (m["estimate"]["total"] - ms["peak"]) / ms["peak"] and math.isfinite(m["error"])
    # and its collectives (issue #29): on a (2, 4) mesh the step moves bytes, counted per kind
    co = ms["collectives"]
    assert co["total"]["bytes_per_device"] > 0 and co["total"]["count"] == sum(
        v["count"] for k, v in co.items() if k != "total")
    assert not [p for p in d["problems"] if p["level"] == "mismatch"]
