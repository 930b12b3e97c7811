"""Meeting users where they come from (issue #30): Hugging Face datasets, `gemma init --data` on
chat / prompt-completion / Parquet data, TRL/axolotl/PEFT names, one set of defaults, trackers.

No network: datasets are made here with `datasets` (save_to_disk, Parquet, a Hub-cache
snapshot laid out as huggingface_hub writes it); the Hub endpoint points at a closed local port.
No XLA compile: the data tests use the tiny SentencePiece tokenizer of test_data.py, the LoRA
tests trace shapes only, the tracker tests drive the metrics hook directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_data import CHAT, _tokenizer
from typer.testing import CliRunner

from gemma_cli import defaults as D
from gemma_cli.cli import app
from gemma_cli.config import DataConfig, parse_config
from gemma_cli.engine.data import hf_datasets, pipeline
from gemma_cli.engine.data.tokenize import Encoder
from gemma_cli.errors import ConfigError, UsageError

datasets = pytest.importorskip("datasets")

PAIRS = [{"prompt": f"What is {i} plus {i}?", "completion": f"It is {2 * i}."} for i in range(12)]


def gemma(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(r: Any) -> str:
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("Error: ") and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def ctok() -> Any:
    return _tokenizer(True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DatasetDict of chat records (train 16, test 4) written with save_to_disk."""
    d = tmp_path_factory.mktemp("saved") / "chat"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([CHAT] * 16),
        "test": datasets.Dataset.from_list([CHAT] * 4),
    }).save_to_disk(str(d))
    return d


