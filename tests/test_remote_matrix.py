"""Every verb × every remote kind it may touch × every way a host fails to answer (issue #28).

The registry `gemma_cli.engine.core.remote.VERBS` says which verbs may touch which kinds of
remote (hf, kaggle, gcs, tfds). Each pair runs here against hosts on 127.0.0.1 that the usual
variables point at (HF_ENDPOINT, KAGGLE_API_ENDPOINT, STORAGE_EMULATOR_HOST, a tfds download URL):

    refused     a closed port
    silent      a listening socket that never accepts or answers
    slow        an HTTP server that answers only after the probe's deadline
    unresolved  a name that does not resolve (`.invalid`)

Each case ends with exit 1 (`init` writes its config anyway: exit 0 and a warning), exactly one
line on stderr naming the host, and one JSON document on stdout (`--json`): no library retry
logging, no traceback. Bounded time is asserted through the outcome, not a clock: the probe's
deadline is set short (GEMMA_PROBE_TIMEOUT), and a silent host would otherwise hang the case.

A verb or kind added to VERBS without a case here fails `test_every_verb_and_kind_joins_the_matrix`;
a CLI verb missing from VERBS fails `test_every_cli_verb_is_in_the_registry`. To add a verb
(`eval`, say): add `"eval": (kinds...)` to VERBS and a builder to `CASES`.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gemma_cli.cli import app
from gemma_cli.engine.core import remote

DEADLINE = 0.5  # GEMMA_PROBE_TIMEOUT in every case
MODES = ("refused", "silent", "slow", "unresolved")
UNRESOLVED = "http://gemma-matrix.invalid"
PRESETS = {
    "hf": "hf://gemma-matrix/model",
    "kaggle": "kaggle://gemma-matrix/model/keras/x/1",
    "gcs": "gs://gemma-matrix-bucket/preset",
}
REASONS = {
    "refused": "connection refused",
    "silent": f"no answer within {DEADLINE:g} s",
    "slow": f"no answer within {DEADLINE:g} s",
    "unresolved": "",  # "host name not resolved" where DNS says so, the deadline where it hangs
}


# ---------------------------------------------------------------------------- the hosts ---
@contextlib.contextmanager
def _hosts() -> Iterator[dict[str, str]]:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)

    class Slow(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            time.sleep(DEADLINE * 4)
            self.send_response(200)
            self.end_headers()

        do_HEAD = do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, *a: Any) -> None:
            pass

    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    slow.daemon_threads = True
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    try:
        yield {
            "refused": f"http://127.0.0.1:{closed_port}",
            "silent": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "slow": f"http://127.0.0.1:{slow.server_address[1]}",
            "unresolved": UNRESOLVED,
        }
    finally:
        slow.shutdown()
        slow.server_close()
        silent.close()


@pytest.fixture(scope="module")
def hosts() -> Iterator[dict[str, str]]:
    with _hosts() as h:
        yield h


@pytest.fixture(scope="module")
def tfds_builder() -> Any:
    """A tfds dataset whose download URL the case sets (`URL`), never prepared."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class GemmaMatrixDownload(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        URL = ""

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            path = dl_manager.download(self.URL)
            return {"train": self._generate_examples(path)}

        def _generate_examples(self, path):
            yield 0, {"text": Path(path).read_text()}

    return GemmaMatrixDownload


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Credentials present, caches empty, every endpoint variable at `base`."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for k in ("HF_HOME", "HF_TOKEN_PATH", "XDG_CACHE_HOME", "KAGGLE_CONFIG_DIR", "KAGGLE_API_TOKEN",
              "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "GEMMA_OFFLINE", "GEMMA_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    monkeypatch.setenv("KAGGLE_USERNAME", "gemma-matrix")
    monkeypatch.setenv("KAGGLE_KEY", "k" * 32)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setenv("GEMMA_PROBE_TIMEOUT", str(DEADLINE))
    monkeypatch.chdir(tmp_path)

    def point(base: str) -> None:
        for var in ("HF_ENDPOINT", "KAGGLE_API_ENDPOINT", "STORAGE_EMULATOR_HOST"):
            monkeypatch.setenv(var, base)

    return point


# ---------------------------------------------------------------------------- the cases ---
def _config(tmp: Path, preset: str, data: dict[str, Any] | None = None) -> Path:
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(16)))
    cfg = {
        "model": {"preset": preset, "precision": "float32", "lora": {"rank": 4}},
        "mesh": {"shape": [4, 2], "axes": ["batch", "model"]},
        "data": {"sequence_length": 16, "batch_size": 4, **(data or {"paths": [str(corpus)]})},
        "train": {"max_steps": 2, "output_dir": str(tmp / "out")},
    }
    p = tmp / "run.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def _finetune(kind: str, base: str, tmp: Path, ctx: dict[str, Any]) -> list[str]:
    if kind == "tfds":
        ctx["tfds_builder"].URL = f"{base}/tiny.txt"
        data = {"name": "gemma_matrix_download", "data_dir": str(tmp / "tfds")}
        return ["finetune", str(_config(tmp, str(ctx["tiny_gemma3"]), data)), "--json"]
    return ["finetune", str(_config(tmp, PRESETS[kind])), "--json"]


def _upload(kind: str, base: str, tmp: Path, ctx: dict[str, Any]) -> list[str]:
    d = tmp / "preset"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text("{}")
    uri = "hf://gemma-matrix/up" if kind == "hf" else "kaggle://gemma-matrix/up/keras/x"
    return ["upload", str(d), uri, "--json"]


