"""Every remote access, bounded: a host answers within seconds, or one line says which did not.

The download libraries retry for half a minute to minutes and log every attempt before they give
up on a host that cannot be reached (huggingface_hub, tfds' downloader: 10 retries with backoff;
a host that accepts and never answers, forever). So no library is asked before a bounded probe
of its host: one HTTP HEAD, the whole exchange (name resolution included, which no socket
timeout covers) within `DEADLINE_S` seconds. A host that does not answer is reported in one line
naming the host, what needed it and what to do, exit 1 (`RuntimeFailure`).

- `KINDS`: the kinds of remote the code reaches (`hf`, `kaggle`, `tfds`, `gcs`), each with its
  endpoint variable (`HF_ENDPOINT`, ...), its offline variable and what to do without it.
- `VERBS`: which verbs may touch which kinds (a dict: a new verb adds one entry, and
  tests/test_remote_matrix.py runs it against every kind it names).
- `check(kind, target)`: a probe, never raising; `require(kind, what, ...)`: the probe, or the
  one-line failure; `check_all`: several probes at once, in one deadline.
- `guard(kind)`: around the library call itself: its retry logging silenced; for tfds, every
  download URL probed first and the download's socket reads bounded.
- `cached(handle)`: whether a download cache already holds a preset (no probe then).
- `GEMMA_OFFLINE=1` (or `HF_HUB_OFFLINE=1` for the Hub): no host is asked; what is not cached
  fails at once.

Imports nothing above `engine/core` but `gemma_cli.errors`.

Example:
    >>> r = head("http://127.0.0.1:9/x")          # nothing listens on port 9
    >>> r.reached, r.error
    (False, 'connection refused')
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gemma_cli.errors import RuntimeFailure

DEADLINE_S = 3.0  # the default; GEMMA_PROBE_TIMEOUT (seconds) sets another
READ_TIMEOUT_S = 60.0  # between two reads of a download that started (tfds)

T = TypeVar("T")


def probe_deadline() -> float:
    """The probe's deadline: `$GEMMA_PROBE_TIMEOUT` seconds when set (a slow link, or a test),
    else `DEADLINE_S`."""
    try:
        v = float(os.environ.get("GEMMA_PROBE_TIMEOUT") or DEADLINE_S)
    except ValueError:
        return DEADLINE_S
    return v if 0 < v <= 60 else DEADLINE_S


# ------------------------------------------------------------------------- the probe ---
class NoAnswer(TimeoutError):
    """The call did not return within its deadline."""


def within(seconds: float, fn: Callable[[], T]) -> T:
    """`fn()` in a daemon thread; its result or exception, or `NoAnswer` after `seconds`."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 — handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True, name="gemma-net-probe")
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise NoAnswer(f"no answer within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def host_of(url: str) -> str:
    """`scheme://host[:port]` of a URL."""
    m = re.match(r"^(\w+://[^/]+)", url)
    return m.group(1) if m else url


def _chain(e: BaseException) -> Iterator[BaseException]:
    """`e`, then what it wraps: `reason`, `__cause__`, `__context__`, exceptions in `args`
    (requests and httpx wrap the socket's error a few levels down)."""
    seen: set[int] = set()
    todo = [e]
    while todo:
        x = todo.pop(0)
        if id(x) in seen or len(seen) > 32:
            continue
        seen.add(id(x))
        yield x
        for nxt in (getattr(x, "reason", None), x.__cause__, x.__context__, *getattr(x, "args", ())):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def reason(e: BaseException) -> str:
    """A short, lower-case reason for a failed connection."""
    chain = list(_chain(e))
    for x in chain:
        if isinstance(x, NoAnswer):
            return str(x)
    for x in chain:
        if isinstance(x, ConnectionRefusedError):
            return "connection refused"
        if isinstance(x, socket.gaierror):
            return "host name not resolved"
    for x in chain:
        if isinstance(x, (TimeoutError, socket.timeout)):
            return "timed out"
    for x in chain:
        if isinstance(x, OSError) and x.strerror:
            return x.strerror.lower()
        text = str(x).lower()
        if "connection refused" in text:
            return "connection refused"
        if "name or service not known" in text or "nodename nor servname" in text or "name resolution" in text:
            return "host name not resolved"
    inner = getattr(e, "reason", e)
    return str(inner)[:120] or type(inner).__name__


@dataclass
class Reply:
    """What a probe got back.

    Args:
        url: str. The URL asked.
        status: int | None. The HTTP status, when the host answered.
        error: str | None. Why it did not answer (`connection refused`, `no answer within 3 s`).
    """

    url: str
    status: int | None = None
    error: str | None = None

    @property
    def reached(self) -> bool:
        return self.status is not None

    @property
    def host(self) -> str:
        return host_of(self.url)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer: report its status


def head(url: str, headers: dict[str, str] | None = None, deadline: float | None = None) -> Reply:
    """One HTTP HEAD to `url`, the whole exchange bounded by `deadline` seconds.

    Honours the usual proxy variables (`https_proxy`, ...). Never raises for network reasons.
    """
    deadline = deadline or probe_deadline()
    opener = urllib.request.build_opener(_NoRedirect())
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "gemma-cli", **(headers or {})})

    def ask() -> int:
        try:
            with opener.open(req, timeout=deadline + 1) as r:  # `within` answers first, by name
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    try:
        return Reply(url, status=within(deadline, ask))
    except (OSError, NoAnswer, ValueError) as e:
        return Reply(url, error=reason(e))


