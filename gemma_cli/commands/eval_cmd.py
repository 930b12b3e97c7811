"""`gemma eval [TARGET ...] --data FILE [--reward SPEC ...]` and `--tasks` (lm-evaluation-harness)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from gemma_cli.commands.common import DebugOpt, JsonOpt, QuietOpt, boundary, make_output
from gemma_cli.errors import UsageError

TargetsArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Runs, presets or run configs to compare (several: side by side), then any key=value "
        "overrides for all of them. Omitted: the current run (as for generate).",
        show_default=False,
        metavar="[TARGET]... [KEY=VALUE]...",
    ),
]


def eval_(
    targets_: TargetsArg = None,
    data: Annotated[str | None, typer.Option("--data", help="Eval records: JSONL/CSV/Parquet with `messages`, "
                                             "`prompt` (+ `completion` or other fields) or `prompt`/`chosen`/`rejected`.")] = None,
    reward: Annotated[list[str] | None, typer.Option("--reward", help="A reward: contains, exact, regex:PATTERN, json, "
                                                     "math, length:N, or path/file.py:function (repeatable).")] = None,
    pass_threshold: Annotated[float, typer.Option("--pass-threshold", help="A record passes when every reward reaches this.")] = 1.0,
    no_generate: Annotated[bool, typer.Option("--no-generate", help="Only likelihood (loss, perplexity, preference accuracy).")] = False,
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help="Prompt plain `prompt` records in the chat format "
                                              "(--chat), or pairs and preference records as text (--no-chat).")] = None,
    out_file: Annotated[str | None, typer.Option("--out", help="Write one JSON line per record and target here.")] = None,
    tasks: Annotated[str | None, typer.Option("--tasks", help="lm-evaluation-harness tasks, NAME[,NAME] (needs the [eval] extra).")] = None,
    include_path: Annotated[str | None, typer.Option("--include-path", help="A folder of lm-eval task YAML files.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N records (per task).")] = None,
    num_fewshot: Annotated[int | None, typer.Option("--num-fewshot", min=0, help="lm-eval few-shot examples.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1, help="generate.max_new_tokens: tokens after the prompt.")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", min=1, help="generate.max_length: total tokens incl. the prompt (wins).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Records per batch (rounded up to the batch axis).")] = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Did the fine-tune get better? Score models on held-out data, side by side.

    Completions are generated (the config's generate section; greedy by default) and scored by
    each --reward; reference answers get a teacher-forced loss and perplexity; preference
    files (prompt/chosen/rejected) a preference accuracy and margin. --tasks runs
    lm-evaluation-harness tasks with gemma's engine as the model.

    Examples:

      gemma eval presets/gemma3_270m runs/demo --data data/demo_heldout.jsonl --reward contains

      gemma eval runs/demo --data heldout.jsonl --reward rewards.py:correct --out scored.jsonl

      gemma eval runs/demo --data prefs.jsonl --no-generate --json

      gemma eval runs/demo --tasks my_task --include-path tasks/ --limit 50
    """
    out = make_output(json_, quiet, debug)
    with boundary(out):
        from gemma_cli import targets as targetlib
        from gemma_cli.targets import _OVERRIDE

        names, items = [], []
        for a in targets_ or []:
            (items if _OVERRIDE.match(a) and not Path(a).exists() else names).append(a)
        for key, val in (("generate.max_length", max_length), ("generate.max_new_tokens", max_new_tokens)):
            if val is not None:
                items.append(f"{key}={val}")
        if tasks is None and data is None:
            raise UsageError("give --data FILE (records to score) or --tasks NAME (lm-evaluation-harness)")
        if tasks is not None and data is not None:
            raise UsageError("--data and --tasks: choose one (records to score, or lm-evaluation-harness tasks)")
        if tasks is not None and (reward or no_generate or out_file):
            raise UsageError("--tasks runs lm-evaluation-harness tasks; --reward, --no-generate and --out go with --data")
        if limit is not None and tasks is None and data is None:
            raise UsageError("--limit needs --data or --tasks")
        if num_fewshot is not None and tasks is None:
            raise UsageError("--num-fewshot goes with --tasks")
        if out_file is not None:
            op = Path(out_file)
            if op.is_dir():
                raise UsageError(f"--out {out_file}: a directory; give a file name (scored.jsonl)")
            if not op.parent.exists():
                raise UsageError(f"--out {out_file}: no such directory {op.parent}")
        rewards: list[Any] = []
        run_tasks: Any = None
        if tasks is not None:
            from gemma_cli.engine.evaluate import harness

            _offline_if_unreachable(out)
            run_tasks = harness.prepare(tasks, include_path=include_path, num_fewshot=num_fewshot, limit=limit)
        else:
            from gemma_cli.engine.evaluate import records as recordlib
            from gemma_cli.engine.rewards import resolve

            rewards = [resolve(s) for s in reward or []]
            seen: dict[str, str] = {}
            for r in rewards:
                if r.name in seen:
                    r.name = r.spec  # two functions of one name: show their specs
                seen[r.name] = r.spec
            kind, records = recordlib.read(str(data), chat=chat, limit=limit, vision=recordlib.ANY_IMAGES)
            if kind == "preference" and rewards:
                raise UsageError(f"--data {data}: preference records (prompt/chosen/rejected) are scored by "
                                 "likelihood; --reward needs prompt records")
            recordlib.check_rewards(records, rewards)
        resolved = [targetlib.resolve(n, items, verb="eval", log=out) for n in (names or [None])]
        if run_tasks is None:
            from gemma_cli.engine.data import images as imagelib

            for t in resolved:  # images meet each model's image input, before any loads
                recordlib.check_images(records, *imagelib.for_preset(t.config.model.preset))
        from gemma_cli import preflight

        for t in resolved:
            preflight.require(preflight.target(t))
        from gemma_cli.engine.core import runtime

        runtime.setup()
        if json_:
            runtime.silence_keras_stdout()
        import gc

        from gemma_cli.engine.sample.generate import Generator

        results = []
        for t in resolved:
            gen = Generator(t.config, out, t.checkpoint, batch_size)
            if run_tasks is not None:
                res = run_tasks(gen, reporter=out)
            else:
                from gemma_cli.engine.evaluate.evaluator import evaluate

                res = evaluate(gen, kind, records, rewards, threshold=pass_threshold, generate=not no_generate, reporter=out)
            res["target"] = t.source
            res["target_kind"] = t.kind
            res["checkpoint"] = str(t.checkpoint) if t.checkpoint else None
            results.append(res)
            del gen
            gc.collect()
        if out_file is not None:
            _write_out(Path(out_file), results)
        doc = _document(results, data=data, tasks=tasks, threshold=pass_threshold)
        out.result(doc, human=lambda console: _human(console, doc))


