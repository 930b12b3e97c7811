"""`gemma login kaggle|hf|status`, `gemma logout` and `auth.require_credentials`.

Everything runs in a temporary HOME; checks go to a fake Kaggle/Hub server on 127.0.0.1
(through KAGGLE_API_ENDPOINT and HF_ENDPOINT), never to the real network. Every command's
stdout and stderr are checked for the secrets.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gemma_cli import auth
from gemma_cli.cli import app
from gemma_cli.errors import UsageError

HF_TOKEN = "hf_TestSecretToken0123456789abcdWXYZ"
HF_BAD = "hf_RevokedToken9876543210zyxwvuQRST"
K_USER = "kuser"
K_KEY = "0123456789abcdef0123456789abcdef"
K_BAD = "ffffffffffffffffbadbadbadbadbad0"
SECRETS = (HF_TOKEN, HF_BAD, K_KEY, K_BAD)

ENV_VARS = (
    "KAGGLE_CONFIG_DIR", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_API_ENDPOINT",
    "KAGGLE_API_ENVIRONMENT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HOME",
    "HF_ENDPOINT", "XDG_CACHE_HOME", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE",
    "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy",
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary HOME with no credentials anywhere the libraries look."""
    h = tmp_path / "home"
    h.mkdir()
    for v in ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.setenv("HF_HOME", str(h / ".cache" / "huggingface"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return h


class _Fake(BaseHTTPRequestHandler):
    """Answers like the Hub's whoami-v2 and Kaggle's DiagnosticsService/Hello."""

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append(("GET", self.path))  # type: ignore[attr-defined]
        if self.path.endswith("/api/whoami-v2"):
            if self.headers.get("Authorization") == f"Bearer {HF_TOKEN}":
                self._send(200, {"name": "alice", "type": "user", "auth": {"type": "access_token"}})
            else:
                self._send(401, {"error": "Invalid credentials in Authorization header"})
            return
        self._send(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        self.server.seen.append(("POST", self.path))  # type: ignore[attr-defined]
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        if self.path.endswith("/api.v1.DiagnosticsService/Hello"):
            good = "Basic " + base64.b64encode(f"{K_USER}:{K_KEY}".encode()).decode()
            if self.headers.get("Authorization") == good:
                self._send(200, {"userName": K_USER})
            else:
                self._send(401, {"code": 401, "message": "Unauthenticated"})
            return
        self._send(404, {"error": "not found"})

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def fake_server(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    """A local fake of both services; stops at teardown, or by itself after 60 s."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    srv.seen = []  # type: ignore[attr-defined]
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    guard = threading.Timer(60, srv.shutdown)
    guard.daemon = True
    guard.start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("KAGGLE_API_ENDPOINT", url)
    try:
        yield srv
    finally:
        guard.cancel()
        srv.shutdown()
        srv.server_close()
        t.join(5)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(args: list[str], input: str | None = None):  # noqa: A002
    """Invoke the CLI in-process; assert no secret reached stdout or stderr."""
    r = CliRunner().invoke(app, args, input=input)
    for secret in SECRETS:
        assert secret not in r.stdout, f"secret leaked on stdout of {args}"
        assert secret not in r.stderr, f"secret leaked on stderr of {args}"
    assert "Traceback" not in r.stderr
    return r


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# ---- kaggle ---------------------------------------------------------------------------------
def test_kaggle_from_file_stores_0600_where_kagglehub_reads(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "dl" / "kaggle.json"
    src.parent.mkdir()
    src.write_text(json.dumps({"username": K_USER, "key": K_KEY}))
    r = run(["login", "kaggle", "--from-file", str(src), "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    dest = home / ".kaggle" / "kaggle.json"
    assert doc["stored"] == str(dest) and doc["username"] == K_USER
    assert json.loads(dest.read_text()) == {"username": K_USER, "key": K_KEY}
    assert mode(dest) == 0o600 and mode(dest.parent) == 0o700
    assert [p.name for p in dest.parent.iterdir()] == ["kaggle.json"]  # no temp file left

    # kagglehub reads the same file (fresh process: kagglehub fixes its paths at import time,
    # and an earlier test in this process may have imported it under the real HOME)
    code = (
        "from kagglehub.config import get_kaggle_credentials as g; c = g(); "
        "print(c.username if c else None, c.key if c else None)"
    )
    got = subprocess.run([sys.executable, "-c", code], env={**os.environ}, capture_output=True, text=True, timeout=60)
    assert got.stdout.split() == [K_USER, K_KEY], got.stderr[-500:]


def test_kaggle_honours_kaggle_config_dir_and_env_source(home: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "kcfg"
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("KAGGLE_USERNAME", K_USER)
    monkeypatch.setenv("KAGGLE_KEY", K_KEY)
    r = run(["login", "kaggle"])
    assert r.exit_code == 0, r.stderr
    assert mode(cfg / "kaggle.json") == 0o600 and mode(cfg) == 0o700
    assert not (home / ".kaggle").exists()
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    doc = json.loads(run(["login", "status", "kaggle", "--json"]).stdout)
    row = doc["credentials"][0]
    assert (row["configured"], row["source"], row["origin"], row["username"]) == (
        True, "file", str(cfg / "kaggle.json"), K_USER)


def test_kaggle_from_stdin_and_bad_file(home: Path, tmp_path: Path) -> None:
    r = run(["login", "kaggle", "--from-file", "-"], input=json.dumps({"username": K_USER, "key": K_KEY}))
    assert r.exit_code == 0, r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"username": "x", "kee": K_KEY}))
    r = run(["login", "kaggle", "--from-file", str(bad)])
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: ") and "'key'" in r.stderr and len(r.stderr.splitlines()) == 1


def test_non_tty_without_source_exits_2(home: Path) -> None:
    for args, hint in ((["login", "kaggle"], "KAGGLE_USERNAME"), (["login", "hf"], "--token-stdin")):
        r = run(args, input="")
        assert r.exit_code == 2, args
        assert len(r.stderr.strip().splitlines()) == 1 and hint in r.stderr
        assert r.stdout == ""
    assert not (home / ".kaggle").exists()
    assert not auth.hf_token_path().exists()


# ---- hugging face ---------------------------------------------------------------------------
def test_hf_token_stdin_stored_where_huggingface_hub_reads(home: Path) -> None:
    r = run(["login", "hf", "--token-stdin", "--json"], input=HF_TOKEN + "\n")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    path = home / ".cache" / "huggingface" / "token"
    assert doc["stored"] == str(path) and doc["masked"] == "hf_****WXYZ"
    assert path.read_text() == HF_TOKEN and mode(path) == 0o600
    # huggingface_hub reads the same file (fresh process: its paths are fixed at import time)
    env = {**os.environ}
    got = subprocess.run([sys.executable, "-c", "import huggingface_hub as h; print(h.get_token())"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert got.stdout.strip() == HF_TOKEN


def test_hf_from_env_and_hf_token_path(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "elsewhere" / "tok"))
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    r = run(["login", "hf"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "elsewhere" / "tok").read_text() == HF_TOKEN
    r = run(["login", "status", "hf", "--json"])
    row = json.loads(r.stdout)["credentials"][0]
    assert (row["source"], row["origin"], row["masked"]) == ("env", "HF_TOKEN", "hf_****WXYZ")


# ---- status & checks against the fake services -----------------------------------------------
def test_status_nothing_configured(home: Path) -> None:
    r = run(["login", "status", "--json"])
    assert r.exit_code == 0
    rows = json.loads(r.stdout)["credentials"]
    assert [(x["service"], x["configured"]) for x in rows] == [("kaggle", False), ("hf", False)]
    r = run(["login", "status"])
    assert "gemma login kaggle" in r.stdout and "gemma login hf" in r.stdout


def test_status_check_valid(fake_server: ThreadingHTTPServer, home: Path) -> None:
    assert run(["login", "hf", "--token-stdin"], input=HF_TOKEN).exit_code == 0
    assert run(["login", "kaggle", "--from-file", "-"],
               input=json.dumps({"username": K_USER, "key": K_KEY})).exit_code == 0
    r = run(["login", "status", "--check", "--json"])
    assert r.exit_code == 0, r.stderr
    rows = {x["service"]: x for x in json.loads(r.stdout)["credentials"]}
    assert rows["hf"]["check"]["valid"] and rows["hf"]["check"]["user"] == "alice"
    assert rows["kaggle"]["check"]["valid"] and rows["kaggle"]["check"]["user"] == K_USER
    paths = [p for _, p in fake_server.seen]  # type: ignore[attr-defined]
    assert "/api/whoami-v2" in paths and "/api/v1/api.v1.DiagnosticsService/Hello" in paths
    r = run(["login", "status", "--check"])  # the human table too
    assert r.exit_code == 0 and "alice" in r.stdout


def test_status_check_rejected_exits_1(fake_server: ThreadingHTTPServer, home: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", HF_BAD)
    r = run(["login", "status", "hf", "--check", "--json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["credentials"][0]["check"]["valid"] is False
    monkeypatch.setenv("KAGGLE_USERNAME", K_USER)
    monkeypatch.setenv("KAGGLE_KEY", K_BAD)
    r = run(["login", "status", "kaggle", "--check"])
    assert r.exit_code == 1 and "rejected" in r.stdout


def test_login_check_rejects_and_stores_nothing(fake_server: ThreadingHTTPServer, home: Path) -> None:
    r = run(["login", "hf", "--token-stdin", "--check"], input=HF_BAD)
    assert r.exit_code == 1 and "nothing was stored" in r.stderr
    assert not auth.hf_token_path().exists()
    r = run(["login", "kaggle", "--from-file", "-", "--check"],
            input=json.dumps({"username": K_USER, "key": K_BAD}))
    assert r.exit_code == 1 and not auth.kaggle_json_path().exists()
    r = run(["login", "hf", "--token-stdin", "--check", "--json"], input=HF_TOKEN)
    assert r.exit_code == 0 and json.loads(r.stdout)["check"]["user"] == "alice"


def test_unreachable_network_is_one_line_exit_1(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setenv("KAGGLE_API_ENDPOINT", dead)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    monkeypatch.setenv("KAGGLE_USERNAME", K_USER)
    monkeypatch.setenv("KAGGLE_KEY", K_KEY)
    for svc in ("hf", "kaggle"):
        r = run(["login", "status", svc, "--check"])
        assert r.exit_code == 1, svc
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: cannot reach"), r.stderr
        assert "127.0.0.1" in lines[0]


# ---- logout -----------------------------------------------------------------------------------
def test_logout_removes(home: Path) -> None:
    run(["login", "hf", "--token-stdin"], input=HF_TOKEN)
    run(["login", "kaggle", "--from-file", "-"], input=json.dumps({"username": K_USER, "key": K_KEY}))
    # a stored_tokens entry for the same token (as `hf auth login` writes) goes too
    stored = auth.hf_stored_tokens_path()
    stored.write_text(f"[mine]\nhf_token = {HF_TOKEN}\n\n[other]\nhf_token = hf_other\n")
    r = run(["logout", "hf", "--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout)["removed"] == [str(auth.hf_token_path()), str(stored)]
    assert not auth.hf_token_path().exists()
    assert "[mine]" not in stored.read_text() and "[other]" in stored.read_text()
    r = run(["logout", "kaggle"])
    assert r.exit_code == 0 and "Removed" in r.stdout and "kaggle.json" in r.stdout
    assert not auth.kaggle_json_path().exists()
    r = run(["logout", "kaggle"])
    assert r.exit_code == 0 and "No stored Kaggle credential" in r.stdout
    assert json.loads(run(["login", "status", "--json"]).stdout)["credentials"][0]["configured"] is False


def test_logout_warns_when_env_still_configures(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    r = run(["logout", "hf"])
    assert r.exit_code == 0 and "still configured from env HF_TOKEN" in r.stderr


# ---- require_credentials --------------------------------------------------------------------------
def test_require_credentials(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError) as e:
        auth.require_credentials("gemma_7b_en")
    assert "gemma login kaggle" in e.value.line() and e.value.exit_code == 2
    with pytest.raises(UsageError, match="Kaggle"):
        auth.require_credentials("kaggle://keras/gemma/keras/gemma_2b_en/2")
    with pytest.raises(UsageError) as e:
        auth.require_credentials("hf://google/gemma-3-270m")
    assert "gemma login hf" in e.value.line()
    local = tmp_path / "preset"
    local.mkdir()
    for uri in (str(local), "presets/gemma3_270m", "./gemma_7b_en", "gs://bucket/preset"):
        auth.require_credentials(uri)  # local or other: nothing needed
    monkeypatch.setenv("KAGGLE_USERNAME", K_USER)
    monkeypatch.setenv("KAGGLE_KEY", K_KEY)
    auth.require_credentials("gemma_7b_en")
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    auth.require_credentials("hf://google/gemma-3-270m")


def test_require_credentials_broken_kaggle_json(home: Path) -> None:
    p = home / ".kaggle" / "kaggle.json"
    p.parent.mkdir()
    p.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        auth.require_credentials("gemma_2b_en")


# ---- terminal prompts (a real pty) -----------------------------------------------------------------
def _pty_run(args: list[str], answers: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run `python -m gemma_cli ARGS` on a pseudo-terminal, typing each answer after a prompt."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.execve(sys.executable, [sys.executable, "-m", "gemma_cli", *args], env)
        finally:
            os._exit(127)
    out = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
                if pending and out.rstrip().endswith(b":"):
                    time.sleep(0.1)
                    os.write(fd, pending.pop(0).encode() + b"\r")
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_tty_prompts_hide_the_secret(home: Path) -> None:
    env = {k: v for k, v in os.environ.items()}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    code, text = _pty_run(["login", "hf"], [HF_TOKEN], env)
    assert code == 0, text
    assert HF_TOKEN not in text and "Hugging Face token" in text
    assert auth.hf_token_path().read_text() == HF_TOKEN
    code, text = _pty_run(["login", "kaggle"], [K_USER, K_KEY], env)
    assert code == 0, text
    assert K_KEY not in text and K_USER in text
    assert json.loads(auth.kaggle_json_path().read_text()) == {"username": K_USER, "key": K_KEY}
    assert mode(auth.kaggle_json_path()) == 0o600


# ---- cheap import ----------------------------------------------------------------------------------
def test_cli_import_does_not_load_service_clients() -> None:
    code = ("import sys, gemma_cli.cli; "
            "print(sorted(m for m in ('kagglehub', 'huggingface_hub', 'requests', 'keras', 'jax') "
            "if m in sys.modules))")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert got.stdout.strip() == "[]", got.stderr
