"""lm-evaluation-harness tasks with gemma's engine as the model (`gemma eval --tasks`).

`GemmaLM` implements lm-eval's `LM` interface over the code `gemma eval` already uses:
`loglikelihood` and `loglikelihood_rolling` through `Scorer` (teacher-forced, batched and
sharded under the model's mesh), `generate_until` through the `Sampler`. Text is tokenized
by the model's own tokenizer; every sequence starts with `<bos>`, as Gemma was trained.

`prepare(tasks, ...)` checks the task names before any model loads (an unknown name: exit 2
with lm-eval's close names) and builds the tasks, which is when lm-eval reads their data: a
task whose dataset must be downloaded says so in one line when the Hub cannot be reached. A
local task (a YAML file in `--include-path` whose `dataset_path: json` names a local file)
runs offline. It returns a function that evaluates a loaded model.

Needs the `[eval]` extra (`pip install 'gemma-cli[eval]'`).
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Callable
from typing import Any

from gemma_cli.errors import RuntimeFailure, UsageError


def _lm_eval() -> Any:
    try:
        import lm_eval
        import lm_eval.api.model  # noqa: F401
    except ImportError:
        raise UsageError("--tasks: needs lm-evaluation-harness", hint="pip install 'gemma-cli[eval]'") from None
    return lm_eval


def lm_class() -> type:
    """`GemmaLM`, lm-eval's `LM` over a gemma `Sampler` (made when lm-eval is importable)."""
    from lm_eval.api.model import LM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from gemma_cli.engine.data import Encoder
    from gemma_cli.engine.evaluate.likelihood import Scorer

    class GemmaLM(LM):
        """lm-eval's `LM` over a loaded gemma model.

        Args:
            sampler: Sampler. The model (its tokenizer, mesh and `generate` settings).
            max_context: int. The longest sequence scored at once (rolling windows beyond).
                Defaults to 2048.
            reporter: Reporter | None. Progress over requests.
        """

        def __init__(self, sampler: Any, max_context: int = 2048, reporter: Any = None):
            super().__init__()
            self.sampler, self.max_context, self.log = sampler, max_context, reporter
            self.scorer = Scorer(sampler.lm, sampler.distribution, batch_axis=sampler.batch_axis,
                                 batch_size=sampler.batch_size)
            self.enc = Encoder(sampler.tokenizer)
            self.bos = int(sampler.tokenizer.start_token_id)

        def _ids(self, text: str) -> list[int]:
            return self.enc.encode([text])[0] if text else []

        def _score(self, docs: list[tuple[Any, Any]]) -> list[tuple[float, float, bool]]:
            order = sorted(range(len(docs)), key=lambda i: -len(docs[i][0]))  # similar lengths batch together
            got = self.scorer.score([docs[i] for i in order])
            out: list[Any] = [None] * len(docs)
            for k, i in enumerate(order):
                out[i] = got[k]
            return out

        def _doc(self, context: list[int], continuation: list[int]) -> tuple[Any, Any]:
            import numpy as np

            ids = np.asarray(context + continuation, dtype=np.int32)
            w = np.zeros(len(ids), dtype=np.float32)
            w[len(context) :] = 1.0
            return ids, w

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            docs = []
            for req in requests:
                context, continuation = req.args
                ctx = [self.bos] + self._ids(context)
                cont = self._ids(continuation)
                if not cont:
                    raise RuntimeFailure(f"lm-eval: an empty continuation for context {context[-60:]!r}")
                keep = self.max_context - len(cont)
                docs.append(self._doc(ctx[-keep:] if keep > 0 else ctx[-1:], cont[-self.max_context + 1 :]))
            return [(logp, greedy) for logp, _, greedy in self._score(docs)]

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
            out = []
            for req in requests:
                (text,) = req.args
                windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                    token_list=self._ids(text), prefix_token=self.bos, max_seq_len=self.max_context, context_len=1)]
                got = self._score([self._doc(list(c), list(p)) for c, p in windows])
                out.append(sum(g[0] for g in got))
            return out

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            out: list[str] = [""] * len(requests)
            groups: dict[tuple[Any, ...], list[int]] = {}
            for i, req in enumerate(requests):
                _, kw = req.args
                until = kw.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                groups.setdefault((tuple(until), int(kw.get("max_gen_toks", 256))), []).append(i)
            for (until, max_new), idx in groups.items():
                contexts = [requests[i].args[0] for i in idx]
                res = self.sampler(contexts, max_new_tokens=max_new)  # lengths rounded: few compiles
                for i, r in zip(idx, res, strict=True):
                    text = r["completion"]
                    cut = [text.find(u) for u in until if u and u in text]
                    out[i] = text[: min(cut)] if cut else text
            return out

        @property
        def tokenizer_name(self) -> str:
            return type(self.sampler.tokenizer).__name__

    return GemmaLM