# ------------------------------------------------------------------------- the kinds ---
@dataclass(frozen=True)
class Kind:
    """A kind of remote the code reaches.

    Args:
        name: str. Its key in `KINDS` (`hf`, `kaggle`, `tfds`, `gcs`).
        service: str. How a line names it ("the Hugging Face Hub").
        default: str | None. Its base URL; None when every access names its own (tfds).
        env: str | None. The variable that points it elsewhere (`HF_ENDPOINT`); the probe reads it.
        offline_env: str | None. The library's own offline switch (`HF_HUB_OFFLINE`).
        todo: str. What to do when it cannot be reached.
        loggers: tuple[str, ...]. The loggers that retry noisily; `guard` silences them.
    """

    name: str
    service: str
    default: str | None
    env: str | None
    offline_env: str | None
    todo: str
    loggers: tuple[str, ...] = ()

    def endpoint(self) -> str | None:
        return ((self.env and os.environ.get(self.env)) or self.default or "").rstrip("/") or None


_HTTP_LOGGERS = ("urllib3", "requests", "filelock")

KINDS: dict[str, Kind] = {
    "hf": Kind(
        "hf", "the Hugging Face Hub", "https://huggingface.co", "HF_ENDPOINT", "HF_HUB_OFFLINE",
        "pre-download it (`hf download REPO`) and set HF_HUB_OFFLINE=1, or use a local path",
        ("huggingface_hub", *_HTTP_LOGGERS)),
    "kaggle": Kind(
        "kaggle", "Kaggle", "https://www.kaggle.com", "KAGGLE_API_ENDPOINT", None,
        "download the preset where there is network and set model.preset to its directory",
        ("kagglehub", "kagglesdk", *_HTTP_LOGGERS)),
    "tfds": Kind(
        "tfds", "the dataset's download host", None, None, None,
        "prepare it where there is network (`tfds build NAME`) and copy its data_dir here, or set data.data_dir",
        ("absl", "tensorflow_datasets", *_HTTP_LOGGERS)),
    "gcs": Kind(
        "gcs", "Google Cloud Storage", "https://storage.googleapis.com", "STORAGE_EMULATOR_HOST", None,
        "copy the preset to a local directory and set model.preset to it",
        ("google", "absl", *_HTTP_LOGGERS)),
}

# Which verbs may touch which kinds. A new verb (or kind) adds an entry here, and the matrix test
# (tests/test_remote_matrix.py) runs each verb against each kind it names, so it cannot be added
# without being checked against a host that refuses, one that never answers and one not resolved.
VERBS: dict[str, tuple[str, ...]] = {
    "finetune": ("hf", "kaggle", "gcs", "tfds"),
    "inspect": ("hf", "kaggle", "gcs"),
    "generate": ("hf", "kaggle", "gcs"),
    "eval": ("hf", "kaggle", "gcs"),  # lm-eval task data: `gemma eval --tasks` probes the Hub itself
    "export": ("hf", "kaggle", "gcs"),
    "upload": ("hf", "kaggle"),
    "init": ("hf", "kaggle"),
    "config validate": ("hf", "kaggle"),
    "login status": ("hf", "kaggle"),
    "convert": (),  # `--builtin` assembles an installed package; a GGUF path is local
    "runs": (),
    "config show": (),
    "login": ("hf", "kaggle"),
    "logout": (),
}


def kind_of(handle: str) -> str | None:
    """The kind a preset handle downloads from (`hf://` → hf, `kaggle://` → kaggle, `gs://` →
    gcs), or None (a local path, a bare name: resolve it to its handle first)."""
    for prefix, kind in (("hf://", "hf"), ("kaggle://", "kaggle"), ("gs://", "gcs")):
        if handle.startswith(prefix):
            return kind
    return None


