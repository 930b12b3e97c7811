"""Where Kaggle and Hugging Face credentials live and whether one is configured (no network).

The lookup half of `gemma_cli.auth` (which stores, removes and checks credentials for `gemma
login`): the engine needs it to say "run `gemma login`" before a download, and must not
import the CLI's modules. Paths are resolved from the environment at call time; secrets never
leave a `Credential` except in masked form.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemma_cli.errors import UsageError

SERVICES = ("kaggle", "hf")

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


def read_text(path: Path) -> str | None:
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
            return Credential("kaggle", bool(clean(read_text(as_path))), "file", str(as_path),
                              masked="****", token=clean(read_text(as_path)))
        return Credential("kaggle", True, "env", "KAGGLE_API_TOKEN", masked=mask(api_token), token=api_token)
    for p in kaggle_access_token_paths():
        t = clean(read_text(p))
        if t:
            return Credential("kaggle", True, "file", str(p), masked=mask(t), token=t)
    user, key = clean(os.environ.get("KAGGLE_USERNAME")), clean(os.environ.get("KAGGLE_KEY"))
    if user and key:
        return Credential("kaggle", True, "env", "KAGGLE_USERNAME+KAGGLE_KEY", username=user, key=key)
    path = kaggle_json_path()
    text = read_text(path)
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
    t = clean(read_text(path))
    if t:
        return Credential("hf", True, "file", str(path), masked=mask(t), token=t)
    return Credential("hf", False)


def credential(service: str) -> Credential:
    return kaggle_credential() if service == "kaggle" else hf_credential()



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
