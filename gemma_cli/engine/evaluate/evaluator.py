"""Evaluate one loaded model on eval records: generation scored by rewards, likelihood, preferences.

`evaluate(sampler, kind, records, rewards, ...)` takes a `Sampler` (a model loaded by
`engine/sample/generate.py`'s `Generator`, or a live one) and returns plain data:

- `generation`: completions from `Sampler` in fixed-size batches (the config's `generate`
  section: greedy by default), scored by the reward functions (`engine/rewards`): each
  reward's mean, the pass rate at the threshold.
- `likelihood`: teacher-forced loss and perplexity of the reference answers, token-weighted,
  with training's loss mask (the answer and its end-of-turn marker), through `Scorer`.
- `preference`: for `prompt`/`chosen`/`rejected` records, the share of pairs whose chosen
  completion has the higher total log-probability, and the mean margin
  logp(chosen) − logp(rejected).
- `records`: one entry per record (prompt, completion, each reward, pass, log-probs).
"""

from __future__ import annotations

import math
import time
from typing import Any

from gemma_cli.engine.core.report import NullReporter
from gemma_cli.engine.evaluate.likelihood import Scorer
from gemma_cli.engine.evaluate.records import EvalRecord, columns_of


def answer_doc(sampler: Any, record: EvalRecord, answer: str) -> tuple[Any, Any]:
    """(ids, weights) of the record's prompt followed by `answer`, weighted as training weighs
    it: chat records as the chat renderer renders a final model turn (the answer and its
    end-of-turn marker carry the loss), text records as a template with a response field
    (`<bos>` prompt answer `<eos>`, the answer and `<eos>` carry it)."""
    import numpy as np

    from gemma_cli.engine.data import Encoder, Renderer
    from gemma_cli.engine.data.render import BOS, EOS, Piece

    enc = Encoder(sampler.tokenizer, sampler.vision if record.images else None)
    if record.chat:
        fmt = sampler.chat_format
        pieces = Renderer.for_chat(fmt).prompt(record.prompt, record.images)
        pieces += [Piece(answer, 1.0), Piece(fmt.end_turn, 1.0, special=True), Piece("\n", 0.0)]
    else:
        pieces = [Piece(BOS, 0.0, special=True), Piece(record.prompt, 0.0), Piece(answer, 1.0), Piece(EOS, 1.0, special=True)]
    ids_per, pieces = enc.pieces_of(pieces)
    ids = np.fromiter((t for x in ids_per for t in x), dtype=np.int32)
    weights = np.concatenate([np.full(len(x), p.weight, dtype=np.float32) for x, p in zip(ids_per, pieces, strict=True)])
    if record.images:  # the scorer gives the model the images where their tokens sit
        return ids, weights, [r.pixels(sampler.vision) for r in record.images]
    return ids, weights


def evaluate(sampler: Any, kind: str, records: list[EvalRecord], rewards: list[Any], *, threshold: float = 1.0,
             generate: bool = True, reporter: Any = None, scorer: Scorer | None = None) -> dict[str, Any]:
    """Evaluate `records` with the model `sampler` holds.

    Args:
        sampler: Sampler. The model, its distribution, tokenizer and `generate` settings.
        kind: str. `preference`, `chat`, `pair` or `prompt` (engine/evaluate/records.py).
        records: list[EvalRecord]. What to evaluate.
        rewards: list[Reward]. Scorers of the completions (may be empty).
        threshold: float. A record passes when each reward that applies reaches it.
        generate: bool. Generate and score completions (False: likelihood only).
        reporter: Reporter | None. Progress (records/s).
        scorer: Scorer | None. The likelihood scorer (one is made from the sampler).

    Returns:
        dict: `records` (per record), `generation`, `rewards`, `likelihood`, `preference`
        (None where not computed), `metrics` (flat {name: value} for tables).
    """
    log = reporter or NullReporter()
    scorer = scorer or Scorer(sampler.lm, sampler.distribution, batch_axis=sampler.batch_axis,
                              batch_size=sampler.batch_size)
    per = [{"where": r.where, "prompt": r.shown} for r in records]
    result: dict[str, Any] = {"generation": None, "rewards": None, "likelihood": None, "preference": None}
    steps = (len(records) if generate and kind != "preference" else 0) + len(records)
    bar = log.progress(total=steps, label="eval", unit="records/s")
    done, t_all, said = 0, time.perf_counter(), time.perf_counter()

    def tick(n: int) -> None:
        nonlocal done, said
        done += n
        now = time.perf_counter()
        rate = f"{done / (now - t_all):.1f}" if now > t_all else "-"
        bar.update(done, tps=rate)
        if not getattr(bar, "live", False) and (now - said >= 10 or done == steps):  # logs, pipes: a line now and then
            said = now
            log.info(f"eval: {done}/{steps} ({rate} records/s)")

    try:
        if generate and kind != "preference":
            result["generation"], result["rewards"] = _generate(sampler, records, rewards, threshold, per, tick)
        if kind == "preference":
            result["preference"] = _preference(sampler, scorer, records, per, tick)
        else:
            result["likelihood"] = _likelihood(sampler, scorer, records, per, tick)
    finally:
        bar.close()
    result["records"] = per
    result["metrics"] = _metrics(result)
    return result


