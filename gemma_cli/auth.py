"""Kaggle and Hugging Face credentials: where they live, storing, removing and checking them.

Credentials are kept exactly where the download libraries read them, so that keras-hub,
kagglehub and huggingface_hub find them without this tool:

- Kaggle (kagglehub 1.x): `$KAGGLE_CONFIG_DIR/kaggle.json`, else `~/.kaggle/kaggle.json`,
  `{"username": ..., "key": ...}`. kagglehub looks first at `KAGGLE_API_TOKEN` and
  `~/.kaggle/access_token`, then `KAGGLE_USERNAME` + `KAGGLE_KEY`, then that file.
- Hugging Face (huggingface_hub): the token file `$HF_TOKEN_PATH`, else `$HF_HOME/token`, else
  `$XDG_CACHE_HOME/huggingface/token` (`~/.cache/huggingface/token`). `HF_TOKEN` (or the
  legacy `HUGGING_FACE_HUB_TOKEN`) in the environment comes first.

Paths are resolved from the environment at call time (the libraries read some of them at
import time, which would pin them for the life of the process). Files are written atomically
with mode 0600 in a 0700 directory. Secrets never leave this module except towards the
service that checks them: `Credential.to_dict()` holds at most a masked form.

Checks against the services:
- Hugging Face: `HfApi(endpoint=$HF_ENDPOINT).whoami(token)`.
- Kaggle: the request kagglehub's own `whoami()` makes (POST `api.v1.DiagnosticsService/Hello`,
  answered with `userName`). kagglehub 1.0.2 no longer honours `KAGGLE_API_ENDPOINT` (its
  client only knows fixed hosts chosen by `KAGGLE_API_ENVIRONMENT`, and its test host prints
  request headers, credentials included, on stdout), so the request is made here: to
  `$KAGGLE_API_ENDPOINT/api/v1/...` when that is set (as older kagglehub did), else to the
  host kagglesdk picks.

No heavy imports: kagglehub and huggingface_hub are imported inside the functions that need them.
"""

from __future__ import annotations

import configparser
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_cli.engine.core.credentials import (  # noqa: F401  (re-exported: the lookup half)
    SERVICES,
    Credential,
    clean,
    credential,
    hf_credential,
    hf_stored_tokens_path,
    hf_token_path,
    kaggle_access_token_paths,
    kaggle_config_dir,
    kaggle_credential,
    kaggle_json_path,
    mask,
    parse_kaggle_json,
    preset_service,
    read_text,
    require_credentials,
)
from gemma_cli.errors import RuntimeFailure, UsageError

CHECK_TIMEOUT_S = 3.0  # the whole check, name resolution included (net.probe_deadline(): GEMMA_PROBE_TIMEOUT)


# ---- storing ------------------------------------------------------------------------------
def _write_secret(path: Path, content: str, dir_mode: int | None = 0o700) -> None:
    """Write atomically: a 0600 temp file in the same folder, fsync, rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if dir_mode is not None:
        try:
            os.chmod(path.parent, dir_mode)
        except OSError:
            pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_kaggle(username: str, key: str) -> Path:
    """Store Kaggle credentials where kagglehub reads them; returns the file written."""
    path = kaggle_json_path()
    _write_secret(path, json.dumps({"username": username, "key": key}) + "\n")
    return path


def save_hf_token(token: str) -> Path:
    """Store a Hugging Face token in huggingface_hub's token file (no network call)."""
    path = hf_token_path()
    _write_secret(path, token)
    return path


def remove_kaggle() -> list[Path]:
    """Remove the stored kaggle.json; returns what was removed."""
    path = kaggle_json_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return []
    return [path]


def remove_hf() -> list[Path]:
    """Remove the active token file, and that token's entries in `stored_tokens`."""
    removed: list[Path] = []
    path = hf_token_path()
    token = clean(read_text(path))
    try:
        path.unlink()
        removed.append(path)
    except FileNotFoundError:
        pass
    stored = hf_stored_tokens_path()
    text = read_text(stored)
    if token and text:
        cp = configparser.ConfigParser(interpolation=None)
        try:
            cp.read_string(text)
        except configparser.Error:
            return removed
        names = [s for s in cp.sections() if clean(cp.get(s, "hf_token", fallback=None)) == token]
        if names:
            for s in names:
                cp.remove_section(s)
            buf = io.StringIO()
            cp.write(buf)
            _write_secret(stored, buf.getvalue())
            removed.append(stored)
    return removed


