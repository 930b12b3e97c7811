"""What each (batch, model) split of 8 devices costs a train step: collectives, memory, time;
and which split the default mesh takes.

    python benchmarks/mesh_table.py            # measure, write mesh_table.json, splice report.md
    python benchmarks/mesh_table.py --json     # measure, print the section as JSON (run.py)
    python benchmarks/mesh_table.py --tiny     # the tiny model's rows only (about two minutes)

On the 8 simulated XLA CPU devices, per mesh [8,1], [4,2], [2,4], [1,8] and fsdp on [8,1]
(the family's default rules, indivisible dimensions replicated), for
- tests/tiny.py's Gemma 3 (random weights), a LoRA and a full fine-tune: the planned memory
  per device (`gemma inspect`'s plan), the compiled train step's collectives read from its
  optimized HLO (engine/plan/comms.py: count and bytes per device per step, as a ring moves
  them), the median step time over a few steps, and the time the devices spent inside
  collectives (JAX's profiler; on simulated devices mostly waiting at the rendezvous);
- Gemma 3 270M (its architecture, random weights), LoRA: the compiled keras-hub step's
  collectives (compiled, not run);
- Gemma 3 1B, LoRA: planned only (its keras step is not built here: compiling it on 2 cores
  takes too long for the bench).
Every row also carries the estimate the default mesh ranks by (engine/plan/traffic.py: the
step's skeleton compiled on abstract arrays), and the row `machine.auto_mesh` picks for the
config without `mesh.shape` is marked.
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

TITLE = "Mesh: collectives and step time per (batch, model) split (8 CPU devices)"
MESHES = ([8, 1], [4, 2], [2, 4], [1, 8])
CANDIDATES = [*((m, None) for m in MESHES), ([8, 1], "fsdp")]
BATCH, SEQ, LORA = 8, 64, 4
STEPS = 6
WORKLOADS = ("LoRA 4", "full")
# the real architectures: LoRA 4, batch 8 × REAL_SEQ, bfloat16; the default fits this budget
REAL = {"Gemma 3 270M": ("gemma3_270m", True), "Gemma 3 1B": ("gemma3_1b", False)}  # name: (preset, compile the keras step)
REAL_SEQ = 256
BUDGET = 16 * 2**30  # a v5e chip's HBM


def _config(preset: Path | str, data: Path, mesh: list[int] | None, lora: bool, rules: str | None = None,
            precision: str = "float32", seq: int = SEQ) -> Any:
    from gemma_cli.config import parse_config

    lo = f", lora: {{rank: {LORA}}}" if lora else ""
    shape = f"mesh: {{shape: {mesh}, axes: [batch, model]}}\n" if mesh else ""
    return parse_config(
        f"model: {{preset: {preset}, precision: {precision}{lo}}}\n{shape}"
        f"layout: {{indivisible: replicate{', rules: ' + rules if rules else ''}}}\n"
        f"data: {{paths: [{data}], batch_size: {BATCH}, sequence_length: {seq}}}\n"
        "train: {max_steps: 100}\n",
        "<mesh_table>",
    )


def compiled_traffic(cfg: Any) -> dict[str, Any]:
    """The compiled keras-hub train step's collectives for `cfg` (random weights; compiled, not run)."""
    import keras
    import keras_hub

    from gemma_cli.engine.model import load as model
    from gemma_cli.engine.model.optimizer import compile_model
    from gemma_cli.engine.plan import inspect as inspect_report
    from gemma_cli.engine.plan import layout as lay
    from gemma_cli.engine.plan import memory

    layout = lay.layout_for(cfg)
    bb = json.loads(json.dumps(inspect_report._backbone_config(cfg.model.preset)))  # noqa: SLF001
    bb["config"]["dtype"] = model.dtype_for(cfg.model.precision)
    bb["config"]["image_size"] = None  # the text backbone (as `gemma inspect` plans it)
    bb["config"]["vision_encoder"] = None
    with layout.distribution.scope():
        backbone = keras.saving.deserialize_keras_object(bb)
        lm = keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)
        model.apply_lora_and_quantize(lm, cfg.model)
        compile_model(lm, cfg, 100, layout.batch_axis_size)
        m = memory.measure_train_step(lm, cfg.data.batch_size, cfg.data.sequence_length, layout.distribution)
    return m["collectives"]


def estimated(cfg: Any, mesh: list[int], rules: str | None) -> dict[str, Any]:
    from gemma_cli.engine.plan import traffic

    return traffic.estimate(cfg, tuple(mesh), rules)