def url_for(kind: str, target: str | None = None) -> str:
    """The URL a probe asks for `target` (a handle, a URL, or None: the kind's endpoint).

    `hf://ORG/REPO` → `$HF_ENDPOINT/ORG/REPO/resolve/main/config.json` (what keras-hub reads
    first), `gs://BUCKET/...` → `$STORAGE_EMULATOR_HOST/BUCKET`, anything else of a kind → its
    endpoint; an `http(s)://` or `ftp://` target is asked as it is.
    """
    if target and re.match(r"^(https?|ftp)://", target):
        return target
    k = KINDS[kind]
    base = k.endpoint()
    if base is None:
        raise ValueError(f"a {kind} probe needs the URL it will download")
    if target and kind == "hf" and target.startswith("hf://"):
        return f"{base}/{target[len('hf://'):].strip('/')}/resolve/main/config.json"
    if target and kind == "gcs" and target.startswith("gs://"):
        return f"{base}/{target[len('gs://'):].split('/', 1)[0]}"
    return base + "/"


def offline(kind: str) -> str | None:
    """The variable that says no host of `kind` may be asked (`GEMMA_OFFLINE`, or the library's
    own, `HF_HUB_OFFLINE`), when one is set; else None."""
    k = KINDS[kind]
    for var in ("GEMMA_OFFLINE", k.offline_env):
        if var and os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


# -------------------------------------------------------------- check and require ---
_ANSWERED: set[str] = set()  # hosts that answered in this process: asked once
_LOCK = threading.Lock()


def check(kind: str, target: str | None = None, timeout: float | None = None,
          headers: dict[str, str] | None = None) -> Reply:
    """Probe `target` of `kind` (see `url_for`) within `timeout` seconds. Never raises for the
    network; a `Reply` with `reached` False says why."""
    reply = head(url_for(kind, target), headers=headers, deadline=timeout)
    if reply.reached:
        with _LOCK:
            _ANSWERED.add(reply.host)
    return reply


def unreachable(kind: str, what: str, reply: Reply, todo: str | None = None) -> RuntimeFailure:
    """The one line for a host that did not answer: the host, what needed it, what to do."""
    k = KINDS[kind]
    fix = f"check the network, a proxy, or {k.env}" if k.env else "check the network or a proxy"
    return RuntimeFailure(f"{what}: cannot reach {k.service} at {reply.host} ({reply.error}); {fix}",
                          hint=todo or k.todo)


def refused_offline(kind: str, what: str, var: str, todo: str | None = None) -> RuntimeFailure:
    k = KINDS[kind]
    return RuntimeFailure(f"{what}: needs {k.service}, and {var} is set (no host is asked) and it is not cached here",
                          hint=todo or k.todo)


def require(kind: str, what: str, *, target: str | None = None, timeout: float | None = None,
            headers: dict[str, str] | None = None, todo: str | None = None, once: bool = False) -> Reply:
    """The probe, or `RuntimeFailure` (exit 1) in one line naming the host and what to do.

    Args:
        kind: str. A key of `KINDS`.
        what: str. What needed it, first on the line (`model.preset: hf://google/gemma-3-270m`).
        target: str | None. The handle or URL (see `url_for`). Defaults to the kind's endpoint.
        timeout: float | None. The whole exchange, name resolution included. Defaults to `probe_deadline()`.
        headers: dict | None. Sent with the HEAD (a token: never printed).
        todo: str | None. What to do instead of the kind's default advice.
        once: bool. Skip the probe when the host already answered in this process.

    Returns the `Reply` of a host that answered (its HTTP status is the caller's to read).
    """
    var = offline(kind)
    if var:
        raise refused_offline(kind, what, var, todo)
    url = url_for(kind, target)
    if once and host_of(url) in _ANSWERED:
        return Reply(url, status=0)
    reply = check(kind, url, timeout=timeout, headers=headers)
    if not reply.reached:
        raise unreachable(kind, what, reply, todo)
    return reply


def check_all(probes: Iterable[tuple[str, str | None]], timeout: float | None = None) -> list[Reply]:
    """Several `check`s at once, all within one `timeout` (a config naming two hosts waits for
    the slower, not their sum)."""
    todo = list(probes)
    if not todo:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(todo)), thread_name_prefix="gemma-probe") as pool:
        return list(pool.map(lambda p: check(p[0], p[1], timeout=timeout), todo))


