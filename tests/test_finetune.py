"""`gemma finetune` end to end on tiny models and 8 simulated CPU devices (issue #3).

What a user sees is asserted: exit codes, the one `Error:` line on stderr, the JSON document on
stdout, files on disk, PartitionSpecs of live variables, loss values, adapter weights.

Cost control (2 shared cores): the model builds are tiny (~1 s each after the first); the
expensive part is XLA compiling a train step (~10-20 s), so the fit runs are few and shared:
`run_a` (the reference 24-step run) feeds the loss, --json, metrics, warning and
resume-comparison tests.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny import CORPUS as TINY_CORPUS
from typer.testing import CliRunner

from gemma_cli.cli import app

STEPS = 24  # run A: the uninterrupted reference

CORPUS = TINY_CORPUS[:6]  # plain sentences of the tiny tokenizer's own corpus


# ------------------------------------------------------------------------------ helpers ---
def gemma(*args: Any) -> Any:
    """Run the CLI in process; stdout and stderr are captured separately."""
    return CliRunner().invoke(app, [str(a) for a in args])


def err_lines(r: Any) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.strip()]


def assert_one_error_line(r: Any, code: int = 2) -> str:
    """Exit `code`, no traceback, and exactly one `Error:` line on stderr (run with -q)."""
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr, r.exception)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    errors = [ln for ln in err_lines(r) if not ln.startswith("Warning:")]
    assert len(errors) == 1 and errors[0].startswith("Error: "), r.stderr
    assert r.stdout == ""
    return errors[0]


def corpus_file(path: Path, repeat: int = 8) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for _ in range(repeat) for t in CORPUS))
    return path


def config(
    tmp: Path,
    preset: Path,
    *,
    mesh: list[int] | None = None,
    lora: int | None = 4,
    data: dict[str, Any] | None = None,
    optimizer: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    layout: dict[str, Any] | None = None,
    name: str = "run.yaml",
) -> Path:
    """Write a run config to tmp/name; sequence_length 16, global batch 4."""
    model: dict[str, Any] = {"preset": str(preset), "precision": "float32"}
    if lora:
        model["lora"] = {"rank": lora}
    d: dict[str, Any] = {
        "model": model,
        "mesh": {"shape": mesh or [4, 2], "axes": ["batch", "model"]},
        "data": {"sequence_length": 16, "batch_size": 4, **(data or {})},
        "optimizer": {"name": "adamw", "learning_rate": 1e-2, **(optimizer or {})},
        "train": {"max_steps": 4, "output_dir": str(tmp / "out"), "log_every": 2, **(train or {})},
    }
    if "paths" not in d["data"] and "name" not in d["data"]:
        d["data"]["paths"] = [str(corpus_file(tmp / "corpus.jsonl"))]
    if layout:
        d["layout"] = layout
    p = tmp / name
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def lora_arrays(ckpt: Path) -> dict[str, Any]:
    import h5py
    import numpy as np

    out: dict[str, Any] = {}
    with h5py.File(ckpt / "adapter.lora.h5", "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, np.array(o)) if isinstance(o, h5py.Dataset) else None)
    return out


def spec_of(v: Any) -> tuple[str | None, ...]:
    """A variable's live PartitionSpec, padded with None to its rank."""
    spec = tuple(v.value.sharding.spec)
    return spec + (None,) * (len(v.shape) - len(spec))


