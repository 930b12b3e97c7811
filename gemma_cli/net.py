"""Network probes with a deadline, for the CLI side (auth, preflight, the verbs).

The probe, the kinds of remote and the verbs' registry live in the engine's lowest room,
`gemma_cli.engine.core.remote`, so that the engine's own remote accesses (keras-hub presets,
tfds downloads) go through the same code; this module re-exports what the CLI uses.

Example:
    >>> r = head("http://127.0.0.1:9/x")          # nothing listens on port 9
    >>> r.reached, r.error
    (False, 'connection refused')
"""

from __future__ import annotations

from gemma_cli.engine.core.remote import (  # noqa: F401  (re-exported)
    DEADLINE_S,
    KINDS,
    VERBS,
    Guard,
    Kind,
    NoAnswer,
    Reply,
    cached,
    check,
    check_all,
    guard,
    head,
    host_of,
    kind_of,
    offline,
    probe_deadline,
    reason,
    require,
    require_preset,
    unreachable,
    url_for,
    within,
)
