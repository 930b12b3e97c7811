"""Bad input found before anything loads (issue #10): one line each, the file, line or key, and
what to do; exit 2 (1 for a host that does not answer); nothing heavy imported, nothing written.

Each case is a mistake a user makes: a path that does not exist although `config validate`
said the config was valid, a preset directory with a broken config.json or without its
weights, an output_dir that is a file or cannot be written, later records without the field,
a damaged checkpoint on --resume, a misspelt preset name, a remote preset without network.
The checks run before the model loads, so these tests load no model (except where the engine's
own check behind the preflight is the point).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_finetune import assert_one_error_line, config, corpus_file, gemma

from gemma_cli import net, preflight
from gemma_cli.config import load_config
from gemma_cli.engine import families

ROOT = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A local port that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Kaggle / Hugging Face credentials anywhere the libraries look."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    for k in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "HF_TOKEN",
              "HUGGING_FACE_HUB_TOKEN", "HF_HOME", "HF_TOKEN_PATH", "XDG_CACHE_HOME"):
        monkeypatch.delenv(k, raising=False)
    return h


def lines(r: Any) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.strip()]


# ------------------------------------------------------------ validate = what finetune checks ---
def test_validate_catches_missing_data_and_preset_dir_with_file_lines(tmp_path: Path) -> None:
    cfg = tmp_path / "x.yaml"
    cfg.write_text(
        "model:\n  preset: presets/nowhere\n"
        "data:\n  paths:\n    - data/train.jsonl\n    - data/*.csv\n"
        f"train:\n  output_dir: {tmp_path / 'out'}\n"
    )
    r = gemma("config", "validate", cfg)
    assert r.exit_code == 2, r.stderr
    got = lines(r)
    assert got[0] == f"Error: {cfg}:2: model.preset: presets/nowhere: no such directory " \
        "(give a keras-hub preset directory, a preset name, kaggle:// or hf://)"
    assert got[1].strip().startswith(f"{cfg}:5: data.paths[0]: 'data/train.jsonl' matches no file")
    assert got[2].strip().startswith(f"{cfg}:6: data.paths[1]: 'data/*.csv' matches no file")
    assert len(got) == 3 and "Traceback" not in r.stderr
    r = gemma("config", "validate", cfg, "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 2 and doc["valid"] is False and len(doc["problems"]) == 3
    # the same config, fixed: valid, and it says what was checked
    (tmp_path / "data").mkdir()
    corpus_file(tmp_path / "data" / "train.jsonl")
    r = gemma("config", "validate", cfg, f"data.paths=[{tmp_path / 'data' / 'train.jsonl'}]",
              "model.preset=gemma3_270m", "--offline", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["checked"] == "schema, preset, data, output_dir"


def test_finetune_checks_before_importing_anything_heavy(tmp_path: Path, tiny_gemma3: Path) -> None:
    cfg = config(tmp_path, tiny_gemma3, data={"paths": [str(tmp_path / "missing.jsonl")]})
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from gemma_cli.cli import app\n"
        f"r = CliRunner().invoke(app, ['finetune', {str(cfg)!r}, '-q'])\n"
        "heavy = [m for m in ('keras', 'keras_hub', 'jax', 'tensorflow', 'tensorflow_datasets') if m in sys.modules]\n"
        "print(r.exit_code, heavy, r.stderr.strip())\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.stdout.startswith("2 [] Error: "), p.stdout + p.stderr
    assert "data.paths[0]" in p.stdout and "missing.jsonl' matches no file" in p.stdout
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- preset directories ---
def _broken(src: Path, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    if how == "json":
        text = (dst / "config.json").read_text().splitlines()
        text[2] = text[2].rstrip(",")  # a missing comma on line 3
        (dst / "config.json").write_text("\n".join(text))
    elif how == "weights":
        (dst / "model.weights.h5").unlink()
    elif how == "truncated":
        data = (dst / "model.weights.h5").read_bytes()
        (dst / "model.weights.h5").write_bytes(data[: len(data) // 3])
    elif how == "vocabulary":
        shutil.rmtree(dst / "assets" / "tokenizer")
    elif how == "config":
        (dst / "config.json").unlink()
    return dst


@pytest.mark.parametrize(
    "how, words",
    [
        ("json", ["config.json:4: not valid JSON", "Expecting ',' delimiter"]),
        ("weights", ["model.weights.h5: missing: the preset has no weights"]),
        ("truncated", ["model.weights.h5: not a readable HDF5 file", "truncated file"]),
        ("vocabulary", ["assets/tokenizer: missing or empty"]),
        ("config", ["no config.json there: not a keras-hub preset directory"]),
    ],
)
def test_broken_preset_dir_named_before_loading(tmp_path: Path, tiny_gemma3: Path, how: str, words: list[str]) -> None:
    preset = _broken(tiny_gemma3, tmp_path / "preset", how)
    cfg = config(tmp_path, preset)
    line = assert_one_error_line(gemma("finetune", cfg, "-q"))
    assert line.startswith(f"Error: {cfg}:2: model.preset: {preset}"), line
    for w in words:
        assert w in line, (w, line)
    # the same check for a preset given to generate / export directly (no config file to name)
    if how == "config":  # without config.json a directory is not taken for a preset at all
        words = ["neither a run config, a finetune output_dir, a keras-hub preset nor a Hugging Face checkpoint directory"]
    line = assert_one_error_line(gemma("generate", preset, "-p", "hi", "-q"))
    assert words[0] in line, line
    line = assert_one_error_line(gemma("export", preset, "--out", tmp_path / "x", "-q"))
    assert words[0] in line and not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ output_dir ---
def test_output_dir_that_is_a_file(tmp_path: Path, tiny_gemma3: Path) -> None:
    f = tmp_path / "out"
    f.write_text("my notes\n")
    cfg = config(tmp_path, tiny_gemma3)
    line = assert_one_error_line(gemma("finetune", cfg, "-q"))
    assert f"train.output_dir: {f} is an existing file; choose a directory" in line
    assert f.read_text() == "my notes\n"
    line = assert_one_error_line(gemma("finetune", cfg, f"train.output_dir={f}/run", "-q"))
    assert f"{f}/run: {f} is a file, so no directory can be made under it" in line
    # export --out the same
    line = assert_one_error_line(gemma("export", tiny_gemma3, "--out", f, "-q"))
    assert f"--out: {f} is an existing file" in line


@contextlib.contextmanager
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nothing can be written into: permissions for a user, a read-only mount for
    root (whom permission bits do not stop); skip when neither can be had."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        try:
            yield d
        finally:
            d.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("root without a way to make a read-only directory (mount failed)")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)


def test_output_dir_read_only(tmp_path: Path, tiny_gemma3: Path) -> None:
    with read_only_dir(tmp_path) as ro:
        cfg = config(tmp_path, tiny_gemma3, train={"output_dir": str(ro / "run")})
        line = assert_one_error_line(gemma("finetune", cfg, "-q"))
        assert f"train.output_dir: {ro / 'run'}: cannot write in {ro} (" in line, line
        assert "choose a writable location" in line
        r = gemma("config", "validate", cfg, "--offline")
        assert r.exit_code == 2 and f"cannot write in {ro}" in r.stderr


def test_tfds_data_dir_is_made_by_tfds_unless_it_cannot_be(tmp_path: Path, tiny_gemma3: Path) -> None:
    """A data_dir that does not exist yet is fine (tfds makes it as it prepares the dataset);
    one that is a file, or under a read-only place, is named before anything loads."""
    fresh = config(tmp_path, tiny_gemma3, data={"name": "imdb_reviews", "data_dir": str(tmp_path / "not" / "yet")})
    assert preflight.data(load_config(str(fresh)), required=True) == []
    f = tmp_path / "notes.txt"
    f.write_text("mine\n")
    cfg = config(tmp_path, tiny_gemma3, data={"name": "imdb_reviews", "data_dir": str(f)})
    line = assert_one_error_line(gemma("finetune", cfg, "-q"))
    assert f"data.data_dir: {f} is a file" in line and f.read_text() == "mine\n"
    with read_only_dir(tmp_path) as ro:
        cfg = config(tmp_path, tiny_gemma3, data={"name": "imdb_reviews", "data_dir": str(ro / "tfds")})
        line = assert_one_error_line(gemma("finetune", cfg, "-q"))
        assert f"data.data_dir: {ro / 'tfds'}: cannot write in {ro}" in line, line


# ------------------------------------------------------------------------------------ records ---
def test_later_records_lacking_the_field_named_by_file_and_line(tmp_path: Path, tiny_gemma3: Path) -> None:
    data = corpus_file(tmp_path / "corpus.jsonl")
    rows = data.read_text().splitlines()
    rows[29] = json.dumps({"txt": "a typo in the field name"})
    data.write_text("\n".join(rows) + "\n")
    cfg = config(tmp_path, tiny_gemma3, data={"paths": [str(data)]})
    line = assert_one_error_line(gemma("config", "validate", cfg, "--offline"))
    assert f"{data}:30" in line and "'text'" in line, line
    line = assert_one_error_line(gemma("finetune", cfg, "-q"))
    assert f"{data}:30" in line and "'text'" in line, line
    assert not (tmp_path / "out").exists()


def test_record_check_reads_the_start_of_big_data_and_all_of_it_when_asked(tmp_path: Path) -> None:
    """The preflight's check is bounded by bytes (finetune) or whole (config validate); a chat
    record with an unknown role past the bound is found only by the whole check, by file:line."""
    from gemma_cli.engine.data import check_records

    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}
    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in [good] * 400 + [bad] + [good] * 20))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"preset": "gemma3_270m"}, "data": {"paths": [str(f)]}}))
    data_cfg = load_config(str(cfg)).data
    assert check_records(data_cfg, f.stat().st_size // 2) == 210  # the first half of the records
    with pytest.raises(Exception) as e:
        check_records(data_cfg, None)
    assert f"{f}:401" in str(e.value) and "robot" in str(e.value)
    assert check_records(load_config(str(cfg), ["data.take=400"]).data, None) == 400


# -------------------------------------------------------------------------------- checkpoints ---
def _fake_checkpoint(run: Path, step: int) -> Path:
    """A checkpoint's files as the trainer writes them (for checks that read, not load, them)."""
    import h5py
    import numpy as np

    d = run / "checkpoints" / f"step_{step:08d}"
    d.mkdir(parents=True)
    with h5py.File(d / "adapter.lora.h5", "w") as f:
        f["lora/rank"] = 4
    np.savez(d / "optimizer.npz", **{"00000": np.zeros(3)}, __paths__=np.array(["iteration"]))
    (d / "state.json").write_text(json.dumps({"step": step, "loss": 1.0}))
    (run / "checkpoints" / "latest").write_text(d.name + "\n")
    return d