# ----------------------------------------------------------------------- 1. shardings ---
# The family defaults: keras-hub's GemmaBackbone.get_layout_map for gemma/gemma2, ours for
# gemma3 (the same shape). The tiny models have 4 query heads and 2 KV heads, so on a model
# axis of 4 (mesh 2x4) the KV heads, and on 8 (mesh 1x8) all heads, are indivisible: the
# default rules move the model axis to the head dimension (8), which it divides.
EXPECTED = {
    (2, 4): {
        "token_embedding/embeddings": ("model", "batch"),
        "decoder_block_0/attention/query/kernel": ("model", "batch", None),
        "decoder_block_0/attention/key/kernel": (None, "batch", "model"),
        "decoder_block_0/attention/value/kernel": (None, "batch", "model"),
        "decoder_block_0/attention/attention_output/kernel": ("model", None, "batch"),
        "decoder_block_1/ffw_gating/kernel": ("batch", "model"),
        "decoder_block_1/ffw_gating_2/kernel": ("batch", "model"),
        "decoder_block_1/ffw_linear/kernel": ("model", "batch"),
        "decoder_block_1/pre_ffw_norm/scale": (None,),
        "final_normalization/scale": (None,),
    },
    (1, 8): {
        "token_embedding/embeddings": ("model", "batch"),
        "decoder_block_0/attention/query/kernel": (None, "batch", "model"),
        "decoder_block_0/attention/key/kernel": (None, "batch", "model"),
        "decoder_block_0/attention/value/kernel": (None, "batch", "model"),
        "decoder_block_0/attention/attention_output/kernel": (None, "model", "batch"),
        "decoder_block_1/ffw_gating/kernel": ("batch", "model"),
        "decoder_block_1/ffw_gating_2/kernel": ("batch", "model"),
        "decoder_block_1/ffw_linear/kernel": ("model", "batch"),
        "decoder_block_1/pre_ffw_norm/scale": (None,),
        "final_normalization/scale": (None,),
    },
}

# keras-hub's attention rule written in a config: config rules are strict
KV_RULE = {"pattern": "decoder_block.*attention.*(query|key|value).kernel", "axes": ["model", "batch", None]}


def _prepared(tmp: Path, preset: Path, mesh: list[int], lora: int | None) -> tuple[Any, Any]:
    from gemma_cli.config import load_config
    from gemma_cli.engine.core.report import NullReporter
    from gemma_cli.engine.model.optimizer import compile_model
    from gemma_cli.engine.train.sft import SFTRecipe

    cfg = load_config(str(config(tmp, preset, mesh=mesh, lora=lora, layout={"indivisible": "replicate"})))
    m = SFTRecipe(cfg, NullReporter()).setup_model()
    with m.distribution.scope():
        opt = compile_model(m.causal_lm, cfg, 10)
    return m.causal_lm, opt


def _slots(opt: Any) -> dict[str, tuple[Any, Any]]:
    """{weight path: (momentum, velocity)} of an Adam-family optimizer."""
    return {
        v.path: (m, s)
        for v, m, s in zip(opt._trainable_variables, opt._momentums, opt._velocities, strict=True)  # noqa: SLF001
    }


@pytest.mark.parametrize("mesh", [(2, 4), (1, 8)], ids=["2x4", "1x8"])
@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_weights_and_adamw_state_have_the_family_layout(tmp_path, tiny_presets, family, mesh):
    lm, opt = _prepared(tmp_path, tiny_presets[family], list(mesh), lora=None)
    weights = {v.path: v for v in lm.backbone.weights}
    slots = _slots(opt)
    for path, want in EXPECTED[mesh].items():
        assert spec_of(weights[path]) == want + (None,) * (len(weights[path].shape) - len(want)), path
        m, s = slots[path]
        assert spec_of(m) == spec_of(s) == spec_of(weights[path]), f"AdamW state of {path}"
        assert m.shape == s.shape == weights[path].shape
    # every trainable weight has exactly one momentum and one velocity, laid out like it
    assert set(slots) == {v.path for v in lm.trainable_weights}
    for path, (m, s) in slots.items():
        assert spec_of(m) == spec_of(s) == spec_of(weights[path]), path
    assert weights["token_embedding/embeddings"].value.sharding.mesh.shape == dict(zip(("batch", "model"), mesh, strict=True))


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_lora_kernels_are_replicated_and_alone_have_optimizer_state(tmp_path, tiny_presets, family):
    lm, opt = _prepared(tmp_path, tiny_presets[family], [2, 4], lora=4)
    weights = {v.path: v for v in lm.backbone.weights}
    lora = {p for p in weights if "lora_kernel" in p}
    # keras-hub's default targets: query and value of every block, kernels a and b
    assert lora == {
        f"decoder_block_{i}/attention/{t}/lora_kernel_{ab}" for i in (0, 1) for t in ("query", "value") for ab in "ab"
    }
    assert {v.path for v in lm.trainable_weights} == lora
    for p in lora:
        assert spec_of(weights[p]) == (None,) * len(weights[p].shape), p
    # the frozen base kernels keep their sharding
    for path, want in EXPECTED[(2, 4)].items():
        assert spec_of(weights[path])[: len(want)] == want, path
    slots = _slots(opt)
    assert set(slots) == lora
    for m, s in slots.values():
        assert spec_of(m) == (None,) * len(m.shape) and spec_of(s) == (None,) * len(s.shape)
    # nothing else: iteration counter + a momentum and a velocity per LoRA kernel
    assert len(opt.variables) == 1 + 2 * len(lora)


