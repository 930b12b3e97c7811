"""GRPO speed, side by side in one process (issue #25):

1. rollouts: our `Rollout` (fixed buffers, the live policy, one compile) against keras-hub's own
   `CausalLM.generate` on the same model, prompts, batch (prompts × G), sampler and lengths —
   warm tokens/s of each (new tokens / second, best of `--repeat`);
2. a whole GRPO step: `gemma finetune` with train.method grpo for `--steps` steps on CONFIG's
   model against TRL's `GRPOTrainer` on the Hugging Face export of the same model (transformers
   + torch on this CPU), the same prompts, G, batch, completion length and reward; the median
   step time after the first (ours: rollout + reward + update from metrics.jsonl's time split
   per step, the two compiling steps excluded; TRL: each step's wall time, the first excluded).

Prints one JSON document. Run:
    python benchmarks/grpo_speed.py CONFIG [key=value ...] [--steps 4] [--gens 4] [--prompts 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("KERAS_BACKEND", "jax")

PROMPTS = ["The capital of France is", "def fibonacci(n):", "The three primary colors are", "Once upon a time"]


def reward_len(prompts, completions, **kwargs):  # noqa: ANN001, ANN003, ANN201 - TRL's signature
    """Shorter is better: the same cheap reward for both trainers."""
    return [1.0 / (1.0 + len(c.split())) for c in completions]


def rollout_ratio(cfg_path: str, overrides: list[str], rows: int, new: int, repeat: int) -> dict:
    import keras_hub
    import numpy as np

    from gemma_cli.config import load_config
    from gemma_cli.engine.core.report import NullReporter
    from gemma_cli.engine.sample.generate import Generator
    from gemma_cli.engine.train.grpo import Rollout

    cfg = load_config(cfg_path, overrides)
    gen = Generator(cfg, NullReporter(), None, rows)
    lm, tok = gen.lm, gen.tokenizer
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(rows)]
    ids = [[tok.start_token_id, *np.asarray(tok(p)).tolist()] for p in prompts]
    seq = max(len(x) for x in ids) + new
    sampler = keras_hub.samplers.RandomSampler(seed=0)
    with gen.distribution.scope():
        lm.sampler, lm.generate_function = sampler, None
        ro = Rollout(lm, seq, (tok.end_token_id,), 0, sampler)

        def ours() -> int:
            out = ro(ids, (0, 1))
            return sum(int((out[r, len(x):] != 0).sum()) for r, x in enumerate(ids))

        def theirs() -> int:
            out = lm.generate(prompts, max_length=seq, stop_token_ids=None)
            return sum(max(len(np.asarray(tok(o)).tolist()) - len(x) + 1, 0) for o, x in zip(out, ids, strict=True))

        def best(fn) -> tuple[float, int]:
            n = fn()  # compiles
            t = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                n = fn()
                t = min(t, time.perf_counter() - t0)
            return t, n

        t_ours, n_ours = best(ours)
        lm.generate_function = None
        t_kh, n_kh = best(theirs)
    return {"rows": rows, "seq": seq, "ours_s": t_ours, "keras_hub_s": t_kh,
            "ours_tokens_per_second": rows * (seq - min(len(x) for x in ids)) / t_ours,
            "keras_hub_tokens_per_second": rows * (seq - min(len(x) for x in ids)) / t_kh,
            "ratio": t_kh / t_ours}


def ours_step(cfg_path: str, overrides: list[str], tmp: Path, steps: int, gens: int, prompts: int, new: int) -> dict:
    import yaml

    data = tmp / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 4))
    rew = tmp / "rew.py"
    rew.write_text("def reward_len(prompts, completions, **kw):\n    return [1.0 / (1.0 + len(c.split())) for c in completions]\n")
    out = tmp / "ours"
    ov = [*overrides, "train.method=grpo", f"train.max_steps={steps}", "train.log_every=1", "train.eval_every=null",
          "train.checkpoint_every=null", f"train.output_dir={out}", f"data.paths=[{data}]", "data.eval_paths=null",
          "data.eval_holdout=null", "data.packing=false", f"data.batch_size={prompts}", "data.sequence_length=64"]
    cfg = yaml.safe_load(Path(cfg_path).read_text())
    cfg["grpo"] = {"rewards": [f"{rew}:reward_len"], "num_generations": gens, "max_completion_length": new}
    p = tmp / "grpo.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = subprocess.run([sys.executable, "-m", "gemma_cli", "finetune", str(p), *ov, "--quiet"], capture_output=True, text=True)
    if r.returncode:
        return {"error": r.stderr[-800:]}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    # steps 1 and 2 compile (the second again: the first update re-commits the weights, and the
    # rollout and train functions see their new shardings once); steps 3+ are the steady state
    times = [x["time_rollout"] + x["time_reward"] + x["time_update"] for x in lines[2:]]
    times.sort()
    return {"steps": steps, "median_step_s": times[len(times) // 2] if times else None,
            "rollout_tokens_per_second": lines[-1].get("rollout_tokens_per_second"), "run": str(out)}


def trl_step(run_dir: Path, tmp: Path, steps: int, gens: int, prompts: int, new: int) -> dict:
    import datasets
    import torch
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    hf = tmp / "hf"
    r = subprocess.run([sys.executable, "-m", "gemma_cli", "export", str(run_dir), "--format", "hf", "--out", str(hf),
                        "--quiet"], capture_output=True, text=True)
    if r.returncode:
        return {"error": r.stderr[-800:]}
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(str(hf))
    ds = datasets.Dataset.from_list([{"prompt": p} for p in PROMPTS * 8])
    args = GRPOConfig(output_dir=str(tmp / "trl"), per_device_train_batch_size=prompts * gens, num_generations=gens,
                      max_completion_length=new, max_steps=steps + 1, logging_steps=1, report_to=[], use_cpu=True,
                      save_strategy="no", bf16=False, learning_rate=1e-5, seed=0, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_len, args=args, train_dataset=ds, processing_class=tok)
    step_times: list[float] = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):  # noqa: ANN002, ANN003, ANN201
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):  # noqa: ANN002, ANN003, ANN201
            step_times.append(time.perf_counter() - self.t0)

    trainer.add_callback(Timer())
    trainer.train()
    warm = sorted(step_times[1:])
    return {"steps": len(step_times), "median_step_s": warm[len(warm) // 2] if warm else None}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--gens", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip-trl", action="store_true")
    a = ap.parse_args()
    from gemma_cli.engine.core import runtime

    runtime.setup()
    runtime.silence_keras_stdout()
    doc: dict = {"rollout": rollout_ratio(a.config, a.overrides, a.prompts * a.gens, a.new, a.repeat)}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        ours = ours_step(a.config, a.overrides, tmp, a.steps, a.gens, a.prompts, a.new)
        doc["ours"] = ours
        if not a.skip_trl and "run" in ours:
            doc["trl"] = trl_step(Path(ours["run"]), tmp, a.steps, a.gens, a.prompts, a.new)
            o, t_ = ours.get("median_step_s"), doc["trl"].get("median_step_s")
            doc["step_ratio"] = (t_ / o) if o and t_ else None  # TRL step time / ours: ≥ 1.5 is the target
        ours.pop("run", None)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