# ---- checking against the service -----------------------------------------------------------
@dataclass
class CheckResult:
    """The answer of a service to a credential.

    Args:
        valid: bool. The service accepted the credential.
        user: str | None. The account name it answered with.
        endpoint: str. The URL asked.
        detail: str. One short line for humans.
    """

    valid: bool
    user: str | None
    endpoint: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"valid": self.valid, "user": self.user, "endpoint": self.endpoint, "detail": self.detail}


def kaggle_hello_url() -> str:
    """The URL of Kaggle's credential check (see the module docstring)."""
    path = "api.v1.DiagnosticsService/Hello"
    override = os.environ.get("KAGGLE_API_ENDPOINT")
    if override:
        return f"{override.rstrip('/')}/api/v1/{path}"
    from kagglesdk.kaggle_env import KaggleEnv, get_endpoint, get_env

    try:
        env = get_env()
    except Exception as e:
        raise UsageError(str(e)) from None
    base = get_endpoint(env)
    return f"{base}/v1/{path}" if env == KaggleEnv.PROD else f"{base}/api/v1/{path}"


def _unreachable(service: str, url: str, e: BaseException, env_var: str) -> RuntimeFailure:
    from gemma_cli import net

    host = re.sub(r"^(\w+://[^/]+).*$", r"\1", url)
    why = net.reason(e)
    return RuntimeFailure(f"cannot reach {service} at {host} ({why})",
                          hint=f"check the network, a proxy, or {env_var}")


def check_kaggle(cred: Credential, timeout: float | None = None) -> CheckResult:
    """Ask Kaggle who `cred` is. RuntimeFailure (exit 1) when Kaggle cannot be reached."""
    import requests

    from gemma_cli import __version__, net

    timeout = timeout or net.probe_deadline()

    url = kaggle_hello_url()
    auth: Any
    if cred.token:
        class _Bearer(requests.auth.AuthBase):
            def __call__(self, r: Any) -> Any:
                r.headers["Authorization"] = f"Bearer {cred.token}"
                return r
        auth = _Bearer()
    else:
        auth = (cred.username or "", cred.key or "")
    try:
        r = net.within(timeout, lambda: requests.post(url, json={}, auth=auth, timeout=timeout + 1,
                                                      headers={"User-Agent": f"gemma-cli/{__version__}"}))
    except (requests.RequestException, net.NoAnswer) as e:
        raise _unreachable("Kaggle", url, e, "KAGGLE_API_ENDPOINT") from None
    try:
        body = r.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if r.ok and body.get("userName"):
        return CheckResult(True, str(body["userName"]), url, f"valid (user {body['userName']})")
    if r.status_code in (401, 403) or body.get("code") in (401, 403):
        return CheckResult(False, None, url, "rejected by Kaggle (invalid username or key)")
    raise RuntimeFailure(f"Kaggle could not validate the credentials at this time (HTTP {r.status_code})",
                         hint="try again later")


def check_hf(cred: Credential, timeout: float | None = None) -> CheckResult:
    """Ask the Hub `whoami` for `cred.token`, at `$HF_ENDPOINT` when set."""
    from huggingface_hub import HfApi

    from gemma_cli import net

    timeout = timeout or net.probe_deadline()

    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/whoami-v2"
    try:
        with net.guard("hf"):
            info = net.within(timeout, lambda: HfApi(endpoint=endpoint).whoami(token=cred.token))
    except Exception as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            return CheckResult(False, None, url, "rejected by the Hub (invalid or revoked token)")
        if status is not None:
            raise RuntimeFailure(f"the Hub answered HTTP {status} to whoami", hint="try again later") from None
        raise _unreachable("the Hugging Face Hub", url, e, "HF_ENDPOINT") from None
    name = info.get("name") if isinstance(info, dict) else None
    return CheckResult(True, name, url, f"valid (user {name})" if name else "valid")


def check(cred: Credential) -> CheckResult:
    return check_kaggle(cred) if cred.service == "kaggle" else check_hf(cred)