# ------------------------------------------------------------- 2 / 8. the reference run ---
def _run_config(tmp: Path, preset: Path, out: str) -> Path:
    """The config of runs A and B: LoRA on a (2,4) mesh, cosine schedule with warmup, eval."""
    return config(
        tmp,
        preset,
        mesh=[2, 4],
        layout={"indivisible": "replicate"},
        data={"eval_holdout": 8},
        optimizer={"learning_rate": 2e-2, "schedule": "cosine", "warmup_steps": 2},
        train={
            "max_steps": STEPS,
            "output_dir": str(tmp / out),
            "checkpoint_every": 6,
            "eval_every": 12,
            "log_every": 4,
        },
        name=f"{out}.yaml",
    )


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, tiny_presets) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("run_a")
    cfg = _run_config(tmp, tiny_presets["gemma3"], "a")
    t = time.time()
    r = gemma("finetune", cfg, "--json")
    assert r.exit_code == 0, (r.stderr, r.exception)
    return {"result": r, "tmp": tmp, "cfg": cfg, "out": tmp / "a", "seconds": time.time() - t}


def test_json_run_prints_exactly_one_document(run_a):
    r = run_a["result"]
    s = json.loads(r.stdout)  # fails on any extra byte keras or we printed to stdout
    assert s["steps"] == STEPS and s["total_steps"] == STEPS
    for key in ("final_loss", "eval_loss", "tokens_per_second", "first_loss"):
        assert isinstance(s[key], float) and s[key] > 0, key
    assert s["mesh"] == {"shape": [2, 4], "axes": ["batch", "model"], "devices": 8}
    assert s["checkpoint"] == str(run_a["out"] / "checkpoints" / f"step_{STEPS:08d}")
    assert Path(s["files"]["metrics"]).is_file() and Path(s["files"]["loss_curve"]).is_file()
    assert [e["step"] for e in s["evals"]] == [0, 12, 24]  # 0: the baseline before any update
    # progress and the layout note went to stderr: 2 KV heads on a model axis of 4
    assert "layout:" in r.stderr and "moved from dimension 0 (heads, 2) to dimension 2 (head_dim, 8)" in r.stderr
    print(f"\nrun A: {STEPS} steps in {run_a['seconds']:.1f}s, step {s['step_seconds'] * 1000:.0f} ms, "
          f"{s['tokens_per_second']:.0f} tok/s, first step (compile) {s['time_to_first_step']:.1f}s")


def test_loss_falls_and_metrics_are_written(run_a):
    s = json.loads(run_a["result"].stdout)
    assert s["final_loss"] < s["first_loss"] - 0.2, (s["first_loss"], s["final_loss"])
    assert s["evals"][-1]["eval_loss"] < s["evals"][0]["eval_loss"]
    lines = [json.loads(ln) for ln in (run_a["out"] / "metrics.jsonl").read_text().splitlines()]
    train = [ln for ln in lines if "loss" in ln]
    assert [ln["step"] for ln in train] == list(range(4, STEPS + 1, 4))
    assert train[0]["loss"] == pytest.approx(s["first_loss"]) and train[-1]["loss"] == pytest.approx(s["final_loss"])
    assert all(ln["learning_rate"] > 0 for ln in train[:-1])
    assert [ln["step"] for ln in lines if "eval_loss" in ln] == [0, 12, 24]
    ckpts = sorted(p.name for p in (run_a["out"] / "checkpoints").glob("step_*"))
    assert ckpts == [f"step_{n:08d}" for n in (12, 18, 24)]  # keep_checkpoints: 3
    assert (run_a["out"] / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS:08d}"


