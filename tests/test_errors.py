"""Library exceptions from bad input or a broken environment → one line, the right exit code,
no traceback (issue #10).

The walk raises each library's real exception, from a real call wherever one can be made here
(files on disk, local HTTP servers standing in for the Hub, a closed port), and sends it
through the error boundary every verb runs in: one `Error:` line on stderr naming the file,
line, key or host, exit 2 for bad input and 1 for the environment, and with --json one
document on stdout. Kaggle cannot be reached from here at all; its exception classes are built
directly, with a real `requests.Response`, at the narrowest boundary.
"""

from __future__ import annotations

import errno
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from gemma_cli.commands.common import boundary, make_output
from gemma_cli.errors import reading

ROOT = Path(__file__).resolve().parents[1]


def through_boundary(raise_it: Callable[[], Any], capsys: pytest.CaptureFixture[str], json_mode: bool = False) -> tuple[int, str, str]:
    """(exit code, stderr, stdout) of a verb body that runs `raise_it()`."""
    out = make_output(json_mode, quiet=True)
    with pytest.raises(typer.Exit) as e:
        with boundary(out):
            raise_it()
    got = capsys.readouterr()
    return e.value.exit_code, got.err, got.out


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "Traceback" not in err and "--debug" not in err, err  # known, not an unexpected failure
    return lines[0]


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    """A local server answering like the Hub: 404 RepoNotFound, 403 GatedRepo, 401."""

    class Hub(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            if "/missing/" in self.path:
                code, kind = 404, "RepoNotFound"
            elif "/gated/" in self.path:
                code, kind = 403, "GatedRepo"
            else:
                code, kind = 401, None
            self.send_response(code)
            if kind:
                self.send_header("X-Error-Code", kind)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(b'{"error": "no"}')

        do_GET = do_HEAD = _answer

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------- the known sources ---
def _json(tmp: Path) -> Callable[[], Any]:
    f = tmp / "state.json"
    f.write_text('{\n  "step": 12,\n  "loss": \n}\n')
    return lambda: _read_with(f, lambda: json.loads(f.read_text()))


def _yaml(tmp: Path) -> Callable[[], Any]:
    import yaml

    f = tmp / "notes.yaml"
    f.write_text("a: 1\nb: [1, 2\nc: 3\n")

    def run() -> None:
        with open(f) as fh:
            yaml.safe_load(fh)

    return run


def _h5(tmp: Path) -> Callable[[], Any]:
    import h5py

    f = tmp / "adapter.lora.h5"
    with h5py.File(f, "w") as h:
        h["x"] = list(range(1000))
    f.write_bytes(f.read_bytes()[:900])
    return lambda: _read_with(f, lambda: h5py.File(f, "r"))


def _h5_no_path(tmp: Path) -> Callable[[], Any]:
    import h5py

    f = tmp / "weights.h5"
    f.write_text("not hdf5")
    return lambda: h5py.File(f, "r")


def _safetensors(tmp: Path) -> Callable[[], Any]:
    from safetensors import safe_open

    f = tmp / "model.safetensors"
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    return lambda: _read_with(f, lambda: safe_open(str(f), "np"))


def _tfds(tmp: Path) -> Callable[[], Any]:
    import tensorflow_datasets as tfds

    return lambda: tfds.builder("no_such_dataset_xyz")


def _hf(hub: str, repo: str) -> Callable[[], Any]:
    from huggingface_hub import HfApi

    return lambda: HfApi(endpoint=hub).model_info(repo)


def _hf_unreachable() -> Callable[[], Any]:
    from huggingface_hub import HfApi

    port = _closed_port()
    return lambda: HfApi(endpoint=f"http://127.0.0.1:{port}").model_info("google/gemma-3-270m")


def _hf_not_cached(tmp: Path) -> Callable[[], Any]:
    from huggingface_hub import hf_hub_download

    return lambda: hf_hub_download("google/gemma-3-270m", "config.json", local_files_only=True, cache_dir=str(tmp))


def _kaggle(status: int | None, kind: str) -> Callable[[], Any]:
    import requests
    from kagglehub import exceptions as ke

    def run() -> None:
        if kind == "unauthenticated":
            raise ke.UnauthenticatedError()
        r = requests.Response()
        r.status_code = status
        r.url = "https://www.kaggle.com/api/v1/models/keras/gemma/keras/gemma_9b_en/1/get"
        raise ke.KaggleApiHTTPError(f"{status} Client Error", response=r)

    return run


def _kaggle_unreachable(monkeypatch: pytest.MonkeyPatch) -> Callable[[], Any]:
    import kagglehub

    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")  # http://localhost, nothing listens
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    return lambda: kagglehub.model_download("keras/gemma/keras/gemma_2b_en/2")


def _os(kind: str, tmp: Path) -> Callable[[], Any]:
    def run() -> None:
        if kind == "missing":
            open(tmp / "nope.jsonl")
        elif kind == "is-dir":
            open(tmp)
        elif kind == "not-dir":
            (tmp / "file").write_text("x")
            open(tmp / "file" / "sub")
        elif kind == "full":
            with open("/dev/full", "w") as f:
                f.write("x")
                f.flush()

    return run


def _read_with(path: Path, fn: Callable[[], Any]) -> Any:
    with reading(path):
        return fn()


CASES: list[tuple[str, int, list[str]]] = [
    ("json", 2, ["state.json:4: not valid JSON: Expecting value"]),
    ("yaml", 2, ["notes.yaml:3: not valid YAML", "expected ',' or ']'"]),
    ("h5py", 2, ["adapter.lora.h5: not a readable HDF5 file (truncated file"]),
    ("h5py-no-path", 2, ["not a readable HDF5 file (file signature not found)"]),
    ("safetensors", 2, ["model.safetensors: not a readable safetensors file"]),
    ("tfds", 2, ["data.name: tfds has no such dataset", "no_such_dataset_xyz"]),
    ("hf-missing", 2, ["the Hugging Face Hub has no such repository"]),
    ("hf-gated", 2, ["refused access", "gemma login hf"]),
    ("hf-401", 2, ["refused access", "gemma login hf"]),
    ("hf-unreachable", 1, ["cannot reach http://127.0.0.1:"]),
    ("hf-not-cached", 1, ["cannot reach the Hugging Face Hub"]),
    ("kaggle-403", 2, ["Kaggle refused access", "gemma login kaggle"]),
    ("kaggle-404", 2, ["Kaggle has no such model"]),
    ("kaggle-500", 1, ["Kaggle answered with an error"]),
    ("kaggle-unauthenticated", 2, ["Kaggle refused access"]),
    ("kaggle-unreachable", 1, ["cannot reach http://localhost"]),
    ("os-missing", 2, ["nope.jsonl: no such file or directory"]),
    ("os-is-dir", 2, [": is a directory, not a file"]),
    ("os-not-dir", 2, ["file/sub: a part of the path is a file, not a directory"]),
    ("os-full", 1, ["no space left on the device"]),
]


@pytest.mark.parametrize("case, code, words", CASES, ids=[c[0] for c in CASES])
def test_library_exception_becomes_one_line(
    case: str, code: int, words: list[str], tmp_path: Path, hub: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    factories: dict[str, Callable[[], Callable[[], Any]]] = {
        "json": lambda: _json(tmp_path),
        "yaml": lambda: _yaml(tmp_path),
        "h5py": lambda: _h5(tmp_path),
        "h5py-no-path": lambda: _h5_no_path(tmp_path),
        "safetensors": lambda: _safetensors(tmp_path),
        "tfds": lambda: _tfds(tmp_path),
        "hf-missing": lambda: _hf(hub, "missing/model"),
        "hf-gated": lambda: _hf(hub, "gated/model"),
        "hf-401": lambda: _hf(hub, "private/model"),
        "hf-unreachable": _hf_unreachable,
        "hf-not-cached": lambda: _hf_not_cached(tmp_path),
        "kaggle-403": lambda: _kaggle(403, "http"),
        "kaggle-404": lambda: _kaggle(404, "http"),
        "kaggle-500": lambda: _kaggle(500, "http"),
        "kaggle-unauthenticated": lambda: _kaggle(None, "unauthenticated"),
        "kaggle-unreachable": lambda: _kaggle_unreachable(monkeypatch),
        "os-missing": lambda: _os("missing", tmp_path),
        "os-is-dir": lambda: _os("is-dir", tmp_path),
        "os-not-dir": lambda: _os("not-dir", tmp_path),
        "os-full": lambda: _os("full", tmp_path),
    }
    if case == "os-full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    raise_it = factories[case]()
    exit_code, err, out = through_boundary(raise_it, capsys)
    line = one_line(err)
    assert exit_code == code, (exit_code, line)
    for w in words:
        assert w in line, (w, line)
    assert out == ""
    # --json: the same line on stderr, and one document on stdout
    exit_code, err, out = through_boundary(raise_it, capsys, json_mode=True)
    assert one_line(err) == line and exit_code == code
    doc = json.loads(out)
    assert doc["exit_code"] == code and line.startswith(f"Error: {doc['error']}")


def test_an_unknown_exception_is_still_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    def bug() -> None:
        raise ZeroDivisionError("division by zero")

    code, err, _ = through_boundary(bug, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and lines == ["Error: ZeroDivisionError: division by zero (run again with --debug for the traceback)"]


def test_errno_codes_map_to_exit_codes() -> None:
    from gemma_cli.errors import translate

    for code, exit_code in ((errno.EACCES, 2), (errno.EROFS, 2), (errno.ENOSPC, 1), (errno.EDQUOT, 1)):
        e = translate(OSError(code, os.strerror(code), "/data/x"))
        assert e is not None and e.exit_code == exit_code and e.message.startswith("/data/x: "), (code, e)
    e = translate(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
    assert e is not None and e.exit_code == 1 and e.message.startswith("cannot reach")


# ------------------------------------------------------------------ --json: stdout is the document ---
GUARDED = r"""
import os, sys
from gemma_cli.commands.common import boundary, make_output
out = make_output(json_mode=True)
try:
    with boundary(out):
        print("a library's progress line")          # Python, to sys.stdout
        os.write(1, b"[Gloo] native chatter\n")       # C, to fd 1
        if sys.argv[1] == "fail":
            raise ValueError("bad value")
        out.result({"ok": True})
except SystemExit:
    raise
except BaseException as e:  # typer.Exit
    sys.exit(getattr(e, "exit_code", 3))
print("after the verb: stdout is stdout again")
"""


@pytest.mark.parametrize("how", ["ok", "fail"])
def test_json_stdout_holds_one_document_even_when_libraries_print(how: str) -> None:
    p = subprocess.run([sys.executable, "-c", GUARDED, how], capture_output=True, text=True, cwd=ROOT, timeout=60)
    doc_text = p.stdout.split("after the verb")[0]
    doc = json.loads(doc_text)  # one document and nothing else before it
    assert "a library's progress line" in p.stderr and "[Gloo] native chatter" in p.stderr
    if how == "ok":
        assert p.returncode == 0 and doc == {"ok": True}
        assert p.stdout.endswith("after the verb: stdout is stdout again\n")
    else:
        assert p.returncode == 1 and doc["exit_code"] == 1 and doc["error"].startswith("ValueError: bad value")
        assert [ln for ln in p.stderr.splitlines() if ln.startswith("Error: ")] == [
            "Error: ValueError: bad value (run again with --debug for the traceback)"]


VERB_FAILURES = [
    ["finetune", "{tmp}/missing.yaml"],
    ["inspect", "{tmp}/missing.yaml"],
    ["generate", "{tmp}/missing.yaml", "-p", "hi"],
    ["export", "{tmp}/nowhere/run", "--out", "{tmp}/x"],
    ["upload", "{tmp}/nowhere", "hf://me/model"],
    ["config", "validate", "{tmp}/missing.yaml"],
    ["config", "show", "{tmp}/missing.yaml"],
    ["convert", "gguf", "{tmp}/missing.gguf", "--out", "{tmp}/x"],
    ["login", "kaggle"],
    ["login", "hf"],
    ["runs", "{tmp}/nowhere"],
    ["generate", "--no-such-option"],  # the command line itself does not parse
    ["export", "{tmp}/run"],  # --out is missing
]


@pytest.mark.parametrize("argv", VERB_FAILURES, ids=lambda a: " ".join(a[:2]))
def test_every_verb_fails_with_one_json_document_and_one_line(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from gemma_cli.cli import app

    monkeypatch.setenv("HOME", str(tmp_path))  # no stored credentials
    for k in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "HF_TOKEN", "HF_HOME", "HF_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    r = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in argv] + ["--json"])
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    doc = json.loads(r.stdout)  # exactly one document
    assert doc.get("exit_code") == 2 or doc.get("valid") is False, doc
    line = one_line(r.stderr)
    assert line[len("Error: "):].startswith(doc["error"] if "error" in doc else doc["problems"][0])


# ---------------------------------------------------------------- stderr: native INFO lines ---
SPM = r"""
import io, sys
from gemma_cli.engine.core import runtime
runtime.setup()
import keras_hub
import sentencepiece as spm
buf = io.BytesIO()
spm.SentencePieceTrainer.train(sentence_iterator=iter(["the quick brown fox jumps over the lazy dog"] * 50),
                               model_writer=buf, vocab_size=30, model_type="bpe", minloglevel=2,
                               normalization_rule_name="identity")  # Gemma's normalizer
if sys.argv[1] == "quiet":
    with runtime.quiet_native_info():
        keras_hub.tokenizers.SentencePieceTokenizer(proto=buf.getvalue())
        print("a Python line on stderr", file=sys.stderr)
else:
    keras_hub.tokenizers.SentencePieceTokenizer(proto=buf.getvalue())
print("loaded", file=sys.stderr)
"""


def test_sentencepiece_info_line_is_dropped_on_load() -> None:
    """tensorflow-text's SentencePiece prints `normalizer.cc(51) LOG(INFO) ...` whenever a
    tokenizer with Gemma's identity normalizer loads; model and tokenizer loads filter it."""
    env = {k: v for k, v in os.environ.items() if k != "GEMMA_DEBUG"}
    env["PYTHONPATH"] = str(ROOT)
    runs = {how: subprocess.run([sys.executable, "-c", SPM, how], capture_output=True, text=True, cwd=ROOT,
                                env=env, timeout=300) for how in ("loud", "quiet")}
    for p in runs.values():
        assert p.returncode == 0 and "loaded" in p.stderr, p.stderr[-2000:]
    assert "normalizer.cc(51) LOG(INFO) precompiled_charsmap is empty" in runs["loud"].stderr
    assert "LOG(INFO)" not in runs["quiet"].stderr and "a Python line on stderr" in runs["quiet"].stderr