def hub_folder(root: Path) -> Path:
    """A dataset folder as on the Hub: subset `main` with train/test Parquet shards."""
    (root / "main").mkdir(parents=True)
    datasets.Dataset.from_list(PAIRS).to_parquet(str(root / "main" / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_list(PAIRS[:4]).to_parquet(str(root / "main" / "test-00000-of-00001.parquet"))
    return root


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache holding a snapshot of the dataset repo acme/pairs, as
    huggingface_hub lays it out (refs/main → snapshots/<commit>/...)."""
    cache = tmp_path / "hub"
    repo = cache / "datasets--acme--pairs"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    hub_folder(repo / "snapshots" / "0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no network
    return cache


# ------------------------------------------------------------------ Hugging Face datasets ---
def test_save_to_disk_dataset_trains_on_answers_only(saved: Path, ctok: Any) -> None:
    cfg = DataConfig(paths=[str(saved)], sequence_length=128, batch_size=4, eval_split="test")
    b = pipeline.build(cfg, ctok, seed=0)
    assert (b.info.kind, b.info.records, b.info.eval_records, b.info.random_access) == ("chat", 16, 4, True)
    enc = Encoder(ctok)
    _, y, sw = next(iter(b.train))
    trained = [int(t) for t, w in zip(y[0], sw[0], strict=True) if w > 0]
    text = "".join("<end_of_turn>" if t == enc.special("<end_of_turn>") else enc.decode([t]) for t in trained)
    assert text == "a batch axis and a model axis<end_of_turn>map variable paths to mesh axes<end_of_turn>"


def test_hub_folder_subsets_and_splits(tmp_path: Path) -> None:
    root = hub_folder(tmp_path / "gsm")
    src = hf_datasets.open_dir(root, "test", "main", "data.paths", 64)
    assert len(src) == 4 and src[0][1] == PAIRS[0] and src[0][0].endswith("test-00000-of-00001.parquet:row 1")
    with pytest.raises(UsageError, match=r"has no split 'validation'; splits: test, train"):
        hf_datasets.open_dir(root, "validation", "main", "data.paths", 64)
    with pytest.raises(UsageError, match=r"has no subset 'socratic'; subsets: main"):
        hf_datasets.open_dir(root, "train", "socratic", "data.paths", 64)
    with pytest.raises(UsageError, match=r"has no split 'nope'; splits: test, train"):
        hf_datasets.open_paths([str(root)], None, "data.paths", 64, "nope", "main")


def test_hf_name_reads_the_cache_without_network(hub_cache: Path, ctok: Any) -> None:
    assert hf_datasets.parse_name("hf://acme/pairs:main@test") == ("acme/pairs", "main", "test")
    cfg = DataConfig(name="hf://acme/pairs:main", sequence_length=128, batch_size=2, eval_split="test")
    b = pipeline.build(cfg, ctok, seed=0)
    assert (b.info.kind, b.info.records, b.info.eval_records) == ("chat", 12, 4)
    _, y, sw = next(iter(b.train))
    enc = Encoder(ctok)
    for row in range(2):  # prompt/completion: only the completion (and its end of turn) weighs
        trained = [int(t) for t, w in zip(y[row], sw[row], strict=True) if w > 0]
        text = "".join("<end_of_turn>" if t == enc.special("<end_of_turn>") else enc.decode([t]) for t in trained)
        assert text.startswith("It is ") and text.endswith(".<end_of_turn>"), text


def test_hf_dataset_problems_are_one_line_before_the_model(hub_cache: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    def validate(data: dict[str, Any]) -> Any:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"model": {"preset": "gemma3_1b"}, "data": data}))
        return gemma("config", "validate", cfg, "--offline")

    # a field the format needs is missing: dataset, split and field named
    r = validate({"name": "hf://acme/pairs:main", "template": "{question}\n{answer}"})
    line = one_error_line(r)
    assert r.exit_code == 2 and "train-00000-of-00001.parquet:row 1" in line and "'question'" in line, line
    # a split that does not exist: the ones that do are listed (from the local files)
    line = one_error_line(r := validate({"name": "hf://acme/pairs:main@dev"}))
    assert r.exit_code == 2 and "no split 'dev'; splits: test, train" in line
    # not cached and the Hub unreachable: one bounded line, not half a minute of retries
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"preset": str(tmp_path)}, "data": {"name": "hf://acme/missing"}}))
    r = gemma("config", "validate", cfg)
    assert "hf://acme/missing is not in the local Hugging Face cache and the Hub at http://127.0.0.1:9 cannot be reached" in r.stderr
    assert r.exit_code in (1, 2) and "Traceback" not in r.stderr


def test_hf_name_cross_checks() -> None:
    base = "model: {preset: gemma3_1b}\ndata:\n  name: hf://acme/pairs:main@test\n"
    with pytest.raises(ConfigError) as e:
        parse_config(base + "  subset: other\n  split: validation\n", "c.yaml")
    text = "\n".join(e.value.problems)
    assert "c.yaml:4: data.subset: 'other' differs from the subset in data.name ('main')" in text
    assert "c.yaml:5: data.split: 'validation' differs from the split in data.name ('test')" in text
    assert parse_config(base + "  format: chat\n").data.source == "hf"


# ------------------------------------------------------------------------ gemma init --data ---
@pytest.mark.parametrize("kind", ["chat", "pairs", "parquet", "saved"])
def test_init_writes_format_and_loss_for_the_data(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  saved: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEMMA_CPU_DEVICES", "8")
    if kind == "chat":
        (tmp_path / "d.jsonl").write_text(json.dumps(CHAT) + "\n")
        spec = "d.jsonl"
    elif kind == "pairs":
        (tmp_path / "d.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
        spec = "d.jsonl"
    elif kind == "parquet":
        datasets.Dataset.from_list([{"instruction": "say hi", "response": "hi"}] * 3).to_parquet(str(tmp_path / "d.parquet"))
        spec = "d.parquet"
    else:
        spec = str(saved)
    r = gemma("init", "--preset", "gemma3_1b", "--data", spec, "--json")
    assert r.exit_code == 0, r.stderr
    d = yaml.safe_load((tmp_path / "gemma.yaml").read_text())["data"]
    if kind == "parquet":
        assert d["template"] == "Instruction:\n{instruction}\n\nResponse:\n{response}" and d["response_field"] == "response"
    else:
        assert (d["format"], d["loss_on"]) == ("chat", "assistant")
    assert d["sequence_length"] == 128  # the short records' 95th percentile, rounded up to 128
    r = gemma("config", "validate", "--offline", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["valid"] is True, r.stdout + r.stderr


# ---------------------------------------------------------------- names from other tools ---
def test_trl_axolotl_peft_keys_point_at_gemmas(tmp_path: Path) -> None:
    cfg = tmp_path / "trl.yaml"
    cfg.write_text(
        "model:\n  preset: gemma3_1b\n  lora:\n    lora_r: 16\n    lora_alpha: 32\n    lora_dropout: 0.05\n"
        "learning_rate: 2.0e-4\nper_device_train_batch_size: 4\nnum_train_epochs: 3\nmax_seq_length: 2048\n"
        "optimizer:\n  lr_scheduler_type: cosine\n  warmup_ratio: 0.1\n"
        "train:\n  gradient_accumulation_steps: 4\n  save_steps: 100\n  gradient_checkpointing: true\n"
    )
    r = gemma("config", "validate", cfg, "--offline")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    want = {
        4: "model.lora.lora_r: did you mean `model.lora.rank`?",
        5: "model.lora.lora_alpha: did you mean `model.lora.alpha`?",
        6: "model.lora.lora_dropout: `lora_dropout` is not a gemma key",
        7: "learning_rate: did you mean `optimizer.learning_rate`?",
        8: "per_device_train_batch_size: did you mean `data.batch_size`?",
        9: "num_train_epochs: did you mean `train.epochs`?",
        10: "max_seq_length: did you mean `data.sequence_length`?",
        12: "optimizer.lr_scheduler_type: did you mean `optimizer.schedule`?",
        15: "train.gradient_accumulation_steps: did you mean `optimizer.gradient_accumulation_steps`?",
        16: "train.save_steps: did you mean `train.checkpoint_every`?",
        17: "train.gradient_checkpointing: did you mean `train.remat`?",
    }
    for n, text in want.items():
        assert any(f"{cfg}:{n}: {text}" in ln for ln in lines), (n, r.stderr)
    assert not any("warmup_ratio" in ln for ln in lines)  # gemma's own key now


def test_lora_targets_take_hf_module_names_per_family(tiny_gemma3: Path) -> None:
    from gemma_cli.engine import families
    from gemma_cli.engine.model import load

    assert families.lora_layer_names("Llama3Backbone", ["q_proj", "gate_proj", "down_proj"]) == [
        "query", "feedforward_gate_dense", "feedforward_output_dense"]
    assert families.lora_layer_names("Gemma3Backbone", ["q_proj", "query", "up_proj"]) == ["query", "ffw_gating_2"]
    bb = load.backbone_config(str(tiny_gemma3))
    paths = [p for p, _, _ in load.abstract_variables(bb, "float32", 4, ["q_proj", "v_proj", "gate_proj"])]
    adapted = sorted({p.split("/")[-2] for p in paths if p.endswith("lora_kernel_a")})
    assert adapted == ["ffw_gating", "query", "value"]
    with pytest.raises(UsageError, match=r"target_layers: 'qkv_proj' matches no layer of this model"):
        load.abstract_variables(bb, "float32", 4, ["q_proj", "qkv_proj"])


# ------------------------------------------------------------------------------ defaults ---
def test_one_set_of_defaults_in_the_schema_and_help() -> None:
    lora = parse_config("model: {preset: gemma3_1b, lora: {rank: 8}}\n")
    full = parse_config("model: {preset: gemma3_1b}\n")
    assert (lora.optimizer.learning_rate, full.optimizer.learning_rate) == (D.LR_LORA, D.LR_FULL) == (2e-4, 2e-5)
    assert parse_config("model: {preset: gemma3_1b}\noptimizer: {learning_rate: 1.0e-3}\n").optimizer.learning_rate == 1e-3
    o = full.optimizer
    assert (o.schedule, o.warmup_steps, o.warmup_for(1000), o.warmup_for(10)) == ("cosine", None, 30, 1)
    assert full.train.report_to == ["tensorboard"]
    g = full.generate
    assert (g.max_new_tokens, g.max_length, g.top_k, g.top_p, g.sampler) == (256, None, 50, 1.0, "greedy")
    assert DataConfig(paths=["x"]).sequence_length == 1024
    r = CliRunner().invoke(app, ["generate", "--help"], env={"COLUMNS": "200"})
    shown = " ".join(r.stdout.split())  # rich wraps the help column
    assert "[default: generate.top_k, 50]" in shown and "[default: generate.max_new_tokens, 256]" in shown, shown


def test_config_show_prints_the_resolved_learning_rate(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {preset: gemma3_1b, lora: {rank: 4}}\n")
    r = gemma("config", "show", cfg, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    opt = doc.get("optimizer") or doc["config"]["optimizer"]
    assert opt["learning_rate"] == 2e-4 and opt["schedule"] == "cosine" and opt["warmup_ratio"] == 0.03


# ------------------------------------------------------------------------------ trackers ---
def _metrics_hook(out: Path, report_to: list[str]) -> Any:
    from gemma_cli.engine.core.report import NullReporter
    from gemma_cli.engine.train import hooks as H
    from gemma_cli.engine.train.state import RunState

    st = RunState(start=0, total=4, tokens_per_step=8, useful_tokens_per_step=8.0, metric_names=("loss", "reward_margin"))
    schedule = H.Schedule(parse_config("model: {preset: x}\n").train, 4, False)
    view = H.ProgressView(st, NullReporter(), None, schedule, show=False)
    return H.MetricsLog(st, out, schedule, view, True, NullReporter(), report_to=report_to, run_name="t",
                        config={"optimizer": {"learning_rate": 2e-4}})


def test_tensorboard_receives_every_metric_name(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    m = _metrics_hook(tmp_path, ["tensorboard"])
    m.on_train_begin()
    for step in (2, 4):
        m.emit({"step": step, "loss": 1.0 / step}, {"train/loss": 1.0 / step, "train/reward_margin": 0.5 * step})
    m.emit({"step": 4, "eval_loss": 0.3}, {"eval/loss": 0.3, "eval/reward_margin": 2.5})
    m.close()
    m.finish({"steps": 4, "final_loss": 0.25})
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [2, 4, 4]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/reward_margin", "eval/loss", "eval/reward_margin"} <= tags
    assert [round(e.value, 3) for e in acc.Scalars("train/reward_margin")] == [1.0, 2.0]


def test_report_to_none_writes_metrics_jsonl_only(tmp_path: Path) -> None:
    m = _metrics_hook(tmp_path, ["none"])
    m.on_train_begin()
    m.emit({"step": 1, "loss": 1.0}, {"train/loss": 1.0})
    m.close()
    m.finish(None)
    assert (tmp_path / "metrics.jsonl").is_file() and not (tmp_path / "tensorboard").exists()


def test_missing_tracker_package_is_exit_2_naming_the_extra(tmp_path: Path) -> None:
    import importlib.util

    absent = [n for n in ("wandb", "mlflow") if importlib.util.find_spec(n) is None]
    if not absent:
        pytest.skip("wandb and mlflow are both installed here")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"preset": "gemma3_1b"}, "train": {"report_to": ["tensorboard", absent[0]]}}))
    r = gemma("config", "validate", cfg, "--offline")
    line = one_error_line(r)
    assert r.exit_code == 2 and f"train.report_to: {absent[0]} is not installed; pip install 'gemma-cli[{absent[0]}]'" in line
    r = gemma("finetune", cfg, "-q")
    assert r.exit_code == 2 and f"{absent[0]} is not installed" in r.stderr


def test_mlflow_file_store_reads_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    m = _metrics_hook(tmp_path / "run", ["mlflow"])
    m.on_train_begin()
    m.emit({"step": 2, "loss": 0.5}, {"train/loss": 0.5, "train/reward_margin": 1.5})
    m.close()
    m.finish({"steps": 2, "final_loss": 0.5})
    run = mlflow.search_runs(experiment_names=["gemma"], output_format="list")[0]
    assert run.data.params["optimizer.learning_rate"] == "0.0002"
    assert run.data.metrics["train/reward_margin"] == 1.5 and run.data.metrics["summary/final_loss"] == 0.5


def test_wandb_offline_writes_its_run_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    m = _metrics_hook(tmp_path, ["wandb"])
    m.on_train_begin()
    m.emit({"step": 2, "loss": 0.5}, {"train/loss": 0.5, "train/reward_margin": 1.5})
    m.close()
    m.finish({"steps": 2})
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and any(runs[0].glob("*.wandb"))


# ---------------------------------------------------------------------------- generation ---
def test_max_new_tokens_counts_after_the_prompt(tmp_path: Path, tiny_gemma3: Path) -> None:
    from test_generate import tiny_config

    cfg = tiny_config(tmp_path, tiny_gemma3)  # its generate.max_length: 12 loses to the flag
    prompt = "the quick brown fox jumps over the lazy dog the quick"
    r = gemma("generate", cfg, "-p", prompt, "--max-new-tokens", "5", "--sampler", "random", "--seed", "3", "--json", "-q")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    res = doc["results"][0]
    # the prompt alone is longer than max_length 12: only a count after the prompt lets it generate
    # and exactly 5 new tokens come back, though the generated length was rounded up to 64
    assert res["prompt_tokens"] > 12 and res["completion_tokens"] == 5 and doc["max_new_tokens"] == 5, res


def test_config_validate_json_failure_has_the_common_fields(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {preset: gemma3_1b}\nnum_train_epochs: 3\n")
    r = gemma("config", "validate", cfg, "--offline", "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 2 and doc["valid"] is False and doc["exit_code"] == 2
    assert "did you mean `train.epochs`" in doc["error"] and len(doc["problems"]) == 1


def test_finetune_dry_run_reads_a_hub_name_from_the_cache(hub_cache: Path, tmp_path: Path, tiny_gemma3: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"preset": str(tiny_gemma3), "precision": "float32", "lora": {"rank": 4}},
        "mesh": {"shape": [2, 4]}, "layout": {"indivisible": "replicate"},
        "data": {"name": "hf://acme/pairs:main", "sequence_length": 64, "batch_size": 4},
        "train": {"output_dir": str(tmp_path / "run")},
    }))
    r = gemma("finetune", cfg, "--dry-run", "--json", "-q")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["train_records"] == 12 and doc["data"]["kind"] == "chat"
    assert 0 < doc["data"]["first_batch_tokens_trained"] < doc["data"]["first_batch_tokens"]  # completions only
