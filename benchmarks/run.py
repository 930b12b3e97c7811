"""`make bench`: speed of the gemma CLI and engine vs plain keras-hub → report.md / report.json.

Every measurement runs in its own subprocess with a timeout (a failure is recorded, never a
crash of the bench); A/B pairs are interleaved (A B A B ...) and medians are reported, because
this machine is shared. `BENCH_QUICK=1` runs a ~3-minute smoke version. The total is kept under
`BENCH_BUDGET` seconds (1150 by default, 240 quick): what does not fit is recorded as skipped.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import benchlib as bl  # noqa: E402

OUT = HERE / "out"
BIN = Path(sys.executable).parent
GEMMA = str(BIN / "gemma")
PY = sys.executable
QUICK = bool(os.environ.get("BENCH_QUICK"))
# `--only SECTION` runs one section alone: its own runs' timeouts bound it, not the whole bench's budget
BUDGET = float(os.environ.get("BENCH_BUDGET", 300 if QUICK else 3600 if "--only" in sys.argv else 1170))
T0 = time.time()
REAL = ROOT / "presets" / "gemma3_270m"
TIME_BIN = "/usr/bin/time" if Path("/usr/bin/time").exists() else None

FAILURES: list[dict[str, str]] = []
RAW: dict[str, Any] = {}

# The bench model and its runs (see make_bench_preset.py for the shapes).
MODEL = {"hidden": 128, "layers": 2, "heads": 4, "kv-heads": 4, "head-dim": 32, "ffw": 512}
SEQ, BATCH, LORA = 128, 8, 8
STEPS = 12 if QUICK else 50
PAIRS = 1 if QUICK else 3


def left() -> float:
    return BUDGET - (time.time() - T0)


def log(msg: str) -> None:
    print(f"[bench {time.time() - T0:6.0f}s] {msg}", file=sys.stderr, flush=True)


def run(name: str, cmd: list[str], timeout: float, env: dict[str, str] | None = None, stdin: str | None = None,
        need: float = 5) -> dict[str, Any]:
    """Run `cmd`; {ok, rc, wall, maxrss_mb, doc (last JSON on stdout), err}. Never raises.

    Skipped (and recorded) when less than `need` seconds of the bench's budget are left.
    """
    timeout = min(timeout, max(left(), 0))
    rec: dict[str, Any] = {"name": name, "ok": False, "rc": None, "wall": None, "maxrss_mb": None, "doc": None}
    if timeout < need:
        rec["err"] = "skipped: the bench's time budget is spent"
        FAILURES.append({"name": name, "error": rec["err"]})
        log(f"{name}: skipped")
        return rec
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **(env or {})}
    tf = tempfile.NamedTemporaryFile(prefix="bench_time_", delete=False)
    tf.close()
    argv = ([TIME_BIN, "-f", "%e %M", "-o", tf.name] if TIME_BIN else []) + cmd
    t = time.perf_counter()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT, input=stdin)
        rec["wall"] = time.perf_counter() - t
        rec["rc"] = p.returncode
        if TIME_BIN:
            try:
                parts = Path(tf.name).read_text().split()
                rec["maxrss_mb"] = int(parts[-1]) / 1024
            except (OSError, ValueError, IndexError):
                pass
        rec["doc"] = bl.last_json(p.stdout)
        rec["ok"] = p.returncode == 0 and (rec["doc"] is not None or "--json" not in cmd)
        if not rec["ok"]:
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            rec["err"] = f"exit {p.returncode}: " + " / ".join(s.strip()[:300] for s in tail)
    except subprocess.TimeoutExpired:
        rec["wall"] = time.perf_counter() - t
        rec["err"] = f"timed out after {timeout:.0f} s"
    finally:
        os.unlink(tf.name)
    if not rec["ok"]:
        FAILURES.append({"name": name, "error": rec["err"]})
        log(f"{name}: FAILED {rec['err']}")
    else:
        log(f"{name}: {rec['wall']:.1f} s")
    RAW.setdefault("runs", []).append({k: v for k, v in rec.items() if k != "doc"} | {"doc": _slim(rec["doc"])})
    return rec


def _slim(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: v for k, v in doc.items() if k not in ("variables", "optimizer_variables", "evals", "results")}
    return doc


# ----------------------------------------------------------------------------- machine ---
def machine() -> dict[str, Any]:
    from importlib import metadata

    cpu = next((ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines() if ln.startswith("model name")), platform.processor())
    mem = next((ln.split()[1] for ln in _read("/proc/meminfo").splitlines() if ln.startswith("MemTotal")), None)
    vers = {}
    for pkg in ("keras", "keras-hub", "jax", "jaxlib", "tensorflow", "typer"):
        try:
            vers[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            vers[pkg] = "not installed"
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(int(mem) / 1024 / 1024, 1) if mem else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": ", ".join(f"{k} {v}" for k, v in vers.items()),
        "accelerator": "none (8 simulated XLA CPU devices)",
        "git": git,
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _read(p: str) -> str:
    try:
        return Path(p).read_text()
    except OSError:
        return ""


# -------------------------------------------------------------------------------- data ---
def corpora() -> tuple[Path, Path]:
    """fixed.jsonl: every text longer than a sequence; varied.jsonl: long-tailed lengths."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import CORPUS

    from_corpus = CORPUS[:6]
    words = " ".join(from_corpus).split()
    rng = random.Random(0)
    OUT.mkdir(parents=True, exist_ok=True)
    fixed, varied = OUT / "fixed.jsonl", OUT / "varied.jsonl"
    with fixed.open("w") as f:
        for _ in range(96):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(200))}) + "\n")
    with varied.open("w") as f:
        for _ in range(600):
            n = max(3, min(150, int(rng.lognormvariate(3.0, 0.8))))  # median ~20 words
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(n))}) + "\n")
    return fixed, varied


def bench_config(name: str, data: Path, **over: Any) -> Path:
    """A run config for the bench model, written to out/configs/NAME.yaml; returns its path."""
    import yaml

    out_dir = OUT / "runs" / name
    shutil.rmtree(out_dir, ignore_errors=True)
    cfg: dict[str, Any] = {
        "model": {"preset": str(OUT / "bench_preset"), "precision": over.pop("precision", "float32"), "lora": {"rank": LORA}},
        "mesh": {"shape": [2, 4], "axes": ["batch", "model"]},
        "layout": {"rules": "default", "indivisible": "error"},
        "data": {
            "paths": [str(data)],
            "field": "text",
            "sequence_length": over.pop("seq", SEQ),
            "batch_size": BATCH,
            "packing": over.pop("packing", False),
            **({"workers": over.pop("workers")} if "workers" in over else {}),
        },
        "optimizer": {"name": "adamw", "learning_rate": 3e-4, "weight_decay": 0.01},
        "train": {"max_steps": over.pop("steps", STEPS), "output_dir": str(out_dir), "log_every": 10, "steps_per_execution": over.pop("spe", 1)},
    }
    assert not over, over
    p = OUT / "configs" / f"{name}.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


DEV8 = {"GEMMA_CPU_DEVICES": "8"}


def ours(name: str, cfg: Path, env: dict[str, str] | None = None, variant: bool = False, timeout: float = 300) -> dict[str, Any]:
    cmd = [PY, str(HERE / "gemma_variant.py")] if variant else [GEMMA]
    rec = run(name, cmd + ["finetune", str(cfg), "--json", "--quiet"], timeout, {**DEV8, **(env or {})}, need=100)
    d = rec["doc"] or {}
    res = {
        "ok": rec["ok"],
        "step_s": d.get("step_seconds"),
        "step_mean": d.get("step_seconds"),
        "tps": d.get("tokens_per_second"),
        "ttfs": d.get("time_to_first_step"),
        "wall": rec["wall"],
        "rss_mb": rec["maxrss_mb"],
    }
    # useful (non-padding) tokens/s: metrics.jsonl holds the ratio useful/all; tokens/s from the median step
    try:
        import yaml

        out_dir = Path(yaml.safe_load(cfg.read_text())["train"]["output_dir"])
        recs = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        last = recs[-1]
        # log_every 10: a line (a host sync) every 10 steps, as the baseline's reads; the median
        # window ignores spikes from other users of the machine
        el = [(r["step"], r["elapsed"]) for r in recs if "elapsed" in r]
        diffs = [(e2 - e1) / (s2 - s1) for (s1, e1), (s2, e2) in zip(el, el[1:], strict=False) if s2 > s1]
        if diffs:
            res["step_s"] = bl.median(diffs)
        frac = last["useful_tokens_per_second"] / last["tokens_per_second"] if last["tokens_per_second"] else None
        if res["step_s"] and res["tps"]:
            res["tps"] = res["tps"] * (res["step_mean"] or res["step_s"]) / res["step_s"]
        res["useful_tps"] = res["tps"] * frac if (res["tps"] and frac) else None
        res["useful_fraction"] = frac
    except (OSError, KeyError, IndexError, ValueError, TypeError):
        res["useful_tps"] = None
    return res