# ---------------------------------------------------------------------------- 3. resume ---
def _sigterm_after_first_checkpoint(out_dir: Path, seen: dict[str, Any], timeout: float = 600) -> threading.Thread:
    """SIGTERM this process once the run wrote its first checkpoint and the stop handler is in;
    what `gemma runs` reads of the run just before goes to `seen["running"]`."""
    from gemma_cli import rundir

    def watch() -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if (out_dir / "checkpoints" / "latest").exists():
                handler = signal.getsignal(signal.SIGTERM)
                if type(getattr(handler, "__self__", None)).__name__ == "StopOnSignal":
                    seen["running"] = rundir.read_run(out_dir)
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
            time.sleep(0.01)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def _runs_row(parent: Path, name: str) -> dict[str, Any]:
    """The row `gemma runs PARENT --json` prints for run `name`."""
    r = gemma("runs", parent, "--json")
    assert r.exit_code == 0, r.stderr
    return next(x for x in json.loads(r.stdout)["runs"] if x["name"] == name)


def test_interrupted_then_resumed_equals_uninterrupted(run_a, tiny_presets):
    import numpy as np

    tmp = run_a["tmp"]
    cfg_b = _run_config(tmp, tiny_presets["gemma3"], "b")
    out_b = tmp / "b"
    seen: dict[str, Any] = {}
    watcher = _sigterm_after_first_checkpoint(out_b, seen)
    r = gemma("finetune", cfg_b, "-q")
    watcher.join(timeout=5)
    # the stop path: exit 130, one line with where it saved and the --resume command
    line = assert_one_error_line(r, 130)
    assert "SIGTERM at step" in line and f"gemma finetune {cfg_b} --resume" in line, line
    latest = (out_b / "checkpoints" / "latest").read_text().strip()
    k = json.loads((out_b / "checkpoints" / latest / "state.json").read_text())["step"]
    assert 6 <= k < STEPS and f"step_{k:08d}" in line
    assert not (out_b / "checkpoints" / f"step_{STEPS:08d}").exists()
    # what `gemma runs` says of it: running while it trained, interrupted with the signal now
    assert seen["running"].status == "running" and seen["running"].reason is None
    row = _runs_row(tmp, "b")
    assert (row["status"], row["reason"]) == ("interrupted", f"SIGTERM at step {k}")
    assert (row["steps"], row["total_steps"], row["checkpoint_step"]) == (k, STEPS, k)

    r2 = gemma("finetune", cfg_b, "--resume", "--json")
    assert r2.exit_code == 0, (r2.stderr, r2.exception)
    s_b, s_a = json.loads(r2.stdout), json.loads(run_a["result"].stdout)
    assert s_b["resumed_from"] == k and s_b["steps"] == STEPS
    row = _runs_row(tmp, "b")
    assert (row["status"], row["steps"], row["checkpoint_step"]) == ("finished", STEPS, STEPS)
    assert row["eval_loss"] == pytest.approx(s_b["eval_loss"])

    a = lora_arrays(run_a["out"] / "checkpoints" / f"step_{STEPS:08d}")
    b = lora_arrays(out_b / "checkpoints" / f"step_{STEPS:08d}")
    assert a.keys() == b.keys() and len(a) == 9  # 8 kernels + the rank
    diff = max(float(np.max(np.abs(a[n] - b[n]))) for n in a)
    scale = max(float(np.max(np.abs(a[n]))) for n in a)
    print(f"\nresume: stopped at step {k}/{STEPS}; max |A - B| over LoRA weights {diff:.3g} (max |w| {scale:.3g})")
    assert diff <= 1e-5, diff
    assert s_b["eval_loss"] == pytest.approx(s_a["eval_loss"], abs=1e-5)
    # the optimizer state too: AdamW moments and the iteration counter
    oa = np.load(run_a["out"] / "checkpoints" / f"step_{STEPS:08d}" / "optimizer.npz")
    ob = np.load(out_b / "checkpoints" / f"step_{STEPS:08d}" / "optimizer.npz")
    for n in oa.files:
        if n != "__paths__":
            np.testing.assert_allclose(oa[n], ob[n], atol=1e-5, err_msg=n)


def test_existing_checkpoints_without_resume_overwrite_nothing(run_a):
    ckpts = run_a["out"] / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()}
    r = gemma("finetune", run_a["cfg"], "-q")
    line = assert_one_error_line(r)
    assert str(run_a["out"]) in line and "--resume" in line and "nothing was overwritten" in line
    assert {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()} == before


def test_resume_without_a_checkpoint(tmp_path, tiny_gemma3):
    r = gemma("finetune", config(tmp_path, tiny_gemma3), "--resume", "-q")
    line = assert_one_error_line(r)
    assert "--resume: no checkpoint in" in line and str(tmp_path / "out") in line