def default_choice(cfg_without_mesh: Any, budget: int | None) -> Any:
    from gemma_cli.engine.plan import machine

    return machine.auto_mesh(cfg_without_mesh, 8, budget)


def _collective_seconds(trace_dir: str, steps: int, devices: int) -> dict[str, float]:
    """Seconds per device per step inside each kind of collective, from the profiler's trace."""
    import jax

    from gemma_cli.engine.plan.comms import KINDS

    files = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    out = dict.fromkeys(KINDS, 0.0)
    if not files:
        return out
    data = jax.profiler.ProfileData.from_file(files[0])
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                name = ev.name
                kind = next((k for k in KINDS if name == k or name.startswith((k + ".", k + "-start"))), None)
                if kind:
                    out[kind] += ev.duration_ns / 1e9
    return {k: v / steps / devices for k, v in out.items()}


def measure(preset: Path, data: Path, mesh: list[int], lora: bool, rules: str | None = None) -> dict[str, Any]:
    import jax
    import numpy as np

    from gemma_cli.engine.model import load as model
    from gemma_cli.engine.model.optimizer import compile_model
    from gemma_cli.engine.plan import comms, memory
    from gemma_cli.engine.plan import inspect as inspect_report
    from gemma_cli.engine.plan import layout as mesh_lib

    cfg = _config(preset, data, mesh, lora, rules)
    doc = inspect_report.describe(cfg)
    planned = doc["totals"]["total_bytes_per_device"]
    bb = inspect_report._backbone_config(str(preset))  # noqa: SLF001
    cls = model.backbone_class(bb)
    abstract = model.abstract_variables(bb, cfg.model.precision, cfg.model.lora.rank if lora else None, None)
    plan = mesh_lib.plan_for(cfg, cls, abstract, tuple(mesh))
    device_mesh = mesh_lib.build_mesh(cfg.mesh)
    distribution = mesh_lib.build_distribution(device_mesh, plan, cfg.mesh.batch_axis)
    with distribution.scope():
        causal_lm = model.load_causal_lm(str(preset), cfg.model.precision)
        model.apply_lora_and_quantize(causal_lm, cfg.model)
        compile_model(causal_lm, cfg, 100, mesh[0])
        causal_lm.preprocessor = None
        step, state, (x, y, sw) = memory.train_step_program(causal_lm, BATCH, SEQ, distribution)
    rng = np.random.default_rng(0)
    x["token_ids"] = rng.integers(4, 100, size=(BATCH, SEQ), dtype="int32")
    y = rng.integers(4, 100, size=(BATCH, SEQ), dtype="int32")
    sharding = memory.data_sharding(distribution, BATCH, SEQ)
    batch = jax.tree_util.tree_map(lambda a: jax.device_put(a, sharding), (x, y, sw))
    t = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    ops = comms.collectives(compiled.as_text(), devices=8)
    tr = comms.traffic(ops)
    logs, state = compiled(state, batch)  # warm-up
    jax.block_until_ready(state)
    times = []
    for _ in range(STEPS):
        t = time.perf_counter()
        logs, state = compiled(state, batch)
        jax.block_until_ready((logs, state))
        times.append(time.perf_counter() - t)
    trace = tempfile.mkdtemp(prefix="mesh_table_trace_")
    with jax.profiler.trace(trace):
        for _ in range(2):
            logs, state = compiled(state, batch)
            jax.block_until_ready((logs, state))
    coll_s = _collective_seconds(trace, 2, 8)
    return {
        "mesh": mesh,
        "rules": rules,
        "estimate": estimated(cfg, mesh, rules),
        "planned_bytes": planned,
        "compile_s": compile_s,
        "step_s": statistics.median(times),
        "collective_s": sum(coll_s.values()),
        "collective_s_by_kind": coll_s,
        "traffic": tr,
        "loss": float(np.asarray(logs["loss"])),
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def _tag(mesh: list[int], rules: str | None) -> str:
    return f"{mesh}{' fsdp' if rules else ''}"


def section(results: dict[str, list[dict[str, Any]]], defaults: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    """The report section (title, text, headers, rows, notes) from the measurements."""
    rows = []
    for wl, rs in results.items():
        d = defaults[wl]
        for r in rs:
            t = r.get("traffic")
            kinds = ", ".join(f"{k} {v['count']}" for k, v in t.items() if k != "total" and v["count"]) if t else "—"
            chosen = (r["mesh"], r["rules"]) == (list(d.shape), d.rules)
            rows.append([
                wl, _tag(r["mesh"], r["rules"]), _mib(r["planned_bytes"]), "yes" if r["fits"] else "no",
                t["total"]["count"] if t else "—", kinds or "none",
                _mib(t["total"]["bytes_per_device"]) if t else "—",
                _mib(r["estimate"]["bytes_per_device"]) if r.get("estimate") else "—",
                round(r["collective_s"] * 1e3, 2) if r.get("collective_s") is not None else "—",
                round(r["step_s"] * 1e3, 2) if r.get("step_s") is not None else "—",
                "**default**" if chosen else "",
            ])
    notes = []
    for wl, rs in results.items():
        d = defaults[wl]
        fit = [r for r in rs if r["fits"] and r["rules"] is None]
        key = "measured" if all(r.get("traffic") for r in rs) else "estimated"

        def sent(r: dict[str, Any], key: str = key) -> int:
            return r["traffic"]["total"]["bytes_per_device"] if key == "measured" else r["estimate"]["bytes_per_device"]

        least = min(fit, key=sent)
        ok = (least["mesh"], least["rules"]) == (list(d.shape), d.rules)
        notes.append(
            f"{wl}: the default takes {_tag(list(d.shape), d.rules)}; the lowest {key} traffic of the rows that fit "
            f"is {_tag(least['mesh'], least['rules'])} ({_mib(sent(least))} MiB per device per step): "
            + ("the same row." if ok else "NOT the same row.")
            + " By " + key + " traffic: " + " < ".join(f"{_tag(r['mesh'], r['rules'])} {_mib(sent(r))}"
                                                       for r in sorted(rs, key=sent))
        )
    notes += [
        "Measured bytes per device per step are read from the compiled keras-hub step's optimized HLO "
        "(engine/plan/comms.py) and counted as a ring moves them (all-reduce 2·S·(g−1)/g, all-gather and "
        "reduce-scatter S·(g−1)/g): they do not depend on the machine. Estimated: engine/plan/traffic.py, the same "
        "count on a skeleton of the step (embedding, attention and feed-forward projections with their LoRA, tied "
        "logits, cross-entropy, gradients and an update in each variable's sharding) compiled on abstract arrays, one "
        "and two decoder blocks, extrapolated per block; no weights. Times come from 8 devices simulated on 2 shared "
        "cores, where a collective is a memory copy plus waiting for the slowest device: on a real slice the "
        "interconnect, not this, sets the price of each byte.",
        "The default mesh (`mesh.shape` not given: engine/plan/machine.auto_mesh, used by finetune, inspect, generate "
        "and init) plans every split whose batch axis divides data.batch_size, keeps those whose planned memory fits "
        "the device (here: every split for the tiny model; 16 GiB, a v5e chip, for 270M and 1B), and takes the one "
        "with the lowest estimated traffic; fsdp only when nothing fits with the family's layout. The family layouts "
        "shard the weights over the batch axis too, and XLA keeps them in place, so a wide batch axis moves "
        "activations (and, with Gemma 3's 262k vocabulary, the logits) rather than weights: the cheapest split is not "
        "the narrowest model axis.",
        "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + ".",
    ]
    return {
        "title": TITLE,
        "text": f"`python benchmarks/mesh_table.py`: tests/tiny.py's Gemma 3 (2 layers, hidden 32, 4 query / 2 key-value "
                f"heads, 128-token vocabulary; random weights), float32, AdamW, batch {BATCH} × {SEQ}; Gemma 3 270M "
                f"(random weights, compiled, not run) and Gemma 3 1B (planned and estimated only: its keras step is not "
                f"compiled here) with LoRA {LORA}, bfloat16, batch {BATCH} × {REAL_SEQ}; the family's default layout "
                f"(dimensions a mesh axis does not divide are replicated) or fsdp. Per mesh: the plan's memory per device "
                f"and whether it fits, the compiled train step's collectives (count, kinds, bytes one device sends per "
                f"step), the estimate the default ranks by, the time per device per step inside collectives (JAX's "
                f"profiler) and the median step time over {STEPS} steps (tiny model only), and the default's choice.",
        "headers": ["trained", "mesh [batch, model]", "planned MiB/device", "fits", "collectives", "kinds",
                    "MiB sent/device/step (compiled)", "MiB sent (estimate)", "ms in collectives/device/step",
                    "step ms", "default"],
        "rows": rows,
        "notes": notes,
    }


def splice(sec: dict[str, Any]) -> None:
    """Put `sec` into report.md under its own heading (replacing only that section) and
    into report.json's sections; the rest of the report is left as it is."""
    import benchlib as bl

    md = HERE / "report.md"
    block = bl.render_section(sec) + "\n"
    text = md.read_text() if md.exists() else ""
    lines = text.splitlines(keepends=True)
    head = f"## {TITLE}\n"
    if head in lines:
        i = lines.index(head)
        j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
        lines[i:j] = [block]
    else:
        at = next((k for k, ln in enumerate(lines) if ln.startswith(("## Findings and proposals", "## Failures"))), len(lines))
        lines[at:at] = [block]
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text("".join(lines))
    tmp.replace(md)
    rj = HERE / "report.json"
    if rj.exists():
        report = json.loads(rj.read_text())
        secs = [s for s in report.get("sections", []) if s.get("title") != TITLE]
        at = next((k for k, s in enumerate(secs) if s.get("title") == "Findings and proposals"), len(secs))
        secs.insert(at, sec)
        report["sections"] = secs
        tmp = rj.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str))
        tmp.replace(rj)


