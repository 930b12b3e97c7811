"""The collectives a compiled step runs, read from its optimized HLO text: what each mesh costs
in communication before the job runs.

`collectives(hlo)` lists every all-reduce, all-gather, reduce-scatter, all-to-all and
collective-permute (sync or the `-start` half of an async pair) with its payload and group
size; `traffic(ops)` sums them per kind into bytes per device per step, counted as a ring
moves them: an all-reduce of S bytes over g devices sends 2·S·(g−1)/g per device, an
all-gather (S = its result) and a reduce-scatter (S = its operand) S·(g−1)/g, an all-to-all
S·(g−1)/g, a collective-permute S. Ops inside loops count once (keras-hub's backbones do not
loop over layers).

Example:
    >>> ops = collectives(compiled.as_text())
    >>> traffic(ops)["total"]["bytes_per_device"]
    1048576
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_DTYPE_BYTES = {
    "pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
    "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
    "f32": 4, "s32": 4, "u32": 4,
    "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16,
}
# `%name = <result shape> <kind>(<operands>), ..., replica_groups=...`
_OP = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.-]+\s*=\s*(?P<result>.+?)\s+(?P<kind>" + "|".join(KINDS) + r")(?P<start>-start)?\((?P<args>.*)$"
)
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+(?:fn)?)?)\[([\d,]*)\]")


@dataclass(frozen=True)
class Collective:
    """One collective of a compiled program.

    Args:
        kind: str. One of KINDS.
        result_bytes: int. Bytes of its result per device (for an async `-start`, the
            destination buffers only).
        operand_bytes: int. Bytes of its operands per device (0 when the HLO text does not
            print operand shapes, as jax ≥ 0.10's optimized HLO does not).
        group: int. Devices in each of its groups (0: unknown).
    """

    kind: str
    result_bytes: int
    operand_bytes: int
    group: int

    @property
    def bytes_per_device(self) -> int:
        """Bytes one device sends for it, as a ring moves them."""
        g = self.group
        if g <= 1:
            return 0 if g == 1 else self.result_bytes
        if self.kind == "all-reduce":
            return 2 * self.result_bytes * (g - 1) // g
        if self.kind == "reduce-scatter":  # the operand is g results (newer HLO omits operand shapes)
            return (self.operand_bytes or self.result_bytes * g) * (g - 1) // g
        if self.kind == "collective-permute":
            return self.result_bytes
        return self.result_bytes * (g - 1) // g  # all-gather, all-to-all


def _bytes(text: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(text):
        size = _DTYPE_BYTES.get(dtype)
        if size is None:
            continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * size
    return total


def _group(attrs: str, devices: int | None) -> int:
    # mesh form (jax ≥ 0.10): replica_groups=mesh['axis_0'=4,'axis_1'=2], device_ids=(...) {'axis_0'}
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]", attrs)
    if m:
        sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
        over = re.search(r"\{((?:\s*'[^']+'\s*,?)*)\}", attrs[m.end():])
        if over is not None:
            n = 1
            for name in re.findall(r"'([^']+)'", over.group(1)):
                n *= sizes.get(name, 1)
            return n
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)  # iota form: [groups, size]<=[...]
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{(\{[^}]*\})", attrs)  # explicit: {{0,1,2,3},{4,5,6,7}}
    if m:
        return len([x for x in m.group(1).strip("{}").split(",") if x.strip()])
    if "source_target_pairs=" in attrs:  # collective-permute: point to point
        return 2
    return devices or 0  # replica_groups={} : every device


def _split_operands(args: str) -> tuple[str, str]:
    """(operands, attributes) of `args` = `op1, op2), attr=..., ...` (nesting-aware)."""
    depth = 1
    for i, ch in enumerate(args):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
            if depth == 0:
                return args[:i], args[i + 1 :]
    return args, ""


def collectives(hlo: str, devices: int | None = None) -> list[Collective]:
    """Every collective in the optimized HLO text `hlo` (`compiled.as_text()`).

    Args:
        hlo: str. The module's text.
        devices: int | None. Devices of the program, for `replica_groups={}` (all of them).
    """
    ops: list[Collective] = []
    for line in hlo.splitlines():
        m = _OP.match(line)
        if not m:
            continue
        operands, attrs = _split_operands(m.group("args"))
        result = m.group("result")
        if m.group("start") and result.startswith("("):
            # an async start returns (operands..., results..., [scratch]): keep the results
            parts = _top_level(result[1:-1])
            n_in = len(_top_level(operands))
            result = ", ".join(parts[n_in : 2 * n_in] or parts[-1:])
        ops.append(Collective(m.group("kind"), _bytes(result), _bytes(operands), _group(attrs, devices)))
    return ops


def _top_level(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def traffic(ops: list[Collective]) -> dict[str, Any]:
    """Per kind and in total: `count`, `bytes_per_device` (as a ring moves them) and
    `payload_bytes` (the results' bytes per device)."""
    out: dict[str, Any] = {}
    for kind in (*KINDS, "total"):
        sel = [o for o in ops if kind in ("total", o.kind)]
        out[kind] = {
            "count": len(sel),
            "bytes_per_device": sum(o.bytes_per_device for o in sel),
            "payload_bytes": sum(o.result_bytes for o in sel),
        }
    return out
