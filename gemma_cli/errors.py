"""One exception family for the whole tool; each class maps to an exit code.

Exit codes: 0 ok, 1 runtime failure, 2 usage or config error, 130 interrupted.

Libraries raise their own exceptions for bad input and a broken environment (a file that is
not JSON, a truncated HDF5 file, a repository the Hub does not have, a host that does not
answer). `translate(e, path=..., key=...)` turns the ones known to come from the user or the
environment into this family, with the file, key or line and what to do; the error boundary
of every verb applies it, and engine code that knows which file it was reading wraps the read
in `reading(path)` so that the file is named. Anything else is a bug and keeps its type.
Nothing here imports the libraries: exceptions are recognised by class and module name.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class GemmaError(Exception):
    """Base of every error the CLI knows how to report in one line.

    Args:
        message: str. The one line shown after `Error: `.
        hint: str | None. An optional second sentence saying what to do.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(GemmaError):
    """Bad input from the user: arguments, files, config keys. Exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A run config that does not validate. Carries every problem of the file.

    Args:
        problems: list[str]. One line each, `file:line: key: what is wrong`.
    """

    def __init__(self, problems: list[str], hint: str | None = None):
        self.problems = list(problems)
        super().__init__(self.problems[0] if self.problems else "invalid config", hint)

    def line(self) -> str:
        return "\n".join(self.problems)


class RuntimeFailure(GemmaError):
    """Something failed while running (diverged loss, I/O, network). Exit code 1."""

    exit_code = 1


class Interrupted(GemmaError):
    """Stopped by a signal after saving what could be saved. Exit code 130."""

    exit_code = 130


class PreflightError(GemmaError):
    """What the checks before loading anything found (`gemma_cli.preflight`), all at once.

    Exit code 2 when any problem is bad input, 1 when all are the environment's (a host that
    cannot be reached).

    Args:
        problems: list[str]. One line each, `file:line: key: what to do`; a problem with an
            `exit_code` attribute of 1 is the environment's.
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(self.problems[0] if self.problems else "preflight failed")
        self.exit_code = 1 if self.problems and all(getattr(p, "exit_code", 2) == 1 for p in self.problems) else 2

    def line(self) -> str:
        return "\n".join(self.problems)


# ---------------------------------------------------------------- library exceptions ---
def _names(e: BaseException) -> set[str]:
    return {c.__name__ for c in type(e).__mro__}


def _from(e: BaseException, *modules: str) -> bool:
    """Whether a class of `e` comes from one of `modules` (top-level names; a trailing digit,
    as in httpx2, is the same library)."""
    return any(c.__module__.split(".")[0].rstrip("0123456789") in modules for c in type(e).__mro__)


def _first(e: BaseException, limit: int = 240) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line[:limit]


def _host(e: BaseException) -> str | None:
    """The scheme://host[:port] an HTTP library exception was about, if it says."""
    def attr(obj: Any, name: str) -> Any:
        try:  # httpx raises RuntimeError for an unset .request
            return getattr(obj, name, None)
        except Exception:  # noqa: BLE001
            return None

    for obj in (attr(e, "request"), attr(attr(e, "response"), "request")):
        url = attr(obj, "url")
        if url is not None:
            m = re.match(r"^(\w+://[^/]+)", str(url))
            if m:
                return m.group(1)
    m = re.search(r"(https?://[^/\s'\"]+)", str(e))
    return m.group(1) if m else None


def _status(e: BaseException) -> int | None:
    try:
        resp = getattr(e, "response", None)
    except Exception:  # noqa: BLE001
        return None
    code = getattr(resp, "status_code", None) or getattr(resp, "status", None)
    return code if isinstance(code, int) else None


def _where(path: Any, key: str | None) -> str:
    parts = [p for p in (str(path) if path else None, key) if p]
    return ": ".join(parts) + ": " if parts else ""


_NET = ("ConnectionError", "ConnectError", "ConnectTimeout", "ReadTimeout", "Timeout", "TimeoutException",
        "NewConnectionError", "MaxRetryError", "NameResolutionError", "ProxyError", "RemoteDisconnected")


