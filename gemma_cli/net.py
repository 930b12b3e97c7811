"""Network probes with a deadline: an answer, or one line saying which host did not answer.

The download libraries retry for half a minute and log every attempt before they give up on a
host that cannot be reached. The checks before a run ask once, with a bound on the whole
exchange (name resolution included, which no socket timeout covers), so that an unreachable
host is reported in seconds and by name.

Example:
    >>> r = head("http://127.0.0.1:9/x")          # nothing listens on port 9
    >>> r.reached, r.error
    (False, 'connection refused')
"""

from __future__ import annotations

import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

DEADLINE_S = 3.0

T = TypeVar("T")


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


def reason(e: BaseException) -> str:
    """A short, lower-case reason for a failed connection."""
    inner = getattr(e, "reason", e)
    if isinstance(inner, NoAnswer) or isinstance(e, NoAnswer):
        return str(inner if isinstance(inner, NoAnswer) else e)
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    if isinstance(inner, socket.gaierror):
        return "host name not resolved"
    if isinstance(inner, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror.lower()
    return str(inner)[:120] or type(inner).__name__


@dataclass
class Reply:
    """What a probe got back.

    Args:
        url: str. The URL asked.
        status: int | None. The HTTP status, when the host answered.
        error: str | None. Why it did not answer (`connection refused`, `no answer within 4 s`).
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


def head(url: str, headers: dict[str, str] | None = None, deadline: float = DEADLINE_S) -> Reply:
    """One HTTP HEAD to `url`, the whole exchange bounded by `deadline` seconds.

    Honours the usual proxy variables (`https_proxy`, ...). Never raises for network reasons.
    """
    opener = urllib.request.build_opener(_NoRedirect())
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "gemma-cli", **(headers or {})})

    def ask() -> int:
        try:
            with opener.open(req, timeout=deadline) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    try:
        return Reply(url, status=within(deadline, ask))
    except (OSError, NoAnswer, ValueError) as e:
        return Reply(url, error=reason(e))