@pytest.mark.parametrize(
    "damage, words",
    [
        ("adapter", ["adapter.lora.h5: not a readable HDF5 file (truncated file"]),
        ("optimizer", ["optimizer.npz: not a readable .npz file"]),
        ("state", ["state.json:1: not valid JSON"]),
    ],
)
def test_damaged_checkpoint_on_resume_names_the_file_and_the_previous_one(
    tmp_path: Path, tiny_gemma3: Path, damage: str, words: list[str]
) -> None:
    cfg = config(tmp_path, tiny_gemma3)
    run = tmp_path / "out"
    _fake_checkpoint(run, 6)
    bad = _fake_checkpoint(run, 12)
    target = {"adapter": "adapter.lora.h5", "optimizer": "optimizer.npz", "state": "state.json"}[damage]
    data = (bad / target).read_bytes()
    (bad / target).write_bytes(data[: len(data) // 2])
    line = assert_one_error_line(gemma("finetune", cfg, "--resume", "-q"))
    assert f"{bad}/{target}" in line, line
    for w in words:
        assert w in line, (w, line)
    assert f"the previous checkpoint is step_00000006: remove {bad} (rm -r) to continue from it" in line
    # with no earlier checkpoint: start over
    shutil.rmtree(run / "checkpoints" / "step_00000006")
    line = assert_one_error_line(gemma("finetune", cfg, "--resume", "-q"))
    assert f"there is no earlier checkpoint: remove {bad} (rm -r) and start without --resume" in line


def test_adapter_that_does_not_fit_the_model_named_when_loaded(tmp_path: Path, tiny_gemma3: Path) -> None:
    """Behind the preflight (which reads files, not their meaning), the loader names the file."""
    from gemma_cli.engine.model import runs
    from gemma_cli.errors import UsageError

    cfg = load_config(str(config(tmp_path, tiny_gemma3)))
    run = tmp_path / "out"
    _fake_checkpoint(run, 3)
    bad = _fake_checkpoint(run, 6)  # readable HDF5, but not this model's adapter
    assert preflight.checkpoint(bad, optimizer=False) == []
    with pytest.raises(UsageError) as e:
        runs.load(cfg, bad)
    assert e.value.message.startswith(f"{bad / 'adapter.lora.h5'}: cannot be loaded"), e.value.line()
    assert e.value.hint == f"the previous checkpoint is step_00000003: remove {bad} (rm -r) to continue from it"


# ------------------------------------------------------------------------------ preset names ---
def test_misspelt_preset_is_one_check_in_finetune_inspect_and_generate(tmp_path: Path, home: Path, tiny_gemma3: Path) -> None:
    cfg = config(tmp_path, tiny_gemma3)
    want = "model.preset: unknown preset 'gemma3_1bb' (did you mean gemma3_1b"
    for argv in (["finetune", cfg], ["inspect", cfg], ["config", "validate", cfg]):
        line = assert_one_error_line(gemma(*argv, "model.preset=gemma3_1bb", "-q"))
        assert want in line and "Kaggle" not in line and "login" not in line, (argv, line)
    line = assert_one_error_line(gemma("generate", "gemma3_1bb", "-p", "hi", "-q"))
    assert want in line
    # a known name that downloads: the credentials are what is missing
    line = assert_one_error_line(gemma("finetune", cfg, "model.preset=gemma3_1b", "-q"))
    assert "gemma3_1b downloads from Kaggle but no Kaggle credentials are configured" in line
    # planning a known name needs neither credentials nor network
    r = gemma("inspect", cfg, "model.preset=gemma3_1b", "mesh.shape=[8,1]", "data.batch_size=8", "--json")
    assert r.exit_code == 0, r.stderr


def test_keras_hub_registry_read_without_importing_it() -> None:
    import keras_hub  # noqa: F401  (registers every preset)
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    assert families.keras_hub_presets() == {k: v["kaggle_handle"] for k, v in BUILTIN_PRESETS.items()}


# --------------------------------------------------------------------- remote, no network ---
def test_hf_preset_without_network_fails_in_one_line_naming_the_host(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    t = time.monotonic()
    r = gemma("generate", "hf://google/gemma-3-270m", "-p", "hi")
    took = time.monotonic() - t
    line = assert_one_error_line(r, 1)
    assert f"cannot reach the Hugging Face Hub at http://127.0.0.1:{port} (connection refused)" in line, line
    assert took < 5, took
    r = gemma("generate", "hf://google/gemma-3-270m", "-p", "hi", "--json")
    assert r.exit_code == 1 and len(lines(r)) == 1
    assert json.loads(r.stdout)["exit_code"] == 1
    cfg = tmp_path / "hf.yaml"
    cfg.write_text(f"model: {{preset: 'hf://google/gemma-3-270m'}}\ntrain: {{output_dir: {tmp_path / 'out'}}}\n")
    r = gemma("config", "validate", cfg)
    assert r.exit_code == 1 and f"{cfg}:1: model.preset: hf://google/gemma-3-270m: cannot reach" in r.stderr
    assert gemma("config", "validate", cfg, "--offline").exit_code == 0
    t = time.monotonic()
    r = gemma("login", "status", "hf", "--check")
    line = assert_one_error_line(r, 1)
    assert f"cannot reach the Hugging Face Hub at http://127.0.0.1:{port}" in line and time.monotonic() - t < 5


def test_a_host_that_never_answers_is_given_up_on_at_the_deadline(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with silent_server() as port:
        t = time.monotonic()
        reply = net.head(f"http://127.0.0.1:{port}/x", deadline=1.0)
        assert not reply.reached and reply.error == "no answer within 1 s" and time.monotonic() - t < 2
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
        t = time.monotonic()
        line = assert_one_error_line(gemma("generate", "hf://a/b", "-p", "hi"), 1)
        assert f"at http://127.0.0.1:{port} (no answer within {net.DEADLINE_S:g} s)" in line
        assert time.monotonic() - t < net.DEADLINE_S + 2


# ------------------------------------------------------------------ tfds, not prepared, --json ---
def test_unprepared_tfds_dataset_with_json(tmp_path: Path, tiny_gemma3: Path) -> None:
    """A tfds dataset that is not prepared, its download host unreachable: stdout is still one
    JSON document (tfds prints its "Downloading and preparing" lines to stdout), the error one
    line on stderr."""
    import tensorflow_datasets as tfds

    # ftp: tfds opens it with urllib, which gives up at once (its http retries take minutes)
    url = f"ftp://127.0.0.1:{closed_port()}/gemma_unprepared.txt"

    class GemmaUnprepared(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            path = dl_manager.download(url)
            return {"train": self._generate_examples(path)}

        def _generate_examples(self, path):
            yield 0, {"text": Path(path).read_text()}

    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    cfg = config(tmp_path, tiny_gemma3, data={"name": "gemma_unprepared", "data_dir": str(data_dir)})
    r = gemma("finetune", cfg, "--json")
    doc = json.loads(r.stdout)  # exactly one document
    assert r.exit_code in (1, 2) and doc["exit_code"] == r.exit_code, (r.stdout, r.stderr)
    errors = [ln for ln in lines(r) if ln.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "cannot reach" in errors[0] or "gemma_unprepared" in errors[0], errors[0]
    assert "--debug" not in errors[0]  # a known failure, not an unexpected one
    assert GemmaUnprepared.name == "gemma_unprepared"


# -------------------------------------------------------------------------- all at once ---
def test_every_problem_at_once(tmp_path: Path, home: Path) -> None:
    (tmp_path / "out").write_text("")
    cfg = tmp_path / "x.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"preset": "gemma_2b_enn"},
        "data": {"paths": ["nothing.jsonl"], "eval_paths": [str(tmp_path / "x.yaml")]},
        "train": {"output_dir": str(tmp_path / "out")},
    }, sort_keys=False))
    problems = preflight.finetune(load_config(str(cfg)))
    assert [p.split(": ", 2)[1] for p in problems] == [
        "model.preset", "train.output_dir", "data.paths[0]", "data.eval_paths[0]"], problems
    assert "cannot tell the format from the extension" in problems[3]
    assert all(p.exit_code == 2 for p in problems)


def test_preflight_probe_thread_does_not_block_exit() -> None:
    """A probe abandoned at its deadline is a daemon thread: the process still exits."""
    with silent_server() as port:
        code = f"from gemma_cli import net; print(net.head('http://127.0.0.1:{port}/', deadline=0.5).error)"
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert p.stdout.strip() == "no answer within 0.5 s", p.stderr


def test_hf_answers_are_read(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A host that answers: 404 (no such repo) and 401 (a token without access) are bad input."""
    import http.server

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(401 if "/gated/" in self.path else 404)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.server_address[1]}")
        monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
        line = assert_one_error_line(gemma("generate", "hf://nobody/nothing", "-p", "hi"))
        assert "the Hub has no such repository, or it has no config.json (HTTP 404)" in line
        line = assert_one_error_line(gemma("generate", "hf://gated/model", "-p", "hi"))
        assert "refused access (HTTP 401); run `gemma login hf`" in line
    finally:
        srv.shutdown()


def test_a_cached_download_needs_no_network(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the download caches hold loads offline: no credentials or host are asked for."""
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kaggle"))
    cfg = load_config(str(config(tmp_path, tmp_path)), ["model.preset=hf://google/gemma-3-270m"])
    assert "no token is configured" in preflight.preset(cfg, weights=True, network=True)[0]
    (tmp_path / "hf" / "hub" / "models--google--gemma-3-270m" / "snapshots").mkdir(parents=True)
    assert preflight.preset(cfg, weights=True, network=True) == []
    cfg = load_config(str(config(tmp_path, tmp_path)), ["model.preset=gemma3_1b"])
    assert "downloads from Kaggle" in preflight.preset(cfg, weights=True, network=True)[0]
    handle = families.keras_hub_presets()["gemma3_1b"]  # kaggle://keras/gemma3/keras/gemma3_1b/N
    (tmp_path / "kaggle" / "models" / handle[len("kaggle://"):]).mkdir(parents=True)
    assert preflight.preset(cfg, weights=True, network=True) == []
