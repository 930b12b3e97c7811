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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemma_cli.errors import RuntimeFailure, UsageError

SERVICES = ("kaggle", "hf")
CHECK_TIMEOUT_S = 3.0  # the whole check, name resolution included (gemma_cli.net.within)


# ---- paths ---------------------------------------------------------------------------------
def kaggle_config_dir() -> Path:
    """The folder kagglehub reads `kaggle.json` from (`KAGGLE_CONFIG_DIR`, else `~/.kaggle`)."""
    env = os.environ.get("KAGGLE_CONFIG_DIR")
    return Path(env).expanduser() if env else Path("~/.kaggle").expanduser()


def kaggle_json_path() -> Path:
    return kaggle_config_dir() / "kaggle.json"


def kaggle_access_token_paths() -> list[Path]:
    """New-style Kaggle API token files; kagglesdk reads them from `~/.kaggle` only."""
    home = Path("~/.kaggle").expanduser()
    return [home / "access_token", home / "access_token.txt"]


def hf_token_path() -> Path:
    """The token file huggingface_hub reads (same rules as `huggingface_hub.constants`)."""
    explicit = os.environ.get("HF_TOKEN_PATH")
    if explicit:
        return Path(os.path.expandvars(os.path.expanduser(explicit)))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface",
    )
    return Path(os.path.expandvars(os.path.expanduser(home))) / "token"


def hf_stored_tokens_path() -> Path:
    return hf_token_path().parent / "stored_tokens"


# ---- what is configured --------------------------------------------------------------------
@dataclass
class Credential:
    """One service's credential as the download libraries will find it.

    Args:
        service: str. `kaggle` or `hf`.
        configured: bool. Whether a usable credential was found.
        source: str | None. Where from: `env`, `file` or None.
        origin: str | None. The env var names or the file path it came from.
        username: str | None. The Kaggle username (not a secret). Defaults to None.
        masked: str | None. At most a masked form of the secret, e.g. `hf_****abcd`.
        problem: str | None. Why a present credential is unusable (e.g. a broken file).
    """

    service: str
    configured: bool
    source: str | None = None
    origin: str | None = None
    username: str | None = None
    masked: str | None = None
    problem: str | None = None
    # the secret itself: kept out of repr() and to_dict()
    key: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "service": self.service,
            "configured": self.configured,
            "source": self.source,
            "origin": self.origin,
            "username": self.username,
            "masked": self.masked,
        }
        if self.problem:
            d["problem"] = self.problem
        return d


def mask(secret: str | None) -> str | None:
    """`hf_abcdefgh1234` → `hf_****1234`; short secrets are fully masked."""
    if not secret:
        return None
    if len(secret) < 16:
        return "****"
    prefix = secret[:3] if secret.startswith("hf_") else ""
    return f"{prefix}****{secret[-4:]}"


def clean(value: str | None) -> str | None:
    """Strip newlines and spaces; None for empty."""
    if value is None:
        return None
    return value.replace("\r", "").replace("\n", "").strip() or None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def parse_kaggle_json(text: str, where: str) -> tuple[str, str]:
    """(username, key) from a kaggle.json text; UsageError naming `where`, never the content."""
    try:
        data = json.loads(text)
    except ValueError:
        raise UsageError(f"{where} is not valid JSON", hint='expected {"username": ..., "key": ...}') from None
    if not isinstance(data, dict):
        raise UsageError(f"{where} is not a JSON object", hint='expected {"username": ..., "key": ...}')
    username, key = clean(str(data.get("username") or "")), clean(str(data.get("key") or ""))
    missing = [k for k, v in (("username", username), ("key", key)) if not v]
    if missing:
        raise UsageError(f"{where} has no {' or '.join(repr(m) for m in missing)}",
                         hint='expected {"username": ..., "key": ...}')
    return username, key  # type: ignore[return-value]