# ------------------------------------------------------------------------------ 4. tfds ---
def test_tfds_imdb_reviews_through_mock_data(tmp_path, tiny_gemma3):
    import tensorflow_datasets as tfds

    cfg = config(tmp_path, tiny_gemma3, data={"name": "imdb_reviews", "field": "text", "take": 16},
                 train={"max_steps": 3})
    with tfds.testing.mock_data(num_examples=32):
        r = gemma("finetune", cfg, "--json")
    assert r.exit_code == 0, (r.stderr, r.exception)
    s = json.loads(r.stdout)
    assert s["steps"] == 3 and s["final_loss"] > 0
    assert "16 text records from imdb_reviews[train]" in r.stderr  # take: 16 of the 32 mock examples


@pytest.fixture(scope="module")
def prepared_tfds(tmp_path_factory) -> Path:
    """A tiny generator-based tfds dataset `gemma_tiny_text` (train/test; text, label), prepared
    offline into a data_dir: unlike mock_data, a prepared dataset knows its splits."""
    import tensorflow_datasets as tfds

    class GemmaTinyText(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(16), "test": self._generate_examples(8)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"text": CORPUS[i % len(CORPUS)], "label": i % 2}

    data_dir = tmp_path_factory.mktemp("tfds")
    GemmaTinyText(data_dir=str(data_dir)).download_and_prepare()
    return data_dir


@pytest.mark.parametrize(
    "data, words",
    [
        ({"name": "no_such_dataset_xyz"}, ["data.name", "no_such_dataset_xyz"]),
        ({"name": "gemma_tiny_text", "split": "validation"}, ["data.split", "'validation'", "splits: test, train"]),
        ({"name": "gemma_tiny_text", "field": "body"}, ["data.field", "'body'", "features: ['label', 'text']"]),
        ({"name": "imdb_reviews", "field": "body", "mock": True}, ["data.field", "'body'", "'label'", "'text'"]),
    ],
    ids=["dataset", "split", "field", "field-imdb-mock"],
)
def test_tfds_missing_dataset_split_field(tmp_path, tiny_gemma3, prepared_tfds, data, words):
    import contextlib

    import tensorflow_datasets as tfds

    data = dict(data)
    mock = data.pop("mock", False)
    if data["name"] == "gemma_tiny_text":
        data["data_dir"] = str(prepared_tfds)
    with tfds.testing.mock_data(num_examples=8) if mock else contextlib.nullcontext():
        r = gemma("finetune", config(tmp_path, tiny_gemma3, data=data), "-q")
    line = assert_one_error_line(r)
    for w in words:
        assert w in line, (w, line)


# ------------------------------------------------------------------------ 5. bad input ---
def test_mesh_product_must_equal_device_count(tmp_path, tiny_gemma3):
    line = assert_one_error_line(gemma("finetune", config(tmp_path, tiny_gemma3, mesh=[2, 2]), "-q"))
    assert "needs 4 devices but 8 are available" in line


def test_batch_size_must_divide_by_the_batch_axis(tmp_path, tiny_gemma3):
    cfg = config(tmp_path, tiny_gemma3, data={"batch_size": 6})
    line = assert_one_error_line(gemma("finetune", cfg, "-q"))
    assert "data.batch_size" in line and "6 is not divisible by the 'batch' mesh axis (4)" in line
    # a batch axis of -1 is known only once the devices are counted: checked before the model loads
    line = assert_one_error_line(gemma("finetune", cfg, "mesh.shape=[-1,2]", "-q"))
    assert "data.batch_size: 6 is not divisible by the 'batch' mesh axis (4)" in line and "8 devices" in line