def _eval_data(tmp: Path) -> Path:
    p = tmp / "eval.jsonl"
    p.write_text(json.dumps({"prompt": "hi", "answer": "{}"}) + "\n")
    return p


CASES: dict[str, Callable[[str, str, Path, dict[str, Any]], list[str]]] = {
    "finetune": _finetune,
    "inspect": lambda kind, base, tmp, ctx: ["inspect", PRESETS[kind], "--json"],
    "generate": lambda kind, base, tmp, ctx: ["generate", PRESETS[kind], "-p", "hi", "--json"],
    "eval": lambda kind, base, tmp, ctx: ["eval", PRESETS[kind], "--data", str(_eval_data(tmp)), "--reward", "json",
                                          "--json"],
    "export": lambda kind, base, tmp, ctx: ["export", PRESETS[kind], "--out", str(tmp / "exported"), "--json"],
    "upload": _upload,
    "init": lambda kind, base, tmp, ctx: ["init", "--preset", PRESETS[kind], "--json"],
    "config validate": lambda kind, base, tmp, ctx: ["config", "validate", str(_config(tmp, PRESETS[kind])), "--json"],
    "login status": lambda kind, base, tmp, ctx: ["login", "status", kind, "--check", "--json"],
    "login": lambda kind, base, tmp, ctx: ["login", kind, "--check", "--json"],
}
EXIT = {"init": 0}  # init writes its config without the remote plan, and warns


def _matrix() -> list[tuple[str, str, str]]:
    return [(verb, kind, mode) for verb, kinds in remote.VERBS.items() for kind in kinds for mode in MODES]


@pytest.mark.parametrize(("verb", "kind", "mode"), _matrix())
def test_verb_against_a_host_that_does_not_answer(verb, kind, mode, hosts, env, tmp_path, request):
    base = hosts[mode]
    env(base)
    ctx: dict[str, Any] = {}
    if kind == "tfds":
        ctx = {"tfds_builder": request.getfixturevalue("tfds_builder"),
               "tiny_gemma3": request.getfixturevalue("tiny_gemma3")}
    argv = CASES[verb](kind, base, tmp_path, ctx)
    r = CliRunner().invoke(app, argv)
    code = EXIT.get(verb, 1)
    where = f"{verb} {kind} {mode}: exit {r.exit_code}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert r.exit_code == code, where
    assert "Traceback" not in r.stderr + r.stdout, where
    # our own progress steps (» and their indented details) may come first; no library log line
    err = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("» ", "  "))]
    doc = json.loads(r.stdout)  # exactly one document
    host = remote.host_of(base)
    if code == 0:
        assert [ln for ln in err if ln.startswith("Warning:")] and all(ln.startswith("Warning:") for ln in err), where
        assert host in r.stderr and "cannot reach" in r.stderr, where
        assert not (tmp_path / "gemma.yaml").exists() or doc["planned"] is False, where
        return
    assert len(err) == 1 and err[0].startswith("Error: "), where  # no retry logging, one line
    assert host in err[0] and "cannot reach" in err[0], where
    assert REASONS[mode] in err[0], where
    assert doc.get("exit_code", 1) == 1 and doc.get("valid") is not True, where


# ------------------------------------------------------------------ the matrix is whole ---
def test_every_verb_and_kind_joins_the_matrix():
    assert set(remote.VERBS) - set(CASES) <= {v for v, kinds in remote.VERBS.items() if not kinds}, (
        "a verb that touches a remote needs a case builder in CASES")
    used = {k for kinds in remote.VERBS.values() for k in kinds}
    assert used <= set(remote.KINDS)
    assert set(remote.KINDS) <= used, "a kind no verb touches: remove it, or name the verbs that reach it"
    assert set(PRESETS) | {"tfds"} >= used


def test_every_cli_verb_is_in_the_registry():
    import typer.main

    group = typer.main.get_command(app)
    names = []
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        names += [f"{name} {s}" for s in subs] if subs else [name]
    missing = [n for n in names if n not in remote.VERBS and n.split(" ")[0] not in remote.VERBS]
    assert missing == [], f"add these verbs to engine/core/remote.py VERBS (and a case here): {missing}"


# ------------------------------------------------------------------- offline switches ---
@pytest.mark.parametrize("var", ["GEMMA_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_asks_no_host(var, env, hosts, monkeypatch):
    """Offline, nothing is asked (not even the refusing host): one line saying so and what to do."""
    env(hosts["refused"])
    monkeypatch.setenv(var, "1")
    r = CliRunner().invoke(app, ["inspect", PRESETS["hf"]])
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(err) == 1, r.stderr
    assert f"{var} is set" in err[0] and "use a local path" in err[0], err[0]


def test_the_probe_and_the_cache():
    """`require` names host, reason and the variable to change; a cached download asks nobody."""
    with _hosts() as h:
        with pytest.raises(remote.RuntimeFailure) as e:
            remote.require("hf", "model.preset: hf://a/b", target=h["refused"] + "/x", timeout=DEADLINE)
        assert e.value.exit_code == 1
        assert e.value.line().startswith(f"model.preset: hf://a/b: cannot reach the Hugging Face Hub at {h['refused']}")
        assert "HF_ENDPOINT" in e.value.line()
        replies = remote.check_all([("hf", h["silent"] + "/"), ("kaggle", h["refused"] + "/")], timeout=DEADLINE)
        assert [r.error for r in replies] == [f"no answer within {DEADLINE:g} s", "connection refused"]