# ---------------------------------------------------------------------------- cache ---
def cached(handle: str) -> bool:
    """Whether the download cache already holds `handle` (kagglehub's and huggingface_hub's
    own cache folders, by their rules). A bare keras-hub name: resolve it to its handle first."""
    home = Path.home()
    if handle.startswith("kaggle://"):
        parts = handle[len("kaggle://"):].strip("/").split("/")
        if len(parts) < 5:
            return False  # no version: kagglehub asks for the latest one
        root = Path(os.environ.get("KAGGLEHUB_CACHE") or home / ".cache" / "kagglehub")
        return (root / "models" / Path(*parts[:5])).is_dir()
    if handle.startswith("hf://"):
        repo = handle[len("hf://"):].strip("/")
        hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or home / ".cache", "huggingface"),
            "hub")
        return (Path(hub) / f"models--{repo.replace('/', '--')}" / "snapshots").is_dir()
    return False


def require_preset(handle: str, what: str | None = None, timeout: float | None = None) -> None:
    """Before a library downloads preset `handle` (`hf://`, `kaggle://`, `gs://`): nothing when
    it is cached or local, else the probe of its host (asked once per process)."""
    kind = kind_of(handle)
    if kind is None or cached(handle):
        return
    require(kind, what or f"model.preset: {handle}", target=handle, timeout=timeout, once=True)


# ---------------------------------------------------------------------------- guard ---
@dataclass
class Guard:
    """What `guard` saw: the first host that did not answer, to raise in place of the library's
    own (wrapped, retried) error.

    Args:
        kind: str. The kind guarded.
        what: str. What needed it, for the line.
        failure: RuntimeFailure | None. Set when a probe inside the guard failed.
    """

    kind: str
    what: str
    todo: str | None = None
    failure: RuntimeFailure | None = None
    probed: dict[str, Reply] = field(default_factory=dict)

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure


@contextlib.contextmanager
def guard(kind: str, what: str = "", todo: str | None = None) -> Iterator[Guard]:
    """Around a library call that may reach `kind`: its retry logging silenced (restored after).

    For tfds, every URL its downloader opens is probed first (one bounded HEAD per host; a
    failure is kept in `Guard.failure` and the download stops at once instead of retrying), and
    the download's socket reads are bounded (`READ_TIMEOUT_S`): a host that stops answering
    mid-download ends it instead of hanging.

    Example:
        >>> with guard("tfds", "data.name: mnist") as g:
        ...     try:
        ...         builder.download_and_prepare()
        ...     except Exception:
        ...         g.raise_failure()
        ...         raise
    """
    g = Guard(kind, what or KINDS[kind].service, todo)
    saved: list[tuple[logging.Logger, int, bool]] = []
    for name in KINDS[kind].loggers:
        log = logging.getLogger(name)
        saved.append((log, log.level, log.propagate))
        log.setLevel(logging.CRITICAL)
    patches: list[tuple[Any, str, Any]] = []
    if kind == "tfds":
        patches = _guard_tfds(g)
    try:
        yield g
    finally:
        for obj, attr, old in reversed(patches):
            setattr(obj, attr, old)
        for log, level, _ in saved:
            log.setLevel(level)


def _guard_tfds(g: Guard) -> list[tuple[Any, str, Any]]:
    """Probe each URL tfds' downloader opens and bound its reads; returns what to restore.

    tfds (4.9) opens every http(s)/ftp download through `downloader._open_url(url, **kwargs)`
    (kwargs go to `requests.get`), with 10 retries and no timeout: the one place to ask first.
    """
    try:
        from tensorflow_datasets.core.download import downloader
    except ImportError:
        return []
    if not callable(getattr(downloader, "_open_url", None)) or not isinstance(getattr(downloader, "MAX_RETRIES", None), int):
        return []  # another tfds: its logging is still silenced, its downloads not probed
    original = downloader._open_url  # noqa: SLF001
    retries = downloader.MAX_RETRIES

    def open_url(url: str, **kwargs: Any) -> Any:
        host = host_of(url)
        if host not in g.probed:
            if offline("tfds"):
                g.failure = g.failure or refused_offline("tfds", g.what, offline("tfds") or "", g.todo)
            else:
                g.probed[host] = check("tfds", url)
                if not g.probed[host].reached:
                    g.failure = g.failure or unreachable("tfds", g.what, g.probed[host], g.todo)
        if g.failure is not None:
            raise g.failure
        if url.startswith("http"):
            kwargs.setdefault("timeout", (probe_deadline(), READ_TIMEOUT_S))
        return original(url, **kwargs)

    downloader._open_url = open_url  # noqa: SLF001
    downloader.MAX_RETRIES = min(retries, 2)
    return [(downloader, "_open_url", original), (downloader, "MAX_RETRIES", retries)]