def test_indivisible_layout_is_an_error_naming_variable_dim_rule_and_fix(tmp_path, tiny_gemma3):
    # 2 KV heads on a model axis of 4, under a rule from the config (strict; the family's own
    # rules would move the axis to the head dimension instead)
    cfg = config(tmp_path, tiny_gemma3, mesh=[2, 4], layout={"rules": [KV_RULE], "indivisible": "error"})
    line = assert_one_error_line(gemma("finetune", cfg, "-q"))
    for w in ("decoder_block_0/attention/key/kernel", "(2, 32, 8)", "dimension 0 (2)", "mesh axis 'model' (4)",
              "rule 'decoder_block.*attention.*(query|key|value).kernel'", "layout.indivisible: replicate"):
        assert w in line, (w, line)
    assert not (tmp_path / "out").exists()
    # `replicate` plans with a warning instead
    cfg = config(tmp_path, tiny_gemma3, mesh=[2, 4], layout={"rules": [KV_RULE], "indivisible": "replicate"})
    r = gemma("finetune", cfg, "--dry-run", "--json")
    assert r.exit_code == 0 and "replicated that dimension" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "data, files, words",
    [
        ({"paths": ["{tmp}/nothing/*.jsonl"]}, {}, ["data.paths", "nothing/*.jsonl", "matches no file"]),
        ({"template": "Q: {instruction}\nA: {text}"}, {}, ["data.template", "'instruction'", "fields there: ['text']"]),
        ({"paths": ["{tmp}/empty.jsonl"]}, {"empty.jsonl": ""}, ["empty.jsonl", "no records"]),
    ],
    ids=["no-match", "template-field", "empty-file"],
)
def test_bad_local_data(tmp_path, tiny_gemma3, data, files, words):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    data = {k: [p.format(tmp=tmp_path) for p in v] if k == "paths" else v for k, v in data.items()}
    line = assert_one_error_line(gemma("finetune", config(tmp_path, tiny_gemma3, data=data), "-q"))
    for w in words:
        assert w in line, (w, line)
    assert not (tmp_path / "out" / "checkpoints").exists()


# --------------------------------------------------------------------------------- 6. NaN ---
def test_nan_loss_exits_1_keeping_the_last_good_checkpoint(tmp_path, tiny_gemma3):
    import h5py
    import numpy as np

    # full fine-tune with SGD at lr 10 diverges to NaN within ~10 steps; checkpoint every step
    cfg = config(tmp_path, tiny_gemma3, lora=None, optimizer={"name": "sgd", "learning_rate": 10, "weight_decay": 0},
                 train={"max_steps": 30, "checkpoint_every": 1, "log_every": 1, "keep_checkpoints": 2})
    r = gemma("finetune", cfg, "-q")
    line = assert_one_error_line(r, 1)
    assert "last good checkpoint: " in line, line
    good = Path(line.split("last good checkpoint: ")[1].split(";")[0])
    assert good.is_dir() and good.parent == tmp_path / "out" / "checkpoints"
    assert (good.parent / "latest").read_text().strip() == good.name
    # "good" means it: every weight in it is finite
    with h5py.File(good / "model" / "model.weights.h5", "r") as f:
        bad: list[str] = []
        f.visititems(lambda n, o: bad.append(n) if isinstance(o, h5py.Dataset) and not np.isfinite(o[()]).all() else None)
    assert not bad, bad[:3]
    step = int(good.name.split("_")[1])
    assert f"at step {step + 1}" in line
    # `gemma runs` lists it as diverged, with what went non-finite and the last good checkpoint
    row = _runs_row(tmp_path, "out")
    assert row["status"] == "diverged" and ("nan" in row["reason"] or "NaN" in row["reason"]), row
    assert row["checkpoint"] == str(good) and row["steps"] == step + 1


# ----------------------------------------------------------------------------- 7. dry run ---
def test_dry_run_json_trains_nothing(tmp_path, tiny_gemma3):
    cfg = config(tmp_path, tiny_gemma3, mesh=[2, 4], layout={"indivisible": "replicate"})
    r = gemma("finetune", cfg, "--dry-run", "--json")
    assert r.exit_code == 0, (r.stderr, r.exception)
    s = json.loads(r.stdout)
    assert s["dry_run"] is True
    assert s["batch"] == {"token_ids": [4, 16], "padding_mask": [4, 16], "labels": [4, 16]}
    assert s["params"] == {"total": 24512, "trainable": 1664}
    # sharded over 8 devices: far fewer bytes per device than the 4-byte weights in total
    assert 0 < s["bytes_per_device"] < s["params"]["total"] * 4 / 2
    assert s["mesh"] == {"shape": [2, 4], "axes": ["batch", "model"], "devices": 8}
    assert s["steps"] == 4 and s["train_sequences"] == 48
    assert not (tmp_path / "out").exists()