def baseline(name: str, data: Path, seq: int = SEQ, timeout: float = 300) -> dict[str, Any]:
    cmd = [PY, str(HERE / "baseline_keras_hub.py"), "--preset", str(OUT / "bench_preset"), "--data", str(data),
           "--seq", str(seq), "--batch", str(BATCH), "--steps", str(STEPS), "--mesh", "2,4", "--lora", str(LORA)]
    rec = run(name, cmd, timeout, need=100)
    d = rec["doc"] or {}
    return {
        "ok": rec["ok"] and bool(d),
        "step_s": d.get("step_seconds_median"),
        "step_mean": d.get("step_seconds"),
        "tps": d.get("tokens_per_second"),
        "useful_tps": d.get("useful_tokens_per_second"),
        "useful_fraction": d.get("useful_fraction"),
        "ttfs": d.get("time_to_first_step"),
        "wall": rec["wall"],
        "rss_mb": rec["maxrss_mb"],
    }


def med(runs: list[dict[str, Any]], key: str) -> float | None:
    return bl.median([r.get(key) for r in runs if r.get("ok")])


# ---------------------------------------------------------------------------- sections ---
def sec_cli(report: dict[str, Any]) -> None:
    n = 3 if QUICK else 7
    cases = {
        "python -c pass (interpreter floor)": [PY, "-c", "pass"],
        "gemma --help": [GEMMA, "--help"],
        # --offline: the preflight would otherwise ask for Kaggle credentials and probe the host
        "gemma config validate --offline configs/imdb_7b_tpu.yaml": [GEMMA, "config", "validate", "--offline",
                                                                     "configs/imdb_7b_tpu.yaml"],
    }
    walls: dict[str, list[float]] = {k: [] for k in cases}
    for i in range(n):  # interleaved
        for k, cmd in cases.items():
            r = run(f"cli: {k} #{i + 1}", cmd, 30)
            if r["ok"]:
                walls[k].append(r["wall"])
    # why: the slowest imports of `gemma --help`
    top: list[tuple[int, str]] = []
    r = subprocess.run([PY, "-X", "importtime", GEMMA, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    for ln in r.stderr.splitlines():
        if ln.startswith("import time:") and "|" in ln:
            _, cum, mod = (x.strip() for x in ln.split(":", 1)[1].split("|"))
            if cum.isdigit():
                top.append((int(cum), mod))
    top.sort(reverse=True)
    heavy = [m for m in ("keras", "jax", "tensorflow", "keras_hub", "pydantic") if any(mod.strip() == m for _, mod in top)]
    floor = bl.median(walls["python -c pass (interpreter floor)"])
    help_m = bl.median(walls["gemma --help"])
    val_m = bl.median(walls["gemma config validate --offline configs/imdb_7b_tpu.yaml"])
    RAW["cli"] = {k: v for k, v in walls.items()}
    RAW["cli_importtime_top"] = top[:20]
    report["summary"] += [
        ["`gemma --help` wall (median)", bl.fmt(help_m, " s"), "≤ 0.3 s", bl.verdict(help_m, 0.3)],
        ["`gemma config validate` wall (median)", bl.fmt(val_m, " s"), "≤ 0.5 s", bl.verdict(val_m, 0.5)],
    ]
    rows = [[k, len(walls[k]), bl.median(walls[k]), min(walls[k]) if walls[k] else None] for k in cases]
    notes = [
        "`python -X importtime gemma --help`, heaviest cumulative imports (ms): "
        + ", ".join(f"{m.strip()} {c / 1000:.0f}" for c, m in top[:10]),
        "heavy modules imported by `--help`: " + (", ".join(heavy) if heavy else "none of keras/jax/tensorflow/keras_hub/pydantic"),
        f"`gemma --help` costs {bl.fmt(help_m and floor and help_m - floor, ' s')} over the bare interpreter "
        f"({bl.fmt(bl.ratio(help_m, floor))}× it); `config validate` {bl.fmt(val_m and floor and val_m - floor, ' s')}.",
        "`config validate` pays for pydantic twice over: typer ≥ 0.2x imports it (typer._adapters, ~0.13 s here) to "
        "coerce any option value, and the run-config schema is pydantic; the preflight's own work (schema, "
        "keras-hub registry read from its files, paths) is ~0.07 s in-process.",
    ]
    report["sections"].append({"title": "1. CLI start-up", "headers": ["command", "n", "median s", "min s"], "rows": rows, "notes": notes})


def sec_inspect(report: dict[str, Any]) -> None:
    cases = [
        ("gemma2_27b_en on (2, 8)", ["configs/gemma2_9b_tpu.yaml", "model.preset=gemma2_27b_en", "mesh.shape=[2,8]"]),
        ("gemma_7b_en on (1, 8)", ["configs/imdb_7b_tpu.yaml"]),
        ("gemma4_31b on (2, 8)", ["configs/gemma4_31b_tpu.yaml", "mesh.shape=[2,8]"]),
        ("gemma4_26b_a4b (MoE) on (2, 4)", ["configs/gemma4_26b_moe.yaml"]),
    ]
    rows = []
    for label, args in cases:
        r = run(f"inspect {label}", [GEMMA, "inspect", *args, "--json"], 120)
        d = r["doc"] or {}
        params = (d.get("totals") or {}).get("params")
        rows.append([label, params, r["wall"], r["maxrss_mb"], "ok" if r["ok"] else r.get("err", "failed")])
        report["summary"].append([f"`gemma inspect` {label}: time / peak RSS", f"{bl.fmt(r['wall'], ' s')} / {bl.fmt(r['maxrss_mb'], ' MB')}",
                                  "≤ 10 s / ≤ 2048 MB",
                                  "met" if r["ok"] and r["wall"] <= 10 and (r["maxrss_mb"] or 0) <= 2048 else ("MISSED" if r["ok"] else "failed")])
        # the same plan with `import tensorflow` blocked (keras-hub imports TF whenever it is installed)
        v = run(f"inspect {label}, TensorFlow blocked", [PY, str(HERE / "gemma_variant.py"), "inspect", *args, "--json"], 120, {"BENCH_NO_TF": "1"})
        vd = v["doc"] or {}
        same = (vd.get("totals") or {}).get("params") == params and len(vd.get("variables") or []) == len(d.get("variables") or [])
        rows.append([f"{label}, TF blocked (proposed)", (vd.get("totals") or {}).get("params"), v["wall"], v["maxrss_mb"],
                     ("ok, same plan" if same else "ok, plan DIFFERS") if v["ok"] else v.get("err", "failed")])
    report["sections"].append({
        "title": "5. `gemma inspect` plans (no weights allocated)",
        "headers": ["plan", "params", "wall s", "peak RSS MB", "status"],
        "rows": rows,
        "notes": ["peak RSS is the child's maximum resident set (`/usr/bin/time %M`)." if TIME_BIN else "no /usr/bin/time: peak RSS not measured",
                  "plan mode runs without TensorFlow (`runtime.setup(without_tensorflow=True)` from `gemma inspect` "
                  "without --live: keras-hub then loads TF-free); before that change TensorFlow's import was most of the "
                  "time (12.0 s / 885 MB for the 27B plan in an earlier run of this bench). The 'TF blocked' rows run "
                  "`benchmarks/gemma_variant.py` with `sys.modules['tensorflow'] = None` as a cross-check: same plan."],
    })


def sec_fit(report: dict[str, Any]) -> None:
    """The smallest TPU slice each big model fits (benchmarks/fit_table.py, plans only)."""
    r = run("fit table", [PY, str(HERE / "fit_table.py"), *(["--quick"] if QUICK else [])], 900, need=60)
    d = r["doc"]
    if not r["ok"] or not d:
        report["sections"].append({"title": "5b. Big models: the smallest TPU slice that fits", "text": f"not measured: {r.get('err', 'failed')}"})
        return
    RAW["fit_table"] = d

    def cell(c: dict[str, Any] | None) -> str:
        if not c:
            return "does not fit in 256 chips"
        return f"{c['slice']} ({c['mesh'][0]}×{c['mesh'][1]}, {c['bytes_per_chip'] / 2**30:.1f} GiB)"

    rows = [[x["model"], x["finetune"], f"{x['chip']} ({x['chip_bytes'] / 2**30:.0f} GiB)", *[cell(c) for c in x["cells"]]] for x in d["rows"]]
    notes = [
        f"Workload: global batch {d['batch']} × {d['sequence_length']} tokens, bfloat16, AdamW, LoRA rank {d['lora_rank']} on "
        "query and value (keras-hub's default targets) or a full fine-tune, `train.loss_chunk: auto`. A cell is the smallest "
        "slice for which some mesh (batch × model, model axis a power of two up to 16, batch axis dividing the global batch) "
        "has a per-chip estimate (`gemma inspect`'s: weights + gradients + optimizer state + activations + logits, "
        "`gemma_cli/engine/plan/memory.py`) within the chip's nominal HBM; the mesh and the estimate are in parentheses. "
        "Slice names count chips for v5e and TensorCores for v4/v5p (2 per chip). Plans only, computed in "
        f"{d['seconds']} s; gradient accumulation (smaller per-chip batches) would fit smaller slices still.",
        "`default` already shards the big kernels over both mesh axes for Gemma (keras-hub's Gemma layout is 2-D); `fsdp` "
        "adds what no family rule names — the LoRA adapters (float32, replicated under `default`) and any other matrix "
        "(Llama's untied output head) — which is where the two columns differ.",
        "The activation and logits terms were fitted to six H100 peaks (FACTS.md; within −7…+10 %). XLA on CPU holds "
        "far more: `gemma inspect --live` measured 46.9 GiB for a Gemma 3 270M float32 full fine-tune at 16 × 512 on one "
        "CPU device where the estimate says 23.3 GiB (the LoRA demo config on the (2, 4) mesh: 0.35 vs 0.36 GiB). Treat a "
        "cell near the chip's size as a maybe and check it with `gemma inspect --live` on the slice.",
    ]
    if d.get("missing"):
        notes.append(f"Not in the architecture table yet (not planned): {', '.join(d['missing'])}.")
    report["sections"].append({
        "title": "5b. Big models: the smallest TPU slice that fits (from the estimate)",
        "headers": ["model", "fine-tune", "chip", *d["modes"]],
        "rows": rows,
        "notes": notes,
    })


def sec_train(report: dict[str, Any], fixed: Path, varied: Path) -> None:
    # --- 2/4: A/B interleaved on full-length sequences
    A: list[dict[str, Any]] = []
    B: list[dict[str, Any]] = []
    for i in range(PAIRS):
        A.append(ours(f"train A gemma finetune #{i + 1}", bench_config(f"ab_ours_{i}", fixed)))
        B.append(baseline(f"train B keras-hub baseline #{i + 1}", fixed))
    RAW["train_ab"] = {"gemma": A, "baseline": B}
    a_step, b_step = med(A, "step_s"), med(B, "step_s")
    r = bl.ratio(a_step, b_step)
    report["summary"].append(["step time gemma / keras-hub baseline (median)", bl.fmt(r), "≤ 1.03", bl.verdict(r, 1.03)])
    rows = [
        ["gemma finetune", sum(x["ok"] for x in A), a_step, med(A, "tps"), med(A, "ttfs"), med(A, "wall"), med(A, "rss_mb")],
        ["keras-hub baseline", sum(x["ok"] for x in B), b_step, med(B, "tps"), med(B, "ttfs"), med(B, "wall"), med(B, "rss_mb")],
    ]
    report["sections"].append({
        "title": "2 & 4. Steady-state step time and time to first step (bench model, 8 CPU devices, mesh (2, 4))",
        "text": (f"Model: Gemma 3 from tests/tiny.py scaled to hidden {MODEL['hidden']}, {MODEL['layers']} layers, "
                 f"{MODEL['heads']} query / {MODEL['kv-heads']} KV heads × {MODEL['head-dim']}, FFW {MODEL['ffw']}, vocab 128; "
                 f"LoRA rank {LORA}, AdamW; batch {BATCH} × {SEQ} tokens, {STEPS} steps per run (the first excluded; the loss is read "
                 f"— a host sync — after step 1 and every 10 steps on both sides, gemma's default log_every; step time = median over "
                 f"the 10-step windows within a run of their per-step time, then the median over runs); runs interleaved A B A B ..., {PAIRS} pair(s). Same DeviceMesh, same Gemma 3 layout rules, "
                 "same token batches (fixed-length texts: no padding)."),
        "headers": ["", "runs", "step s", "tokens/s", "time to first step s", "process wall s", "peak RSS MB"],
        "rows": rows,
        "notes": [f"ratio of medians gemma/baseline: {bl.fmt(r)}; per-run step s gemma {[bl.fmt(x['step_s']) for x in A]}, "
                  f"baseline {[bl.fmt(x['step_s']) for x in B]}",
                  "time to first step = from just before `fit` to the end of step 1 (tracing + XLA compilation + 1 step); "
                  "process wall adds interpreter, imports, preset load and the final checkpoint (gemma)."],
    })
    report["summary"].append(["time to first step gemma / baseline (s)", f"{bl.fmt(med(A, 'ttfs'))} / {bl.fmt(med(B, 'ttfs'))}", "(reported)", "—"])

    # --- 3: useful tokens/s on varied lengths
    if QUICK:
        pk = [ours("packing on (varied lengths)", bench_config("pack_on", varied, packing=True))]
        off: list[dict[str, Any]] = []
        base_v = [baseline("baseline padded (varied lengths)", varied)]
    else:
        off = [ours("packing off (varied lengths)", bench_config("pack_off", varied, packing=False))]
        pk = [ours("packing on (varied lengths)", bench_config("pack_on", varied, packing=True))]
        base_v = [baseline("baseline padded (varied lengths)", varied)]
    RAW["packing"] = {"off": off, "on": pk, "baseline": base_v}
    r_pack = bl.ratio(med(pk, "useful_tps"), med(base_v, "useful_tps"))
    report["summary"].append(["useful tokens/s, gemma packing on / baseline (padded)", bl.fmt(r_pack), "≥ 1.5", bl.verdict(r_pack, 1.5, "higher")])
    rows = [[n, med(x, "useful_fraction"), med(x, "step_s"), med(x, "tps"), med(x, "useful_tps")]
            for n, x in (("gemma, packing off", off), ("gemma, packing on", pk), ("keras-hub baseline (pads)", base_v)) if x]
    report["sections"].append({
        "title": "3. Useful (non-padding) tokens/s on varied-length text",
        "text": "600 texts with long-tailed lengths (log-normal, median ~20 words, cut at 150) from the tiny corpus' words; "
                f"sequence {SEQ}, batch {BATCH}. Useful tokens are label positions whose sample weight is 1.",
        "headers": ["", "useful fraction", "step s", "tokens/s", "useful tokens/s"],
        "rows": rows,
        "notes": [f"packing on vs the padding baseline: {bl.fmt(r_pack)}× useful tokens/s "
                  f"(packing off vs baseline: {bl.fmt(bl.ratio(med(off, 'useful_tps'), med(base_v, 'useful_tps')))}×)."],
    })


def sec_dpo(report: dict[str, Any], fixed: Path) -> None:
    """A LoRA-DPO step (BATCH/2 pairs: BATCH sequences, the reference forward pass included)
    against an SFT step over BATCH sequences of the same length, on the bench model."""
    import yaml

    words = " ".join(json.loads(ln)["text"] for ln in fixed.read_text().splitlines()[:4]).split()
    rng = random.Random(1)
    pairs = OUT / "pairs.jsonl"
    with pairs.open("w") as f:
        for _ in range(96):  # every row full: a 64-token prompt and completions past the row
            prompt, c, r = (" ".join(rng.choice(words) for _ in range(n)) for n in (60, 150, 150))
            f.write(json.dumps({"prompt": prompt, "chosen": c, "rejected": r}) + "\n")
    n = 1 if QUICK else 2
    D: list[dict[str, Any]] = []
    S: list[dict[str, Any]] = []
    for i in range(n):
        cfg = bench_config(f"dpo_{i}", pairs)
        doc = yaml.safe_load(cfg.read_text())
        doc["train"]["method"] = "dpo"
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        D.append(ours(f"dpo LoRA-DPO step #{i + 1}", cfg))
        S.append(ours(f"dpo SFT step, same sequences #{i + 1}", bench_config(f"dpo_sft_{i}", fixed)))
    RAW["dpo"] = {"dpo": D, "sft": S}
    d_step, s_step = med(D, "step_s"), med(S, "step_s")
    r = bl.ratio(d_step, s_step)
    report["summary"].append(["LoRA-DPO step / SFT step over the same sequences (median)", bl.fmt(r), "≤ 1.5", bl.verdict(r, 1.5)])
    report["sections"].append({
        "title": "DPO: a LoRA-DPO step against an SFT step over the same two sequences per pair",
        "text": (f"Bench model, LoRA rank {LORA}, batch {BATCH} sequences × {SEQ} tokens: {BATCH // 2} preference pairs "
                 f"(chosen and rejected rows, every row full) against SFT on {BATCH} full-length texts. The DPO step "
                 "includes the reference forward pass (the model with its adapters off) in the same step."),
        "headers": ["", "runs", "step s", "per pair s", "time to first step s"],
        "rows": [["LoRA-DPO", sum(x["ok"] for x in D), d_step, d_step and d_step / (BATCH // 2), med(D, "ttfs")],
                 ["SFT", sum(x["ok"] for x in S), s_step, s_step and s_step / (BATCH // 2), med(S, "ttfs")]],
        "notes": [f"ratio of medians DPO/SFT: {bl.fmt(r)}"],
    })


def sec_segments(report: dict[str, Any], varied: Path) -> None:
    """3b. Packing that keeps documents apart (segment ids) vs unpacked padded batches."""
    steps = 6 if QUICK else 20
    r = run("packing with documents apart (segments_bench.py)",
            [PY, str(HERE / "segments_bench.py"), "--preset", str(OUT / "bench_preset"), "--data", str(varied),
             "--seq", str(SEQ), "--batch", str(BATCH), "--steps", str(steps), "--mesh", "2,4",
             "--lora", str(LORA)], 360, need=100)
    d = r["doc"] or {}
    RAW["segments"] = d
    ratio = d.get("packed_vs_unpacked_useful_tps")
    report["summary"].append(["useful tokens/s, packing with documents apart / unpacked", bl.fmt(ratio), "≥ 1.5",
                              bl.verdict(ratio, 1.5, "higher")])
    names = (("unpacked (one text per row, padded)", "unpacked"), ("packed, segment ids (documents apart)", "packed"),
             ("packed, 0/1 mask (documents see earlier ones)", "packed_01_mask"))
    rows = [[label, (d.get(k) or {}).get("rows"), (d.get(k) or {}).get("useful_fraction"), (d.get(k) or {}).get("step_seconds"),
             (d.get(k) or {}).get("tokens_per_second"), (d.get(k) or {}).get("useful_tokens_per_second")] for label, k in names]
    report["sections"].append({
        "title": "3b. Packing that keeps documents apart (segment ids, gemma_cli/engine/patches/segments.py)",
        "text": f"The varied-length texts of section 3, whole texts first-fit into rows of {SEQ + 1} tokens (cut when longer), "
                f"batch {BATCH}, LoRA {LORA}, mesh (2, 4); the three variants' train steps take turns (A B C A B C ...), "
                f"{steps} timed steps each, median step. Useful tokens: targets with weight 1 (not padding, not the first token of "
                "the next text).",
        "headers": ["", "rows", "useful fraction", "step s", "tokens/s", "useful tokens/s"],
        "rows": rows,
        "notes": [f"packed with segments vs unpacked: {bl.fmt(ratio)}× useful tokens/s; the segment-aware mask's step time "
                  f"vs the same packed rows with a 0/1 mask: {bl.fmt(d.get('segment_mask_step_cost'))}×."
                  if d else f"not measured: {r.get('err')}"],
    })


def big_jsonl(path: Path, mb: int) -> float:
    """Write a JSONL of about `mb` MB (records of 20-400 words); returns the seconds it took.

    Kept between runs in benchmarks/out (not in git) while its size matches.
    """
    target = mb << 20
    if path.exists() and abs(path.stat().st_size - target) < (1 << 20):
        return 0.0
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import CORPUS

    words = " ".join(CORPUS[:6]).split()
    rng = random.Random(0)
    pool = [json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(20, 400))), "id": i}) + "\n"
            for i in range(2000)]
    t = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        size = 0
        while size < target:
            chunk = "".join(rng.choice(pool) for _ in range(500))
            f.write(chunk)
            size += len(chunk)
    tmp.replace(path)
    return time.perf_counter() - t


def sec_data(report: dict[str, Any]) -> None:
    """Data at scale: the same config on a 10 MB and a 1 GB JSONL, and the pipeline's own speed."""
    small, big = OUT / "data_10mb.jsonl", OUT / "data_1gb.jsonl"
    gen = {"10 MB": big_jsonl(small, 10), "1 GB": big_jsonl(big, 1024)}
    files = {"10 MB": small, "1 GB": big}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in files}
    for i in range(1 if QUICK else 2):  # interleaved
        for k, path in files.items():
            cfg = bench_config(f"scale_{k.replace(' ', '')}_{i}", path, steps=2)
            runs[k].append(ours(f"data {k}: gemma finetune 2 steps #{i + 1}", cfg))
    RAW["data_scale"] = runs
    wall = {k: med(v, "wall") for k, v in runs.items()}
    rss = {k: med(v, "rss_mb") for k, v in runs.items()}
    step_tps = {k: med(v, "tps") for k, v in runs.items()}
    t_ratio, m_ratio = bl.ratio(wall["1 GB"], wall["10 MB"]), bl.ratio(rss["1 GB"], rss["10 MB"])
    report["summary"] += [
        ["time to first step, 1 GB / 10 MB JSONL", bl.fmt(t_ratio), "≤ 1.2", bl.verdict(t_ratio, 1.2)],
        ["peak RSS, 1 GB / 10 MB JSONL", bl.fmt(m_ratio), "≤ 1.2", bl.verdict(m_ratio, 1.2)],
    ]
    thr = run("data 1 GB: input pipeline alone", [PY, str(HERE / "data_throughput.py"), str(bench_config("scale_tp", big)),
                                                   "--batches", "20" if QUICK else "60"], 300, DEV8, need=30)
    td = thr["doc"] or {}
    RAW["data_throughput"] = td
    consume = step_tps["1 GB"]
    headroom = bl.ratio(td.get("tokens_per_second"), consume)
    report["summary"].append(["input pipeline tokens/s ÷ train step's tokens/s (bench model)", bl.fmt(headroom), "≥ 1", bl.verdict(headroom, 1.0, "higher")])
    report["sections"].append({
        "title": "Data at scale (streaming pipeline)",
        "text": f"The bench config (batch {BATCH} × {SEQ}, LoRA {LORA}, mesh (2, 4)) for 2 steps on generated JSONL files; "
                "time to first step = the process's wall time for the whole 2-step run (start-up, model, data index and "
                "checks, compile, 2 steps, checkpoint). The files are generated here (benchmarks/out, not in git).",
        "headers": ["data", "file MB", "generated in s", "wall s (time to first step)", "peak RSS MB", "train tokens/s"],
        "rows": [[k, round(files[k].stat().st_size / 2**20), gen[k] or "cached", wall[k], rss[k], step_tps[k]] for k in files],
        "notes": [
            f"input pipeline alone on the 1 GB file (one process feeding both streams, {td.get('workers')} reader threads, 0 = the calling thread): "
            f"{bl.fmt(td.get('tokens_per_second'))} tokens/s ({bl.fmt(td.get('useful_tokens_per_second'))} non-padding), "
            f"built in {bl.fmt(td.get('build_seconds'), ' s')} (index of {bl.fmt(td.get('records'))} records, first batch), "
            f"peak RSS {bl.fmt(td.get('peak_rss_mb'), ' MB')}; the train step consumes {bl.fmt(consume)} tokens/s.",
            "JSONL is indexed by one vectorised pass over the file (a byte offset per 32 records or 64 KiB); records are read, "
            "rendered and tokenized lazily in worker threads, so memory does not grow with the file.",
        ],
    })


IMAGES_TITLE = "Images: the pipeline's images/s vs the step's consumption (issue #26)"


def sec_images(report: dict[str, Any]) -> None:
    """Images decoded and resized by the data pipeline vs images a training step eats
    (benchmarks/image_throughput.py: a Gemma 3 tower of the real geometry, narrow)."""
    r = run("images: pipeline and step", [PY, str(HERE / "image_throughput.py"), str(OUT / "images"),
                                          "--images", "16" if QUICK else "32", "--steps", "4" if QUICK else "8"], 600, need=60)
    d = r["doc"] or {}
    RAW["images"] = d
    if not d:
        report["sections"].append({"title": IMAGES_TITLE, "text": f"not measured: {r.get('err', 'failed')}"})
        return
    pipe, st = d.get("pipeline", {}), d.get("step") or {}
    rows = [[f"data pipeline, data.workers {v['workers']} ({'the calling thread' if not v['workers'] else 'threads'})",
             bl.fmt(v["images_per_second"]), f"{v['images']} images in {v['seconds']} s; first batch {v['first_batch_seconds']} s"]
            for v in pipe.values()]
    rows.append(["train step, bench text model + narrow tower at 896 px, LoRA, frozen tower, mesh (2, 4)",
                 bl.fmt(st.get("images_per_second")), f"median step {bl.fmt(st.get('step_seconds'), ' s')} for "
                 f"{d.get('batch')} sequences of {d.get('sequence_length')} tokens, one image each"])
    best = max((v["images_per_second"] for v in pipe.values()), default=None)
    headroom = bl.ratio(best, st.get("images_per_second"))
    report["summary"].append(["image pipeline images/s ÷ train step's images/s (bench vision model)", bl.fmt(headroom), "≥ 1",
                              bl.verdict(headroom, 1.0, "higher")])
    t = d.get("tower", {})
    report["sections"] = [s for s in report["sections"] if s.get("title") != IMAGES_TITLE]
    report["sections"].append({
        "title": IMAGES_TITLE,
        "text": "Photo-sized images (half PNG 1024×768, half JPEG 1600×1200), one per chat record. The pipeline "
                "(engine/data, one process feeding both streams of a (2, 4) mesh) decodes each image once, crops the "
                f"centred square, resizes it bilinearly to {t.get('image_size')} px and scales it (as keras-hub's "
                "Gemma3ImageConverter); the step is `gemma finetune` of a Gemma 3 text backbone of the bench model's size "
                f"with a vision tower of Gemma 3's geometry ({t.get('image_size')} px, {t.get('patch_size')}-px patches, "
                f"pooled to 256 tokens) but {t.get('hidden_dim')} wide and {t.get('num_layers')} layer deep, on 8 CPU devices.",
        "headers": ["what", "images/s", "how"],
        "rows": rows,
        "notes": [
            "One image costs ~55 ms of one core here (decode ~20 ms, float conversion ~10-20 ms, the numpy bilinear "
            "resize ~40 ms); reader threads do not add throughput (the resize holds the GIL), so the pipeline gives "
            "~10-15 images/s per process on this 2-core machine.",
            "For scale (not measured here): a Gemma 3 4B LoRA step of 8 × 1024 text tokens took 307 ms on an H100 "
            "(FACTS), ≈ 26 sequences/s before the tower's own cost; one image per sequence would need the pipeline "
            "to keep up with ~20 images/s per accelerator host, above what one process gives on two cores.",
        ],
    })


def sec_opt(report: dict[str, Any], fixed: Path) -> None:
    A = RAW.get("train_ab", {}).get("gemma", [])
    opt_rows: list[list[Any]] = []
    base_step = med(A, "step_s")
    opt_rows.append(["baseline of this table: gemma finetune as in section 2", base_step, med(A, "ttfs"), med(A, "rss_mb"), "—"])
    if not QUICK:
        variants = [
            ("train.steps_per_execution 4 (vs 1)", lambda: ours("spe=4", bench_config("spe4", fixed, spe=4))),
            ("model.precision bfloat16 (vs float32)", lambda: ours("bfloat16", bench_config("bf16", fixed, precision="bfloat16"))),
        ]
        for label, fn in variants:
            res = fn()
            RAW.setdefault("variants", {})[label] = res
            opt_rows.append([label, res["step_s"], res["ttfs"], res["rss_mb"], bl.fmt(bl.ratio(res["step_s"], base_step))])
        # last, as time allows: no tokenizer threads (records read in the training thread)
        res = ours("data.workers 2", bench_config("workers2", fixed, workers=2))
        RAW.setdefault("variants", {})["data.workers 2"] = res
        opt_rows.append(["data.workers 2 (vs 0, the CPU backend's default: records tokenized in the training thread)", res["step_s"], res["ttfs"], res["rss_mb"], bl.fmt(bl.ratio(res["step_s"], base_step))])
    report["sections"].append({
        "title": "Optimizations (bench model; one run each, compare with the medians of section 2)",
        "headers": ["variant", "step s", "time to first step s", "peak RSS MB", "step time vs reference"],
        "rows": opt_rows,
        "notes": ["QUICK mode: variants skipped."] if QUICK else [],
    })


def sec_real(report: dict[str, Any]) -> None:
    if QUICK:
        report["sections"].append({"title": "6. Real Gemma 3 270M", "text": "skipped in QUICK mode."})
        return
    if not (REAL / "config.json").exists():
        FAILURES.append({"name": "real Gemma 3 270M", "error": f"{REAL} missing: run `make preset`"})
        return
    import yaml

    demo = yaml.safe_load((ROOT / "configs" / "gemma3_270m_demo.yaml").read_text())
    demo["model"]["preset"] = str(REAL)
    steps = 4 if QUICK else 8
    out_dir = OUT / "runs" / "real_270m"
    shutil.rmtree(out_dir, ignore_errors=True)
    demo["train"].update({"max_steps": steps, "output_dir": str(out_dir), "checkpoint_every": None, "eval_every": None, "log_every": 1})
    demo["data"]["eval_holdout"] = None
    cfgp = OUT / "configs" / "real_270m.yaml"
    cfgp.write_text(yaml.safe_dump(demo, sort_keys=False))
    ft = ours("real 270M: gemma finetune (LoRA)", cfgp, timeout=420)
    RAW["real_finetune"] = ft
    d = demo["data"]
    lora = demo["model"]["lora"]
    targets = "all projections" if lora.get("target_layers") else "query, value"
    rows = [[f"gemma finetune, LoRA rank {lora['rank']} ({targets}), mesh (2, 4), 8 CPU devices", f"{d['batch_size']} × {d['sequence_length']}", steps,
             ft["step_s"], ft["tps"], ft["ttfs"], ft["wall"], ft["rss_mb"]]]
    report["sections"].append({
        "title": "6. Real Gemma 3 270M on this CPU",
        "text": "LoRA fine-tune of `configs/gemma3_270m_demo.yaml` (packing on, data/demo_gemma_cli.jsonl) for a few steps, fresh output_dir, no eval.",
        "headers": ["run", "batch", "steps", "step s", "tokens/s", "time to first step s", "process wall s", "peak RSS MB"],
        "rows": rows,
    })
    # generation: ours vs plain keras-hub, same prompts and max_length, one device each
    prompts = ["The capital of France is", "def fibonacci(n):", "Instruction:\nWhat does gemma inspect show?\n\nResponse:\n", "The three primary colors are"]
    max_len = 48 if QUICK else 64
    args = [a for p in prompts + prompts for a in ("-p", p)]
    g = run("real 270M: gemma generate", [GEMMA, "generate", str(cfgp), "mesh.shape=[1,1]", *args, "--max-length", str(max_len),
                                         "--batch-size", str(len(prompts)), "--json", "--quiet"], 420, {"GEMMA_CPU_DEVICES": ""}, need=100)
    gd = g["doc"] or {}
    res = gd.get("results") or []
    first = [x for x in res if x.get("compiled")]
    warm = [x for x in res if not x.get("compiled")]
    ours_first = first[0]["seconds"] if first else None
    ours_warm = warm[0]["seconds"] if warm else None
    ours_tps = (sum(x["completion_tokens"] for x in warm) / ours_warm) if warm and ours_warm else None
    b = run("real 270M: keras-hub generate", [PY, str(HERE / "baseline_generate.py"), "--preset", str(REAL), "--max-length", str(max_len),
                                             *[a for p in prompts for a in ("-p", p)]], 420, need=100)
    bd = b["doc"] or {}
    RAW["generate"] = {"gemma": _slim(gd) | {"first_s": ours_first, "warm_s": ours_warm, "warm_tps": ours_tps}, "baseline": bd}
    gr = bl.ratio(ours_tps, bd.get("warm_tokens_per_second"))
    report["summary"].append(["generate tokens/s gemma / keras-hub (warm batch, 270M)", bl.fmt(gr), "≈ 1 (within 3%)", "met" if gr and gr >= 0.97 else "MISSED" if gr else "n/a"])
    report["sections"].append({
        "title": "6b. Generation, real Gemma 3 270M, greedy, one CPU device each",
        "text": f"{len(prompts)} prompts as one batch, max_length {max_len}; called twice with the same batch shape "
                "(gemma: 8 prompts with --batch-size 4 → two batches; baseline: `generate` twice).",
        "headers": ["", "1st call s (compiles)", "2nd call s (reuses)", "new tokens/s (2nd call)", "process wall s", "peak RSS MB"],
        "rows": [["gemma generate", ours_first, ours_warm, ours_tps, g["wall"], g["maxrss_mb"]],
                 ["keras-hub CausalLM.generate", bd.get("first_seconds"), bd.get("warm_seconds"), bd.get("warm_tokens_per_second"), b["wall"], b["maxrss_mb"]]],
        "notes": [f"compilation reuse: gemma's 2nd batch took {bl.fmt(bl.ratio(ours_warm, ours_first))}× the first; "
                  f"keras-hub's {bl.fmt(bl.ratio(bd.get('warm_seconds'), bd.get('first_seconds')))}×.",
                  f"baseline sample: {json.dumps((bd.get('sample') or '')[:120])}"],
    })


def real_demo_config(name: str, run_name: str) -> Path:
    """The demo config on the real 270M, written to OUT/configs/NAME.yaml (runs under OUT/runs)."""
    import yaml

    demo = yaml.safe_load((ROOT / "configs" / "gemma3_270m_demo.yaml").read_text())
    demo["model"]["preset"] = str(REAL)
    demo["train"]["output_dir"] = str(OUT / "runs" / run_name)
    cfgp = OUT / "configs" / f"{name}.yaml"
    cfgp.parent.mkdir(parents=True, exist_ok=True)
    cfgp.write_text(yaml.safe_dump(demo, sort_keys=False))
    return cfgp


def sec_eval(report: dict[str, Any]) -> None:
    """`gemma eval`: its generation vs `gemma generate` (same prompts, batch, max_length), and
    its likelihood scoring vs a training step's forward (benchmarks/eval_speed.py)."""
    if QUICK or not (REAL / "config.json").exists():
        report["sections"].append({"title": "6c. gemma eval speed", "text": "skipped (QUICK mode or no real preset)."})
        return
    cfgp = real_demo_config("eval_270m", "eval_speed")
    prompts = ["The capital of France is", "def fibonacci(n):", "Instruction:\nWhat does gemma inspect show?\n\nResponse:\n", "The three primary colors are"]
    data = OUT / "eval_prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts + prompts))
    max_len = 64
    e = run("real 270M: gemma eval (generation)", [GEMMA, "eval", str(cfgp), "mesh.shape=[1,1]", "--data", str(data), "--max-length", str(max_len),
                                                   "--batch-size", str(len(prompts)), "--json", "--quiet"], 420, {"GEMMA_CPU_DEVICES": ""}, need=100)
    gen = (((e["doc"] or {}).get("targets") or [{}])[0].get("generation") or {})
    eval_tps = gen.get("warm_tokens_per_second")
    gen_tps = ((RAW.get("generate") or {}).get("gemma") or {}).get("warm_tps")
    r_gen = bl.ratio(eval_tps, gen_tps)
    s = run("real 270M: eval likelihood vs train forward", [PY, str(HERE / "eval_speed.py"), str(cfgp), "mesh.shape=[1,1]", "--batch", "4",
                                                            "--seq", "256"], 420, {"GEMMA_CPU_DEVICES": ""}, need=100)
    sd = s["doc"] or {}
    r_lik = sd.get("ratio")
    RAW["eval"] = {"generation": gen, "likelihood": sd}
    report["summary"].append(["eval generation tokens/s / gemma generate (warm batch, 270M)", bl.fmt(r_gen), "≥ 0.95", bl.verdict(r_gen, 0.95, "higher")])
    report["summary"].append(["eval likelihood tokens/s / training forward (270M, 4 × 256)", bl.fmt(r_lik), "≥ 0.9", bl.verdict(r_lik, 0.9, "higher")])
    report["sections"].append({
        "title": "6c. gemma eval speed, real Gemma 3 270M, one CPU device",
        "text": "Generation: the prompts of 6b as an eval file, the same batch and max_length (warm batches). Likelihood: "
                "`Scorer.score` against the jitted forward + loss of the training model on the same 4 × 256 tokens (best of 3, warm).",
        "headers": ["", "gemma eval", "reference", "ratio"],
        "rows": [["generation new tokens/s", eval_tps, gen_tps, bl.fmt(r_gen)],
                 ["likelihood tokens/s", sd.get("likelihood_tokens_per_second"), sd.get("forward_tokens_per_second"), bl.fmt(r_lik)]],
    })


def sec_grpo(report: dict[str, Any]) -> None:
    """GRPO: rollout tokens/s against keras-hub's generate, and a whole GRPO step against TRL's
    GRPOTrainer on the HF export (benchmarks/grpo_speed.py), on the real 270M (one CPU device)."""
    if QUICK or not (REAL / "config.json").exists():
        report["sections"].append({"title": "6d. GRPO speed", "text": "skipped (QUICK mode or no real preset)."})
        return
    cfgp = real_demo_config("grpo_270m", "grpo_speed")
    r = run("real 270M: GRPO rollouts and step vs TRL", [PY, str(HERE / "grpo_speed.py"), str(cfgp), "mesh.shape=[1,1]",
                                                         "--steps", "5", "--gens", "4", "--prompts", "2", "--new", "32"],
            1800, {"GEMMA_CPU_DEVICES": ""}, need=200)
    d = r["doc"] or {}
    ro, ours, trl = d.get("rollout") or {}, d.get("ours") or {}, d.get("trl") or {}
    RAW["grpo"] = d
    report["summary"].append(["GRPO rollout tokens/s / keras-hub generate (270M, 8 × 32 new)", bl.fmt(ro.get("ratio")), "≥ 1.0",
                              bl.verdict(ro.get("ratio"), 1.0, "higher")])
    report["summary"].append(["GRPO steps/s / TRL GRPOTrainer (270M, 2 prompts × G 4, 32 new)", bl.fmt(d.get("step_ratio")), "≥ 1.5",
                              bl.verdict(d.get("step_ratio"), 1.5, "higher")])
    report["sections"].append({
        "title": GRPO_TITLE,
        "text": "Rollouts: `Rollout` (fixed buffers, random sampler) vs keras-hub `generate` on the same 8 prompts, warm. "
                "Step: median wall time of steady-state steps (rollout + reward + update) vs TRL GRPOTrainer's steps on the "
                "HF export of the same weights (torch, CPU), same G, batch, completion length and reward.",
        "headers": ["", "gemma", "reference", "ratio"],
        "rows": [["rollout new tokens/s", ro.get("ours_tokens_per_second"), ro.get("keras_hub_tokens_per_second"), bl.fmt(ro.get("ratio"))],
                 ["step seconds", ours.get("median_step_s"), trl.get("median_step_s"), bl.fmt(d.get("step_ratio"))]],
    })


def sec_export(report: dict[str, Any]) -> None:
    """`gemma export --format gguf` of the real 270M per dtype: time and file size."""
    if not (REAL / "config.json").exists():
        FAILURES.append({"name": "export gguf", "error": f"{REAL} missing: run `make preset`"})
        return
    dtypes = ["q8_0"] if QUICK else ["f32", "f16", "bf16", "q8_0"]
    out_dir = OUT / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, raw = [], {}
    for dtype in dtypes:
        path = out_dir / f"gemma3_270m-{dtype}.gguf"
        r = run(f"export gguf {dtype}", [GEMMA, "export", str(REAL), "--format", "gguf", "--dtype", dtype, "--out", str(path),
                                         "--force", "--json", "--quiet"], 300, need=60)
        d = r["doc"] or {}
        raw[dtype] = _slim(d) | {"wall": r["wall"], "maxrss_mb": r["maxrss_mb"]}
        mib = d["bytes"] / 2**20 if d.get("bytes") else None
        rows.append([dtype, d.get("load_seconds"), d.get("write_seconds"), r["wall"], mib, r["maxrss_mb"],
                     ", ".join(f"{k} {v}" for k, v in (d.get("tensor_types") or {}).items()) or r.get("err", "failed")])
        path.unlink(missing_ok=True)
    RAW["export_gguf"] = raw
    report["sections"].append({
        "title": "7. Export: real Gemma 3 270M → GGUF per dtype",
        "text": "`gemma export presets/gemma3_270m --format gguf --dtype D` (one process each): loading the preset, then "
                "mapping, converting/quantizing (gguf.quants) and writing the file tensor by tensor. The source GGUF on "
                "PyPI (llama.cpp's Q4_K_M) is 241.4 MiB.",
        "headers": ["dtype", "load s", "write s", "process wall s", "file MiB", "peak RSS MB", "tensor types"],
        "rows": rows,
    })


QUANT_STEPS = 12
QUANT_TITLE = "6e. QLoRA: bf16 vs int8 vs int4 LoRA, real Gemma 3 270M, one CPU device"


def sec_quant(report: dict[str, Any]) -> None:
    """QLoRA on the real 270M: bf16 LoRA vs int8 LoRA vs int4 LoRA (`model.quantize`), one child
    process per mode (honest peak RSS), the same N steps, data and seed; one CPU device."""
    if not (REAL / "config.json").exists():
        FAILURES.append({"name": "QLoRA 270M", "error": f"{REAL} missing: run `make preset`"})
        return
    title = QUANT_TITLE
    n = QUANT_STEPS
    rows, raw = [], {}
    # BENCH_QUANT_REUSE=none,int4: take those modes' measurements from report.json (an earlier
    # run of this section) and run only the others; the section's text says so
    reuse = [m for m in os.environ.get("BENCH_QUANT_REUSE", "").split(",") if m]
    earlier = json.loads((HERE / "report.json").read_text()).get("raw", {}).get("quant", {}) if reuse else {}
    for mode in ("none", "int8", "int4"):
        if mode in reuse and mode in earlier:
            raw[mode] = earlier[mode] | {"reused": True}
            continue
        cfgp = real_demo_config(f"quant_{mode}", f"quant_{mode}")
        shutil.rmtree(OUT / "runs" / f"quant_{mode}", ignore_errors=True)  # metrics.jsonl appends
        r = run(f"real 270M: LoRA fine-tune, quantize {mode}", [
            GEMMA, "finetune", str(cfgp), "model.precision=bfloat16", f"model.quantize={mode}", "mesh.shape=[1,1]",
            f"train.max_steps={n}", f"train.eval_every={n}", f"train.checkpoint_every={n}", "train.log_every=1",
            "--json", "--quiet"], 900, {"GEMMA_CPU_DEVICES": ""}, need=120)
        d = r["doc"] or {}
        recs = _metrics(Path(d.get("output_dir", "/nonexistent")))
        el = [(x["step"], x["elapsed"]) for x in recs if "elapsed" in x]
        before = next((x["eval_loss"] for x in recs if x.get("step") == 0 and "eval_loss" in x), None)
        steps = [(e2 - e1) / (s2 - s1) for (s1, e1), (s2, e2) in zip(el, el[1:], strict=False) if s2 > s1]
        raw[mode] = {"wall": r["wall"], "maxrss_mb": r["maxrss_mb"], "weights": d.get("weights_bytes_per_device"),
                     "step_median": bl.median(steps), "eval_loss": d.get("eval_loss"), "eval_loss_before": before, "first_loss": d.get("first_loss"),
                     "final_loss": d.get("final_loss"), "params": d.get("params"), "ttfs": d.get("time_to_first_step"),
                     "err": r.get("err"), "date": dt.datetime.now().isoformat(timespec="seconds")}
    RAW["quant"] = raw
    base = raw["none"]
    for mode, label in (("none", "bf16 LoRA"), ("int8", "int8 LoRA (W8A8)"), ("int4", "int4 LoRA (weight-only)")):
        x = raw[mode]
        mib = x["weights"] / 2**20 if x["weights"] else None
        rows.append([label, mib, bl.fmt(bl.ratio(x["weights"], base["weights"])), x["maxrss_mb"], x["step_median"],
                     bl.fmt(bl.ratio(x["step_median"], base["step_median"])), x["ttfs"], x["eval_loss_before"], x["eval_loss"],
                     (f"{100 * (x['eval_loss'] / base['eval_loss'] - 1):+.1f} %" if x["eval_loss"] and base["eval_loss"] else "—"),
                     x["wall"]])
    w4 = bl.ratio(raw["int4"]["weights"], base["weights"])
    report["summary"].append(["6e. int4 LoRA weight bytes / bf16 LoRA (270M, embedding int4 too)", bl.fmt(w4), "≤ 0.35",
                              bl.verdict(w4, 0.35, "lower")])
    for mode in ("int8", "int4"):
        lr = bl.ratio(raw[mode]["eval_loss"], base["eval_loss"])
        report["summary"].append([f"6e. {mode} LoRA held-out loss / bf16 LoRA after {n} steps (270M)", bl.fmt(lr, digits=4), "≤ 1.05",
                                  bl.verdict(lr, 1.05, "lower")])
    report["sections"].append({
        "title": title,
        "text": f"`gemma finetune configs/gemma3_270m_demo.yaml model.precision=bfloat16 model.quantize=Q mesh.shape=[1,1] "
                f"train.max_steps={n}` (LoRA rank 16 on every projection, 4 × 128 packed chat tokens, the same data order and "
                f"seed), one child process per mode; held-out loss on data/demo_heldout.jsonl after {n} steps. Weights: the "
                "bytes of the model's variables on the device (`weights_bytes_per_device` of the run summary: base, scales, "
                "zero points, group indices, norms, adapters; no optimizer state). Step: median over steps 2..N (log_every 1)."
                + "".join(f" The {m} row is from an earlier run of this section ({raw[m].get('date', '?')})." for m in raw if raw[m].get("reused")),
        "headers": ["run", "weights MiB", "× bf16", "peak RSS MB", "step s", "× bf16", "time to first step s",
                    "held-out loss @0", f"held-out loss @{n}", "vs bf16", "process wall s"],
        "rows": rows,
        "notes": QUANT_NOTES,
    })


def _metrics(out_dir: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    except OSError:
        return []


QUANT_NOTES = [
    "Embedding: quantized too (int8 per row; int4 sub-channel, blocks of 128 of the 640-wide rows). It is 168M of the 270M's "
    "268M parameters (262,144 × 640) and the tied output projection; LoRA does not adapt it (keras 3.15.1 cannot put LoRA on "
    "an int4 embedding). Leaving it in bf16 would keep int4 at ≈ 0.7× bf16 here.",
    "Step time: keras' int4 is storage-only: every matmul unpacks its kernel (two 4-bit values a byte), applies scale and "
    "zero point and casts it to the compute dtype before a float matmul, forward and backward; nothing runs in 4-bit "
    "arithmetic, so it cannot beat the same matmul in bf16 and adds elementwise work the size of each kernel. int8 runs "
    "an integer matmul on int8-rounded activations (W8A8). The rows run one after another on a shared machine (load "
    "average above); a row that ran under heavier load (compare the times to first step) is slower for that reason: "
    "read a speed ranking only from rows measured together on a quiet machine.",
    "Peak RSS is the whole process (Python, jax, TensorFlow, compiled programs); the base is loaded in bf16 and then "
    "quantized, so the float base is resident once during loading.",
]


def sec_mesh(report: dict[str, Any]) -> None:
    """Collectives and step time per (batch, model) split of the 8 devices (mesh_table.py)."""
    # the tiny model's rows take about 4 minutes on 2 cores, Gemma 3 270M's compiled steps about 8 more, 1B's estimates 3
    r = run("mesh table (mesh_table.py)", [PY, str(HERE / "mesh_table.py"), "--json"], 1500, DEV8, need=300)
    doc = r["doc"] or {}
    RAW["mesh_table"] = doc.get("raw")
    if doc.get("rows"):
        report["sections"].append({k: v for k, v in doc.items() if k in ("title", "text", "headers", "rows", "notes")})


def sec_gpu(report: dict[str, Any]) -> None:
    p = HERE / "gpu_result.json"
    if not p.exists():
        report["sections"].append({"title": "GPU", "text": "no GPU run: benchmarks/gpu_result.json is absent (see benchmarks/gpu_train.py)."})
        return
    g = json.loads(p.read_text())
    report["sections"].append({
        "title": f"GPU: {g.get('device', '?')} (measured separately, {g.get('date', '?')})",
        "text": g.get("text", ""),
        "headers": g.get("headers", []),
        "rows": g.get("rows", []),
        "notes": g.get("notes", []),
    })


NOTES = [
    "CLI start-up: `gemma --help` imports no framework (asserted by a test). Typer's help is formatted by plain click "
    "(`rich_markup_mode=None`): rich-markdown help cost ~0.2 s of import (typer.rich_utils, rich.markdown, "
    "markdown_it). `config validate` adds pydantic and the schema, imported only inside the verbs.",
    "`gemma inspect`: plan mode skips TensorFlow (see section 5); what remains is keras/keras-hub import and "
    "`jax.eval_shape` of the backbone.",
    "Step time vs keras-hub: both compile the same keras-hub train step on the same mesh and batches, and both read "
    "the loss (a host sync) after step 1 and every 10 steps (gemma's default `train.log_every`; its NaN guard checks "
    "each window's loss there). Between syncs keras dispatches steps asynchronously, so per-step Python work (the "
    "data pipeline's next batch, gemma's hooks) overlaps the compiled step. With `log_every: 1` every step syncs and "
    "that work adds to each step: an earlier run of this bench measured 1.22 that way.",
    "Rematerialisation: `train.remat: blocks` builds the backbone inside `keras.RematScope(mode='list_of_layers', "
    "layer_names=[decoder_block_i ...])` (engine/patches/remat.py), so each decoder block runs under `jax.checkpoint`; "
    "`mode='full'` fails in fit with keras-hub 0.32 ('Unable to automatically build the model'). Measured on an H100 "
    "(FACTS.md): Gemma 3 1B full fine-tune 29.4 → 14.3 GB peak at +32 % step time. XLA on CPU barely shows the saving "
    "(Gemma 3 270M, 16 × 512, float32: 47.0 vs 48.0 GB compiled peak).",
    "Optimizations table: each variant is ONE run, compared with section 2's median; a change smaller than section 2's "
    "per-run spread is not evidence. Decisions: on the CPU backend `data.workers` defaults to 0 (reader threads compete with XLA's step for the same cores: 0.084 vs 0.094 s per step measured; with an accelerator the threads read ahead); float32 stays the CPU default and "
    "bfloat16 is the accelerator recommendation (GPU: 1.89× faster steps); steps_per_execution stays 1 by default "
    "(per-step progress/metrics) and is available in the config.",
    "Noise: the machine's load average is in the Machine table; other work on the 2 cores moves single runs by up to 2×. "
    "Rerun `make bench` on a quiet machine before reading a ±10% difference.",
]


GRPO_TITLE = "6d. GRPO speed, real Gemma 3 270M, one CPU device"
# sections that can run alone (`python benchmarks/run.py --only NAME`): (function, title, summary-row prefixes)
ONLY = {
    "images": (lambda r: sec_images(r), IMAGES_TITLE, ("image pipeline",)),
    "grpo": (lambda r: sec_grpo(r), GRPO_TITLE, ("GRPO rollout", "GRPO steps/s")),
    "quant": (lambda r: sec_quant(r), QUANT_TITLE, ("6e.",)),
}


def main() -> int:
    if "--render" in sys.argv:  # re-render report.md from report.json (after editing the renderer)
        report = json.loads((HERE / "report.json").read_text())
        (HERE / "report.md").write_text(bl.render(report))
        return 0
    if "--only" in sys.argv:  # one section alone, merged into report.json / report.md: --only images
        name = sys.argv[sys.argv.index("--only") + 1]
        fn, title, prefixes = ONLY[name]
        report = json.loads((HERE / "report.json").read_text())
        report["summary"] = [r for r in report.get("summary", []) if not str(r[0]).startswith(prefixes)]
        report["sections"] = [x for x in report.get("sections", []) if x.get("title") != title]
        fn(report)
        report.setdefault("raw", {})[name] = RAW.get(name)
        (HERE / "report.json").write_text(json.dumps(report, indent=2, default=str))
        # report.md: this section and its summary rows replaced or added, the rest left as it is
        md = (HERE / "report.md").read_text()
        sec = next(x for x in report["sections"] if x.get("title") == title)
        text = bl.render_section(sec) + "\n\n"
        start = md.find(f"## {title}\n")
        if start >= 0:
            end = md.find("\n## ", start + 1) + 1
            md = md[:start] + text + md[end:]
        else:
            at = md.find("## Failures")
            md = md[:at] + text + md[at:]
        rows = [r for r in report["summary"] if str(r[0]).startswith(prefixes)]
        if rows:
            lines = md.split("\n")
            old = [i for i, ln in enumerate(lines) if ln.startswith(tuple("| " + p for p in prefixes))]
            at = old[0] if old else max(i for i, ln in enumerate(lines) if ln.startswith("| input pipeline tokens/s")) + 1
            lines = [ln for i, ln in enumerate(lines) if i not in old]
            md = "\n".join([*lines[:at], *("| " + " | ".join(str(c) for c in r) + " |" for r in rows), *lines[at:]])
        (HERE / "report.md").write_text(md)
        log(f"section {name} merged into benchmarks/report.md and report.json")
        return 0
    log(f"{'QUICK ' if QUICK else ''}bench, budget {BUDGET:.0f} s")
    # An installed tool runs from bytecode; an editable checkout under PYTHONDONTWRITEBYTECODE=1
    # would recompile gemma_cli on every start (~0.1 s of each CLI row).
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "gemma_cli")], check=False, capture_output=True)
    report: dict[str, Any] = {"date": dt.datetime.now().isoformat(timespec="seconds"), "quick": QUICK, "machine": machine(),
                              "summary": [], "sections": [], "failures": FAILURES}
    fixed, varied = corpora()
    steps = [
        ("cli", lambda: sec_cli(report)),
        ("inspect", lambda: sec_inspect(report)),
        ("fit", lambda: sec_fit(report)),
        ("bench preset", lambda: run("make bench preset", [PY, str(HERE / "make_bench_preset.py"), str(OUT / "bench_preset"),
                                                           *[a for k, v in MODEL.items() for a in (f"--{k}", str(v))]], 180)),
        ("train", lambda: sec_train(report, fixed, varied)),
        ("dpo", lambda: sec_dpo(report, fixed)),
        ("segments", lambda: sec_segments(report, varied)),
        ("real", lambda: sec_real(report)),
        ("eval", lambda: sec_eval(report)),
        ("grpo", lambda: sec_grpo(report)),
        ("quant", lambda: sec_quant(report)),
        ("export", lambda: sec_export(report)),
        ("data", lambda: sec_data(report)),
        ("images", lambda: sec_images(report)),
        ("optimizations", lambda: sec_opt(report, fixed)),
        ("mesh", lambda: sec_mesh(report)),
        ("gpu", lambda: sec_gpu(report)),
    ]
    for name, fn in steps:
        try:
            fn()
        except Exception as e:  # a broken section is a recorded failure, not a crash
            FAILURES.append({"name": f"section {name}", "error": f"{type(e).__name__}: {e}"})
            log(f"section {name}: {type(e).__name__}: {e}")
    report["sections"].append({"title": "Findings and proposals", "notes": NOTES})
    report["machine"]["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report["total_seconds"] = round(time.time() - T0, 1)
    report["raw"] = RAW
    (HERE / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (HERE / "report.md").write_text(bl.render(report))
    log(f"wrote benchmarks/report.md and report.json ({report['total_seconds']} s, {len(FAILURES)} failure(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