def is_oom(e: BaseException) -> bool:
    """Whether `e` is an allocation that failed: XLA's RESOURCE_EXHAUSTED (on any backend; on
    CPU when the host runs out), or Python's MemoryError."""
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return bool(_names(e) & {"JaxRuntimeError", "XlaRuntimeError"}) and (
        "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower())


def oom_device(e: BaseException) -> str:
    """The device an out-of-memory message names (`TPU_0`, `cuda:0`), or "a device"."""
    m = re.search(r"\b((?:cpu|gpu|cuda|tpu|TPU|CPU|GPU)[_:]?\s?\d+)", str(e))
    return m.group(1) if m else "a device"


OOM_LEVERS = ("train.remat=blocks, train.loss_chunk=256, layout.rules=fsdp, a smaller data.batch_size with "
              "optimizer.gradient_accumulation_steps, a smaller data.sequence_length")


def translate(e: BaseException, path: Any = None, key: str | None = None) -> GemmaError | None:
    """Our error for a library exception caused by input or environment, else None.

    Args:
        e: BaseException. What a library raised.
        path: str | Path | None. The file being read, when the caller knows it (the exception
            often does not say: h5py, safetensors, json).
        key: str | None. The config key or option that named the file.

    Example:
        >>> translate(json.JSONDecodeError("Expecting value", "{", 1), path="state.json").message
        'state.json:1: not valid JSON: Expecting value (column 2)'
    """
    if isinstance(e, GemmaError):
        return e
    if is_oom(e):  # the trainer answers with its plan (engine/plan/oom.py); this is the rest
        return RuntimeFailure(f"out of memory on {oom_device(e)} ({_first(e, 160)})",
                              hint=f"try {OOM_LEVERS}; check a change first with: gemma inspect CONFIG --device SIZE")
    names = _names(e)
    at = _where(path, key)
    # ---- JSON / YAML: the line is in the exception
    if "JSONDecodeError" in names:
        where = f"{path}:{e.lineno}: " if path else f"line {e.lineno}: "  # type: ignore[attr-defined]
        return UsageError(f"{where}{key + ': ' if key else ''}not valid JSON: {e.msg} (column {e.colno})",  # type: ignore[attr-defined]
                          hint="fix the file, or re-create it")
    if _from(e, "yaml") and "YAMLError" in names:
        mark = getattr(e, "problem_mark", None)
        name = path or (mark.name if mark is not None and not str(mark.name).startswith("<") else None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or _first(e)
        return UsageError(f"{name or '<yaml>'}{line}: {key + ': ' if key else ''}not valid YAML: {problem}")
    # ---- file formats whose readers do not name the file
    if _from(e, "safetensors") and "SafetensorError" in names:
        return UsageError(f"{at}not a readable safetensors file ({_first(e)})",
                          hint="the file is damaged or cut short: copy or export it again")
    if _from(e, "zipfile") or "BadZipFile" in names:
        return UsageError(f"{at}not a readable .npz/zip file ({_first(e)})",
                          hint="the file is damaged or cut short: copy or write it again")
    if isinstance(e, OSError) and str(e).startswith(("Unable to open file", "Unable to synchronously open file",
                                                      "Unable to read", "Unable to synchronously")):
        # h5py: OSError without errno/filename; the reason is in parentheses
        reason = re.search(r"\((.*)\)\s*$", str(e))
        m = re.search(r"name = '([^']+)'", str(e))
        where = f"{m.group(1)}: " if m and not path else at
        if getattr(e, "errno", None) == errno.ENOENT:
            return UsageError(f"{where}no such file")
        return UsageError(f"{where}not a readable HDF5 file ({reason.group(1) if reason else _first(e)})",
                          hint="the file is damaged or cut short (a crash while writing, an incomplete copy)")
    # ---- Hugging Face Hub
    if _from(e, "huggingface_hub"):
        host = _host(e)
        if "GatedRepoError" in names or _status(e) in (401, 403):
            return UsageError(f"{at}the Hugging Face Hub refused access ({_first(e, 160)})",
                              hint="run `gemma login hf` with a token whose account accepted the model's license")
        if "RepositoryNotFoundError" in names:
            return UsageError(f"{at}the Hugging Face Hub has no such repository (or it is private)",
                              hint="check the hf://owner/name, or run `gemma login hf` for a private one")
        if "RevisionNotFoundError" in names:
            return UsageError(f"{at}no such revision on the Hugging Face Hub ({_first(e, 160)})")
        if "OfflineModeIsEnabled" in names:
            return RuntimeFailure(f"{at}the Hugging Face Hub is off (HF_HUB_OFFLINE is set)",
                                  hint="unset HF_HUB_OFFLINE, or use a local preset directory")
        if "LocalEntryNotFoundError" in names or any(n in names for n in _NET):
            # not in the local cache, and the Hub could not be asked
            return RuntimeFailure(f"{at}cannot reach the Hugging Face Hub{' at ' + host if host else ''}",
                                  hint="check the network, a proxy, or HF_ENDPOINT")
        if "EntryNotFoundError" in names or "RemoteEntryNotFoundError" in names:
            return UsageError(f"{at}the repository has no such file ({_first(e, 160)})",
                              hint="is it a keras-hub or transformers checkpoint?")
        if "HfHubHTTPError" in names:
            return RuntimeFailure(f"{at}the Hugging Face Hub answered HTTP {_status(e)} ({_first(e, 160)})",
                                  hint="try again later")
    # ---- Kaggle
    if _from(e, "kagglehub", "kagglesdk"):
        status = _status(e)
        if names & {"UnauthenticatedError", "CredentialError"} or status in (401, 403):
            return UsageError(f"{at}Kaggle refused access ({_first(e, 160)})",
                              hint="run `gemma login kaggle`, and accept the model's license on kaggle.com")
        if "NotFoundError" in names or status == 404:
            return UsageError(f"{at}Kaggle has no such model ({_first(e, 160)})",
                              hint="check the preset name or kaggle://owner/model/keras/variation")
        if names & {"DataCorruptionError"}:
            return RuntimeFailure(f"{at}a Kaggle download arrived damaged ({_first(e, 160)})", hint="run the command again")
        if names & {"KaggleApiHTTPError", "BackendError"}:
            return RuntimeFailure(f"{at}Kaggle answered with an error ({_first(e, 160)})", hint="try again later")
    # ---- tensorflow_datasets
    if _from(e, "tensorflow_datasets"):
        if "DatasetNotFoundError" in names:
            return UsageError(f"{key or 'data.name'}: tfds has no such dataset ({_first(e, 200)})",
                              hint="see `tfds.list_builders()` or the tfds catalog")
        if "NonMatchingChecksumError" in names:
            return RuntimeFailure(f"{at}a tfds download did not match its checksum ({_first(e, 160)})",
                                  hint="run again; behind a proxy, download with `tfds build` elsewhere")
    if isinstance(e, AssertionError) and "download_and_prepare" in str(e):
        return UsageError(f"{key or 'data.name'}: the tfds dataset is not prepared ({_first(e, 200)})",
                          hint="run `tfds build NAME` on a machine with network, or set data.data_dir")
    # ---- network, any HTTP client
    if "URLError" in names and _from(e, "urllib"):
        reason = getattr(e, "reason", None)
        why = (getattr(reason, "strerror", None) or str(reason or _first(e))).lower()
        return RuntimeFailure(f"{at}cannot reach {_host(e) or 'a download host'} ({why})",
                              hint="check the network or a proxy")
    if any(n in names for n in _NET) and (_from(e, "requests", "urllib3", "httpx", "httpcore", "urllib")
                                          or isinstance(e, OSError)):
        host = _host(e)
        return RuntimeFailure(f"{at}cannot reach {host or 'the network'} ({_first(e, 120)})",
                              hint="check the network or a proxy")
    # ---- the file system
    if isinstance(e, OSError) and e.errno is not None:
        name = e.filename or path
        where = f"{name}: " if name else at
        code = e.errno
        if code == errno.ENOENT:
            return UsageError(f"{where}no such file or directory")
        if code in (errno.EACCES, errno.EPERM):
            return UsageError(f"{where}permission denied", hint="check its permissions, or choose another location")
        if code == errno.EROFS:
            return UsageError(f"{where}read-only file system", hint="choose a writable location")
        if code == errno.EISDIR:
            return UsageError(f"{where}is a directory, not a file")
        if code == errno.ENOTDIR:
            return UsageError(f"{where}a part of the path is a file, not a directory")
        if code == errno.EEXIST:
            return UsageError(f"{where}already exists")
        if code in (errno.ENOSPC, errno.EDQUOT):
            return RuntimeFailure(f"{where}no space left on the device", hint="free space or choose another location")
        if code in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT):
            return RuntimeFailure(f"{where}cannot reach the host ({e.strerror})", hint="check the network or a proxy")
        return RuntimeFailure(f"{where}{e.strerror or _first(e)}")
    return None


@contextmanager
def reading(path: str | Path, key: str | None = None) -> Iterator[None]:
    """Translate what reading `path` raises (see `translate`), naming the file.

    Example:
        >>> with reading(ckpt / "adapter.lora.h5"):
        ...     backbone.load_lora_weights(str(ckpt / "adapter.lora.h5"))
    """
    try:
        yield
    except GemmaError:
        raise
    except Exception as e:
        t = translate(e, path=path, key=key)
        if t is None:
            raise
        raise t from None