def _offline_if_unreachable(out: Any) -> None:
    """lm-eval reads task data through `datasets`, which retries an unreachable Hub for a minute
    with a line per try: when huggingface.co does not answer, tell it to stay offline (local
    task data still loads; a task that needs a download then fails at once, in one line)."""
    import os

    if os.environ.get("HF_DATASETS_OFFLINE") or os.environ.get("HF_HUB_OFFLINE"):
        return
    from gemma_cli import net

    reply = net.head("https://huggingface.co")
    if not reply.reached:
        out.debug_line(f"huggingface.co: {reply.error}; lm-eval task data: local files only")
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"


def _write_out(path: Path, results: list[dict[str, Any]]) -> None:
    from gemma_cli.engine.core.files import atomic_file

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for res in results:
                for r in res["records"]:
                    f.write(json.dumps({"target": res["target"], **r}, default=str) + "\n")

    atomic_file(path, write)


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _document(results: list[dict[str, Any]], **meta: Any) -> dict[str, Any]:
    rows: list[str] = []
    for res in results:
        rows += [k for k in res["metrics"] if k not in rows]
    doc: dict[str, Any] = {**meta, "metrics": rows, "targets": []}
    for res in results:
        doc["targets"].append({k: (v if k != "metrics" else {m: _finite(x) for m, x in v.items()})
                               for k, v in res.items() if k != "records"})
    if len(results) > 1:
        first, last = results[0]["metrics"], results[-1]["metrics"]
        doc["difference"] = {m: (last[m] - first[m] if isinstance(last.get(m), (int, float)) and isinstance(first.get(m), (int, float))
                                 and math.isfinite(last[m] - first[m]) else None) for m in rows}
    return doc


def _fmt(v: Any, signed: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:+.4g}" if signed else f"{v:.4g}"
    return str(v)


def _short_names(sources: list[str]) -> list[str]:
    """Column headers: each target's last path part, longer where two would read the same."""
    parts = [Path(s.rstrip("/")).parts or (s,) for s in sources]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{i + 1}: {s}" for i, s in enumerate(sources)]


def _human(console: Any, doc: dict[str, Any]) -> None:
    from gemma_cli.output import table

    names = _short_names([t["target"] for t in doc["targets"]])
    cols = ["metric", *names]
    many = "difference" in doc
    if many:
        cols.append(f"Δ {names[-1]} − {names[0]}")
    rows = []
    for m in doc["metrics"]:
        row = [m] + [_fmt(t["metrics"].get(m)) for t in doc["targets"]]
        if many:
            row.append(_fmt(doc["difference"].get(m), signed=True))
        rows.append(row)
    console.print(table(None, cols, rows))
    for n, t in zip(names, doc["targets"], strict=True):
        if n != t["target"]:
            console.print(f"{n}: {t['target']}", markup=False, highlight=False, soft_wrap=True)