def _generate(sampler: Any, records: list[EvalRecord], rewards: list[Any], threshold: float, per: list[dict[str, Any]],
              tick: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    from gemma_cli.engine.data import Encoder
    from gemma_cli.engine.rewards import score

    chat = records[0].chat
    g = sampler.generate_cfg
    # as `gemma generate`: generate.max_length (prompt included) when set, else max_new_tokens
    limit = {"max_length": g.max_length} if g.max_length is not None else {"max_new_tokens": g.max_new_tokens}
    outs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    warm_s, warm_tokens = 0.0, 0
    for i in range(0, len(records), sampler.batch_size):
        chunk = records[i : i + sampler.batch_size]
        images = [r.images for r in chunk] if any(r.images for r in chunk) else None
        got = sampler([r.prompt for r in chunk], chat=chat, prompt_images=images, **limit)
        if got and not got[0]["compiled"]:  # batches that reused a compiled function
            warm_s += got[0]["seconds"]
            warm_tokens += sum(o["completion_tokens"] for o in got)
        outs += got
        tick(len(chunk))
    dt = time.perf_counter() - t0
    completions = [o["completion"] for o in outs]
    new_tokens = sum(o["completion_tokens"] for o in outs)
    enc = Encoder(sampler.tokenizer)
    ids = enc.encode(completions) if completions else []
    for p, o in zip(per, outs, strict=True):
        p["completion"] = o["completion"]
        p["completion_tokens"] = o["completion_tokens"]
    gen = {
        "completions": len(outs),
        "completion_tokens_mean": new_tokens / len(outs) if outs else 0.0,
        "seconds": round(dt, 3),
        "tokens_per_second": round(new_tokens / dt, 2) if dt > 0 else 0.0,
        "warm_tokens_per_second": round(warm_tokens / warm_s, 2) if warm_s > 0 else None,
        "sampler": sampler.generate_cfg.sampler,
        **limit,
    }
    if not rewards:
        return gen, None
    columns = {**columns_of(records), "completion_ids": ids}
    prompts = [r.shown for r in records]
    scored = score(rewards, prompts, completions, columns, threshold, labels=[r.where for r in records])
    for p, s in zip(per, scored.pop("records"), strict=True):
        p["rewards"] = s["rewards"]
        p["pass"] = s["pass"]
    return gen, scored


def _likelihood(sampler: Any, scorer: Scorer, records: list[EvalRecord], per: list[dict[str, Any]], tick: Any) -> dict[str, Any] | None:
    have = [(k, r) for k, r in enumerate(records) if r.reference is not None]
    tick(len(records) - len(have))
    if not have:
        return None
    t0 = time.perf_counter()
    tokens0 = scorer.tokens
    total_logp = total_w = 0.0
    step = scorer.batch_size
    for i in range(0, len(have), step):
        chunk = have[i : i + step]
        got = scorer.score([answer_doc(sampler, r, r.reference) for _, r in chunk])
        for (k, _), (logp, w, _) in zip(chunk, got, strict=True):
            per[k]["reference_logprob"] = logp
            per[k]["reference_tokens"] = int(w)
            total_logp += logp
            total_w += w
        tick(len(chunk))
    dt = time.perf_counter() - t0
    loss = -total_logp / total_w if total_w else float("nan")
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if total_w and loss < 700 else float("inf"),
        "tokens": int(total_w),
        "references": len(have),
        "seconds": round(dt, 3),
        "tokens_per_second": round((scorer.tokens - tokens0) / dt, 2) if dt > 0 else 0.0,
    }


def _preference(sampler: Any, scorer: Scorer, records: list[EvalRecord], per: list[dict[str, Any]], tick: Any) -> dict[str, Any]:
    wins, margins = 0, []
    step = max(scorer.batch_size // 2, 1)
    for i in range(0, len(records), step):
        chunk = records[i : i + step]
        docs = []
        for r in chunk:
            docs += [answer_doc(sampler, r, r.chosen), answer_doc(sampler, r, r.rejected)]
        got = scorer.score(docs)
        for j in range(len(chunk)):
            c, rj = got[2 * j][0], got[2 * j + 1][0]
            k = i + j
            per[k].update({"chosen_logprob": c, "rejected_logprob": rj, "margin": c - rj, "correct": c > rj})
            wins += c > rj
            margins.append(c - rj)
        tick(len(chunk))
    return {"pairs": len(records), "accuracy": wins / len(records), "margin": sum(margins) / len(margins)}


def _metrics(result: dict[str, Any]) -> dict[str, float | None]:
    m: dict[str, float | None] = {}
    rw = result.get("rewards")
    if rw:
        for name, v in rw["means"].items():
            m[f"reward {name}"] = v
        m["pass rate"] = rw["pass_rate"]
    gen = result.get("generation")
    if gen:
        m["completion tokens"] = gen["completion_tokens_mean"]
    lk = result.get("likelihood")
    if lk:
        m["loss"] = lk["loss"]
        m["perplexity"] = lk["perplexity"]
    pr = result.get("preference")
    if pr:
        m["preference accuracy"] = pr["accuracy"]
        m["preference margin"] = pr["margin"]
    return m