def kaggle_credential() -> Credential:
    """The Kaggle credential kagglehub will use, in kagglehub's order of precedence."""
    api_token = clean(os.environ.get("KAGGLE_API_TOKEN"))
    if api_token:
        as_path = Path(api_token).expanduser()
        if as_path.is_file():
            return Credential("kaggle", bool(clean(_read_text(as_path))), "file", str(as_path),
                              masked="****", token=clean(_read_text(as_path)))
        return Credential("kaggle", True, "env", "KAGGLE_API_TOKEN", masked=mask(api_token), token=api_token)
    for p in kaggle_access_token_paths():
        t = clean(_read_text(p))
        if t:
            return Credential("kaggle", True, "file", str(p), masked=mask(t), token=t)
    user, key = clean(os.environ.get("KAGGLE_USERNAME")), clean(os.environ.get("KAGGLE_KEY"))
    if user and key:
        return Credential("kaggle", True, "env", "KAGGLE_USERNAME+KAGGLE_KEY", username=user, key=key)
    path = kaggle_json_path()
    text = _read_text(path)
    if text is not None:
        try:
            user, key = parse_kaggle_json(text, str(path))
        except UsageError as e:
            return Credential("kaggle", False, "file", str(path), problem=e.message)
        return Credential("kaggle", True, "file", str(path), username=user, key=key)
    return Credential("kaggle", False)


def hf_credential() -> Credential:
    """The Hugging Face token huggingface_hub will use (env first, then the token file)."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        t = clean(os.environ.get(name))
        if t:
            return Credential("hf", True, "env", name, masked=mask(t), token=t)
    path = hf_token_path()
    t = clean(_read_text(path))
    if t:
        return Credential("hf", True, "file", str(path), masked=mask(t), token=t)
    return Credential("hf", False)


def credential(service: str) -> Credential:
    return kaggle_credential() if service == "kaggle" else hf_credential()


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
    token = clean(_read_text(path))
    try:
        path.unlink()
        removed.append(path)
    except FileNotFoundError:
        pass
    stored = hf_stored_tokens_path()
    text = _read_text(stored)
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
    why = str(e) if isinstance(e, net.NoAnswer) else type(e).__name__
    return RuntimeFailure(f"cannot reach {service} at {host} ({why})",
                          hint=f"check the network, a proxy, or {env_var}")


def check_kaggle(cred: Credential, timeout: float = CHECK_TIMEOUT_S) -> CheckResult:
    """Ask Kaggle who `cred` is. RuntimeFailure (exit 1) when Kaggle cannot be reached."""
    import requests

    from gemma_cli import __version__

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
    from gemma_cli import net

    try:
        r = net.within(timeout, lambda: requests.post(url, json={}, auth=auth, timeout=timeout,
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


def check_hf(cred: Credential, timeout: float = CHECK_TIMEOUT_S) -> CheckResult:
    """Ask the Hub `whoami` for `cred.token`, at `$HF_ENDPOINT` when set."""
    from huggingface_hub import HfApi

    from gemma_cli import net

    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/whoami-v2"
    try:
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


# ---- for the verbs that load presets ----------------------------------------------------------
_BARE_PRESET = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def preset_service(uri: str) -> str | None:
    """Which service a preset downloads from: `kaggle`, `hf`, or None (local or other)."""
    u = uri.strip()
    if u.startswith("kaggle://"):
        return "kaggle"
    if u.startswith("hf://"):
        return "hf"
    if "://" in u or os.sep in u or "/" in u or u.startswith((".", "~")) or os.path.exists(u):
        return None
    return "kaggle" if _BARE_PRESET.fullmatch(u) else None


def require_credentials(uri: str) -> None:
    """Raise UsageError (exit 2) when `uri` needs a login that is not configured.

    `kaggle://...` and bare keras-hub preset names (e.g. `gemma_7b_en`, downloaded from Kaggle)
    need Kaggle credentials; `hf://...` needs a Hugging Face token. Local directories and other
    schemes need nothing. No network call.

    Example:
        >>> require_credentials("presets/gemma3_270m")  # local: no-op
    """
    service = preset_service(uri)
    if service is None:
        return
    cred = credential(service)
    if cred.configured:
        return
    if service == "kaggle":
        what = cred.problem or "no Kaggle credentials are configured"
        raise UsageError(f"{uri} downloads from Kaggle but {what}",
                         hint="run `gemma login kaggle`, or set KAGGLE_USERNAME and KAGGLE_KEY")
    raise UsageError(f"{uri} downloads from the Hugging Face Hub but no token is configured",
                     hint="run `gemma login hf`, or set HF_TOKEN")