def prepare(tasks: str, *, include_path: str | None = None, num_fewshot: int | None = None,
            limit: int | None = None) -> Callable[..., dict[str, Any]]:
    """Check and build lm-eval tasks before a model loads; return `run(sampler, reporter)`.

    Raises:
        UsageError: an unknown task name (with lm-eval's close names), a bad include path.
        RuntimeFailure: a task's data could not be read (offline: one line saying so).
    """
    _lm_eval()
    import logging
    from pathlib import Path

    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise UsageError("--tasks: no task name (NAME[,NAME])")
    if include_path is not None and not Path(include_path).is_dir():
        raise UsageError(f"--include-path {include_path}: no such directory")
    tm = None
    if include_path is not None:  # local tasks alone: no need to index lm-eval's ~15k task files
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(n in set(local.all_tasks) or Path(n).is_file() for n in names):
            tm = local
    tm = tm or TaskManager(include_path=include_path)
    known = set(tm.all_tasks)
    for n in names:
        if n not in known and not Path(n).is_file():
            close = difflib.get_close_matches(n, tm.all_tasks, n=5, cutoff=0.6)
            said = f"; did you mean: {', '.join(close)}?" if close else ""
            raise UsageError(f"--tasks {n}: lm-eval has no such task{said}",
                             hint="see `lm-eval ls tasks`, or give --include-path DIR with your task YAML")
    try:
        loaded = tm.load(names)
    except Exception as e:  # noqa: BLE001 - the datasets library's many ways to fail a download
        raise _data_error(names, e) from None
    for t in loaded["tasks"].values():  # as lm-eval's simple_evaluate sets them
        if num_fewshot is not None and t.get_config("num_fewshot") != 0:
            t.set_config(key="num_fewshot", value=num_fewshot)
        elif t.get_config("num_fewshot") is None:
            t.set_config(key="num_fewshot", value=0)
        t.set_fewshot_seed(seed=1234)

    def run(sampler: Any, reporter: Any = None) -> dict[str, Any]:
        import os
        import random

        import numpy as np
        from lm_eval.evaluator import evaluate

        os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's own bars; gemma's output stays on stderr
        random.seed(0)
        np.random.seed(1234)
        lm = lm_class()(sampler, reporter=reporter)
        t0 = time.perf_counter()
        res = evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=0, log_samples=False, verbosity="ERROR")
        dt = time.perf_counter() - t0
        metrics: dict[str, float | None] = {}
        for task, vals in (res or {}).get("results", {}).items():
            for k, v in vals.items():
                if k in ("alias", "name", "sample_len") or "_stderr" in k or not isinstance(v, (int, float)):
                    continue
                metrics[f"{task} {k.split(',')[0]}"] = float(v) if math.isfinite(float(v)) else None
        return {"tasks": names, "results": (res or {}).get("results", {}), "n_samples": (res or {}).get("n-samples", {}),
                "metrics": metrics, "seconds": round(dt, 3), "records": []}

    return run


def _data_error(names: list[str], e: Exception) -> RuntimeFailure:
    text = f"{type(e).__name__}: {e}"
    offline = any(w in text for w in ("ConnectionError", "is set to offline", "HF_DATASETS_OFFLINE", "Couldn't reach", "offline", "Max retries", "resolve",
                                      "OfflineModeIsEnabled", "Network", "getaddrinfo", "Temporary failure"))
    first = " ".join(str(e).split())[:200]
    if offline:
        return RuntimeFailure(f"--tasks {','.join(names)}: the task's dataset must be downloaded from the Hugging Face "
                              f"Hub, which cannot be reached ({type(e).__name__})",
                              hint="run once with network access, or use a local task YAML with a local data file")
    return RuntimeFailure(f"--tasks {','.join(names)}: lm-eval could not build the task: {type(e).__name__}: {first}")