def real_rows(name: str, preset: str, compile_step: bool, data: Path) -> tuple[list[dict[str, Any]], Any]:
    from gemma_cli.engine.plan import inspect as inspect_report

    rows = []
    for mesh, rules in CANDIDATES:
        cfg = _config(preset, data, list(mesh), True, rules, "bfloat16", REAL_SEQ)
        planned = inspect_report.describe(cfg)["totals"]["total_bytes_per_device"]
        t0 = time.time()
        r = {"mesh": list(mesh), "rules": rules, "planned_bytes": planned, "fits": planned <= BUDGET,
             "estimate": estimated(cfg, list(mesh), rules), "traffic": compiled_traffic(cfg) if compile_step else None}
        print(f"[mesh_table] {name} {_tag(list(mesh), rules)}: planned {_mib(planned)} MiB, estimate "
              f"{_mib(r['estimate']['bytes_per_device'])} MiB"
              + (f", compiled {_mib(r['traffic']['total']['bytes_per_device'])} MiB" if r["traffic"] else "")
              + f" ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        rows.append(r)
    return rows, default_choice(_config(preset, data, None, True, None, "bfloat16", REAL_SEQ), BUDGET)


def main() -> int:
    os.environ.setdefault("GEMMA_CPU_DEVICES", "8")
    from gemma_cli.engine.core import runtime

    runtime.setup(cpu_devices=int(os.environ["GEMMA_CPU_DEVICES"]))
    runtime.silence_keras_stdout()
    import jax

    if jax.device_count() != 8:
        print(f"Error: the mesh table needs 8 devices, found {jax.device_count()}", file=sys.stderr)
        return 2
    from tests.tiny import CORPUS, make_tiny_preset

    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="mesh_table_"))
    preset = make_tiny_preset(work / "tiny_gemma3", "gemma3")
    data = work / "corpus.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    results: dict[str, list[dict[str, Any]]] = {}
    defaults: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for wl in WORKLOADS:
        t1 = time.time()
        results[wl] = []
        for mesh, rules in CANDIDATES:
            r = measure(preset, data, list(mesh), lora=wl != "full", rules=rules)
            r["fits"] = True
            print(f"[mesh_table {time.time() - t0:5.0f}s] {wl} {_tag(list(mesh), rules)}: step {r['step_s'] * 1e3:.1f} ms, "
                  f"{r['traffic']['total']['count']} collectives, {r['traffic']['total']['bytes_per_device']} B/device "
                  f"(estimate {r['estimate']['bytes_per_device']}), {r['collective_s'] * 1e3:.2f} ms in collectives",
                  file=sys.stderr, flush=True)
            results[wl].append(r)
        defaults[wl] = default_choice(_config(preset, data, None, wl != "full"), None)
        seconds[f"tiny {wl}"] = time.time() - t1
    if "--tiny" not in sys.argv:
        for name, (real, compile_step) in REAL.items():
            t1 = time.time()
            wl = f"{name} LoRA {LORA}"
            results[wl], defaults[wl] = real_rows(name, real, compile_step, data)
            seconds[wl] = time.time() - t1
    sec = section(results, defaults, seconds)
    sec["raw"] = {"results": results, "defaults": {k: {"shape": v.shape, "rules": v.rules, "why": v.why}
                                                   for k, v in defaults.items()}}
    sec["seconds"] = round(time.time() - t0, 1)
    if "--json" in sys.argv:
        print(json.dumps(sec, default=str))
        return 0
    out = HERE / "mesh_table.json"
    out.write_text(json.dumps(sec, indent=2, default=str))
    splice({k: v for k, v in sec.items() if k not in ("raw", "seconds")})
    print(f"wrote {out} and the section '{TITLE}' of benchmarks/report.md ({sec['seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
