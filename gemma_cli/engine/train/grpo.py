"""Reinforcement learning with reward functions (`train.method: grpo`): GRPO, DAPO, Dr. GRPO.

Each step:
1. rollout — `batch_size` prompts (the same prompts for a seed and step on every run, so
   `--resume` is exact), each sampled `num_generations` (G) times from the live policy under the
   training mesh: the very weights being trained, LoRA included, no second copy and no weight
   sync. keras-hub's generate function is compiled once: prompts and completions live in fixed
   [rows, sequence_length] buffers, and the sampler's seed is set from (seed, step) without
   recompiling;
2. rewards — every `grpo.rewards` function scores every completion (TRL's signature and
   columns), weighted and summed;
3. advantages — per group of G (`objectives/grpo.advantages`);
4. update — `iterations` optimizer steps on the batch through the compiled train step with the
   GRPO objective (`objectives/grpo.GRPO`), whose reference, with `beta > 0`, is this model
   with its LoRA adapters off, in the same step.

The rollout sits behind `Rollout` (prompt ids in, completion ids out): a serving engine (vLLM,
or tpu-inference on TPU) would replace it there without touching the loss or the loop.

Metrics per step go through the metrics dict like the loss: the objective's (kl, entropy, clip
shares) from the train step; the loop's (reward and its std, each reward function, completion
lengths, the share truncated, the share of groups whose rewards do not differ, the time split
and rollout tokens/s) as running means, as keras keeps its own. `eval_every` samples greedy
completions of the eval prompts and scores them with the same rewards.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from gemma_cli.engine.train.recipe import DataSetup, Recipe
from gemma_cli.errors import RuntimeFailure, UsageError

LOOP_METRICS = (
    "reward", "reward_std", "completion_length", "completion_length_min", "completion_length_max",
    "truncated", "zero_std_groups", "time_rollout", "time_reward", "time_update", "rollout_tokens_per_second",
)


def reward_names(specs: list[str]) -> list[str]:
    """A metric name per reward: `reward_<function>` (`reward_contains`, `reward_format`),
    numbered when two would be the same."""
    import re

    out: list[str] = []
    for spec in specs:
        base = spec.rsplit(":", 1)[-1] if ".py:" in spec else spec.split(":", 1)[0]
        name = "reward_" + (re.sub(r"[^A-Za-z0-9_]+", "_", base).strip("_") or "fn")
        k, candidate = 2, name
        while candidate in out:
            candidate, k = f"{name}_{k}", k + 1
        out.append(candidate)
    return out


class PromptBundle:
    """What the base recipe asks of a data bundle: positions for checkpoints and counters."""

    def __init__(self, records: list[Any], seq: int, rows: int):
        self.records, self.seq, self.rows = records, seq, rows
        self.prompts_cut = 0
        self.tokens_cut = 0
        self.tokens_trained = 0
        self.steps = 0
        self.info = type("Info", (), {"kind": "prompts", "records": len(records)})()
        self.peek = None

    def state(self, step: int) -> dict[str, Any]:
        return {"step": step, "kind": "prompts"}  # the order is a function of (seed, step)

    def counters(self, step: int) -> dict[str, int]:
        return {
            "records": len(self.records), "sequences": self.steps * self.rows,
            "tokens_total": self.steps * self.rows * self.seq, "tokens_trained": self.tokens_trained,
            "truncated": self.prompts_cut, "tokens_cut": self.tokens_cut, "turns_cut": 0,
        }


class Running:
    """Running means since the last reset of every metric the loop reports: the loop's own and
    keras' (`train_on_batch` resets keras' metrics on every call, so its logs are one step's
    values and are averaged here, like the loop's). The step tracker turns running means into
    per-window means."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}

    def reset(self) -> None:
        self.sums, self.n = {}, 0


class Rollout:
    """Sampling completions from the live policy with fixed buffers (one compile).

    Args:
        causal_lm: the model being trained.
        seq: int. Buffer length (data.sequence_length): prompt + completion.
        stop: tuple[int, ...]. Token ids that end a completion (kept in it, as TRL does).
        sampler: keras_hub sampler (its seed generator is re-seeded per step).
    """

    def __init__(self, causal_lm: Any, seq: int, stop: tuple[int, ...], pad: int, sampler: Any):
        self.lm, self.seq, self.stop, self.pad, self.sampler = causal_lm, seq, stop, pad, sampler

    def __call__(self, prompt_ids: list[list[int]], seed: tuple[int, int]) -> Any:
        import keras
        import numpy as np

        for sg in getattr(self.sampler, "_seed_generators", []):
            sg.state.assign(np.asarray(seed, dtype=sg.state.dtype))
        rows = len(prompt_ids)
        tokens = np.full((rows, self.seq), self.pad, dtype="int32")
        mask = np.zeros((rows, self.seq), dtype=bool)
        for r, ids in enumerate(prompt_ids):
            tokens[r, : len(ids)] = ids
            mask[r, : len(ids)] = True
        inputs = {"token_ids": tokens, "padding_mask": mask}
        dist = keras.distribution.distribution()
        if dist is not None:
            inputs = {k: keras.distribution.distribute_tensor(v, dist.get_data_layout(v.shape)) for k, v in inputs.items()}
        out = self.lm.make_generate_function()(inputs, stop_token_ids=self.stop)
        return host_value(out["token_ids"])


def host_value(x: Any) -> Any:
    """A (possibly multi-process) global array as one numpy array on every process."""
    import jax
    import numpy as np

    if jax.process_count() > 1 and isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def gather_rows(local: Any) -> Any:
    """Every process's rows [n, ...] (numpy), concatenated in process order: [P × n, ...]."""
    import jax
    import numpy as np

    if jax.process_count() == 1:
        return np.asarray(local)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))


class GRPORecipe(Recipe):
    """`Recipe` with rollouts, rewards and the GRPO objective in its own loop."""

    method = "grpo"

    # ------------------------------------------------------------------------ setup ---
    def setup_data(self) -> DataSetup:
        from gemma_cli.engine.data import prompts as P
        from gemma_cli.engine.model import checkpoint
        from gemma_cli.engine.rewards import resolve

        cfg, log = self.cfg, self.reporter
        d, g = cfg.data, cfg.grpo
        assert d is not None and g is not None
        log.step("Reading prompts")
        self.rewards = [resolve(s) for s in g.rewards]
        self.reward_names = reward_names([r.name for r in self.rewards])
        self._raw_prompts = True
        records = P.read(d.paths or [], "data.paths")
        eval_records: list[Any] = []
        if d.eval_paths:
            eval_records = P.read(d.eval_paths, "data.eval_paths")
        elif d.eval_holdout:
            if d.eval_holdout >= len(records):
                raise UsageError(f"data.eval_holdout: {d.eval_holdout} of {len(records)} prompt records leaves none to train on")
            eval_records, records = records[-d.eval_holdout:], records[: -d.eval_holdout]
        start = 0
        if self.resume_from is not None:
            start = int(checkpoint.read_state(self.resume_from)["step"])
        per_epoch = math.ceil(len(records) / d.batch_size)
        total = cfg.train.max_steps or cfg.train.epochs * per_epoch
        if start >= total:
            raise UsageError(f"--resume: {self.resume_from.name} is already at step {start} of {total}; nothing to do")
        rows, _ = cfg.batch_rows()
        self.records, self.eval_records = records, eval_records
        bundle = PromptBundle(records, d.sequence_length, rows)
        log.info(f"  {len(records):,} prompts ({len(eval_records):,} for eval); {rows} completions a step "
                 f"({d.batch_size} prompts × {g.num_generations}); rewards: {', '.join(r.name for r in self.rewards)}")
        log.info(f"  training {total - start} steps" + (f" from step {start}" if start else ""))
        self.data = DataSetup(
            train=records, eval=eval_records or None, steps_per_epoch=per_epoch, total_steps=total,
            start_step=start, train_sequences=per_epoch * rows, eval_sequences=len(eval_records),
            tokens_per_step=rows * d.sequence_length, useful_tokens_per_step=float(rows * d.sequence_length),
            bundle=bundle,
        )
        return self.data

    def objective(self) -> Any:
        from gemma_cli.engine.model.lora import adapters_off, lora_layers
        from gemma_cli.engine.objectives.grpo import GRPO

        g, m = self.cfg.grpo, self.model
        assert g is not None and m is not None
        if g.beta > 0 and not lora_layers(m.causal_lm.backbone):
            raise UsageError("grpo.beta > 0 needs a reference: with LoRA (model.lora) it is the model with its "
                             "adapters off; a frozen copy for a full fine-tune is not built yet — set grpo.beta: 0 "
                             "or use LoRA")
        seq = self.cfg.data.sequence_length
        return GRPO(loss=g.loss, epsilon=g.epsilon, epsilon_high=g.epsilon_high, beta=g.beta,
                    max_completion_length=g.max_completion_length, temperature=g.temperature,
                    chunk=min(seq, g.max_completion_length, 128), reference=adapters_off if g.beta > 0 else None)

    def setup_hooks(self) -> list[Any]:
        hooks = super().setup_hooks()
        self.state.metric_names = (*self.state.metric_names, *LOOP_METRICS, *self.reward_names)
        ev = self.hooks["eval"]
        ev.custom = self.evaluate
        return hooks

    # -------------------------------------------------------------------- the step ---
    def _prompt_ids(self, recs: list[Any]) -> tuple[list[list[int]], list[str]]:
        """Token ids of each prompt, cut from the left (after <bos>) to leave room for the
        completion; and the prompt text the rewards see."""
        from gemma_cli.engine.data import chat_format_for, chat_prompt_ids
        from gemma_cli.engine.model.load import tokenizer_of

        lm = self.model.causal_lm
        tok = tokenizer_of(lm)
        room = self.cfg.data.sequence_length - self.cfg.grpo.max_completion_length
        out, texts = [], []
        for r in recs:
            if isinstance(r.prompt, str):
                t = tok(r.prompt)
                ids = [tok.start_token_id, *(int(i) for i in (t.numpy() if hasattr(t, "numpy") else t))]
                texts.append(r.prompt)
            else:
                ids = chat_prompt_ids(tok, r.prompt, chat_format_for(lm.backbone))
                texts.append(r.prompt[-1][1])
            if len(ids) > room:
                self.data.bundle.prompts_cut += 1
                self.data.bundle.tokens_cut += len(ids) - room
                ids = ids[:1] + ids[len(ids) - room + 1:]
            out.append(ids)
        return out, texts

    def _completions(self, tokens: Any, prompt_lens: list[int]) -> tuple[list[list[int]], list[bool]]:
        """Each row's completion ids (up to and including a stop token, at most
        max_completion_length) and whether it was cut at that length."""
        C = self.cfg.grpo.max_completion_length
        stop = set(self.rollout.stop)
        outs, cut = [], []
        for r, n in enumerate(prompt_lens):
            ids = [int(t) for t in tokens[r, n : n + C]]
            end = next((k for k, t in enumerate(ids) if t in stop), None)
            outs.append(ids if end is None else ids[: end + 1])
            cut.append(end is None)
        return outs, cut

    def _score(self, recs: list[Any], texts: list[str], completions: list[str], G: int) -> Any:
        """[rows, F] rewards (NaN where a function said None), and the weighted total [rows]."""
        import numpy as np

        rows = len(completions)
        prompts = [texts[i // G] for i in range(rows)]
        raw = [recs[i // G].raw_prompt for i in range(rows)]  # chat prompts as messages, as TRL hands them
        keys = sorted({k for r in recs for k in r.columns})
        columns = {k: [recs[i // G].columns.get(k) for i in range(rows)] for k in keys}
        per = np.full((rows, len(self.rewards)), np.nan)
        for j, fn in enumerate(self.rewards):
            vals = fn(raw if self._raw_prompts else prompts, completions, **columns)
            per[:, j] = [np.nan if v is None else v for v in vals]
        none = np.isnan(per).all(axis=1)
        if none.any():
            i = int(np.argmax(none))
            raise RuntimeFailure(f"every reward returned None for the completion of the prompt at {recs[i // G].where}",
                                 hint="a reward function should score at least one completion kind it is given")
        total = np.nansum(per * np.asarray(self.cfg.grpo.weights)[None, :], axis=1)
        return per, total

    def _batch(self, tokens: Any, prompt_lens: list[int], comp: list[list[int]], cut: list[bool], adv: Any) -> tuple:
        import numpy as np

        rows, seq = tokens.shape
        pad = self.rollout.pad
        ids = np.full((rows, seq), pad, dtype="int32")
        keep = np.zeros((rows, seq), dtype=bool)
        weight = np.zeros((rows, seq), dtype="float32")
        mask_cut = self.cfg.grpo.mask_truncated_completions
        for r, (n, c) in enumerate(zip(prompt_lens, comp, strict=True)):
            ids[r, :n] = tokens[r, :n]
            ids[r, n : n + len(c)] = c
            keep[r, : n + len(c)] = True
            if not (mask_cut and cut[r]):
                weight[r, n - 1 : n - 1 + len(c)] = 1.0  # label t is token t+1: the completion's tokens
        labels = np.concatenate([ids[:, 1:], np.full((rows, 1), pad, dtype="int32")], axis=1)
        x = {"token_ids": ids, "padding_mask": keep, "advantages": np.asarray(adv, dtype="float32"),
             # the head sees only each row's completion window (objectives/grpo.completion_window)
             "completion_start": np.asarray([n - 1 for n in prompt_lens], dtype="int32")}
        return x, labels, weight

    def loop(self, callbacks: Any) -> None:
        import numpy as np

        from gemma_cli.engine.data import prompts as P
        from gemma_cli.engine.sample.sampler import limit_new_tokens, make_sampler

        cfg, g, m, d = self.cfg, self.cfg.grpo, self.model, self.data
        lm = m.causal_lm
        G = g.num_generations
        gen = cfg.generate.model_copy(update={
            "sampler": "top_k" if g.top_k else ("top_p" if g.top_p < 1.0 else "random"),
            "temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k or 1, "seed": cfg.train.seed})
        sampler = limit_new_tokens(make_sampler(gen), g.max_completion_length)
        lm.sampler = sampler
        lm.generate_function = None
        self.rollout = Rollout(lm, cfg.data.sequence_length, self._stop_ids(), self._pad_id(), sampler)
        self.running = Running()
        lo, hi = self._local_rows(cfg.data.batch_size * G)
        callbacks.on_train_begin()
        for i in range(d.total_steps - d.start_step):
            step = d.start_step + i  # 0-based index of this update
            callbacks.on_train_batch_begin(i)
            recs = [self.records[k] for k in P.batch(len(self.records), cfg.data.batch_size, cfg.train.seed, step)]
            ids, texts = self._prompt_ids(recs)
            rows_ids = [ids[k // G] for k in range(len(recs) * G)]
            t0 = time.perf_counter()
            tokens = self.rollout(rows_ids, (cfg.train.seed, step))
            t1 = time.perf_counter()
            lens = [len(x) for x in rows_ids]
            comp, cut = self._completions(tokens, lens)
            texts_out = self._decode(comp)
            # each process scores the groups it trains on (a group never spans processes);
            # the scores are then shared, so advantages and metrics are the same everywhere
            failed: Exception | None = None
            try:
                per_local, _ = self._score(recs[lo // G: hi // G], texts[lo // G: hi // G], texts_out[lo:hi], G)
            except Exception as e:  # noqa: BLE001 - raised below, after every process knows
                failed, per_local = e, np.full((hi - lo, len(self.rewards)), np.nan)
            flags = np.zeros((hi - lo, 1))
            flags[0, 0] = failed is not None
            both = gather_rows(np.concatenate([per_local, flags], axis=1))
            if failed is not None:
                raise failed
            if both[:, -1].any():  # another process's reward failed and says why on its stderr
                raise RuntimeFailure("a reward function failed on another process (its error is in that process's output)")
            per = both[:, :-1]
            total = np.nansum(per * np.asarray(g.weights)[None, :], axis=1)
            from gemma_cli.engine.objectives.grpo import advantages

            adv, zero = advantages(total, G, g.scale_rewards)
            t2 = time.perf_counter()
            x, y, w = self._batch(tokens, lens, comp, cut, adv)
            if g.iterations > 1:
                x["old_logps"] = self._logps(x, y)
            if hi - lo < len(w):  # keras takes each process's own rows of the global batch
                x, y, w = {k: v[lo:hi] for k, v in x.items()}, y[lo:hi], w[lo:hi]
            step_logs: dict[str, float] = {}
            for _ in range(g.iterations):  # keras' logs of one call are that update's values
                logs = lm.train_on_batch(x, y, sample_weight=w, return_dict=True)
                for k, v in logs.items():
                    step_logs[k] = step_logs.get(k, 0.0) + float(v) / g.iterations
            t3 = time.perf_counter()
            self.data.bundle.steps += 1
            self.data.bundle.tokens_trained += int(sum(len(c) for c in comp))
            clens = np.array([len(c) for c in comp])
            new_tokens = int(clens.sum())
            loop = {
                "reward": float(np.mean(total)), "reward_std": float(np.std(total)),
                "completion_length": float(clens.mean()), "completion_length_min": float(clens.min()),
                "completion_length_max": float(clens.max()), "truncated": float(np.mean(cut)),
                "zero_std_groups": float(np.mean(zero[::G])), "time_rollout": t1 - t0, "time_reward": t2 - t1,
                "time_update": t3 - t2, "rollout_tokens_per_second": new_tokens / max(t1 - t0, 1e-9),
                **{name: float(np.nanmean(per[:, j])) if not np.isnan(per[:, j]).all() else 0.0
                   for j, name in enumerate(self.reward_names)},
            }
            self.running.add({**step_logs, **loop})
            callbacks.on_train_batch_end(i, self.running.means())
            if lm.stop_training:
                break
        callbacks.on_train_end()

    def _local_rows(self, rows: int) -> tuple[int, int]:
        """[lo, hi): the rows of a step's global batch this process feeds (its streams of the
        batch axis); whole groups of G, so group statistics never cross processes."""
        from gemma_cli.engine.data.pipeline import streams_for

        if self.model.distribution is None:
            return 0, rows
        first, stop, total = streams_for(self.model.distribution, self.cfg.mesh.batch_axis)
        lo, hi = rows * first // total, rows * stop // total
        G = self.cfg.grpo.num_generations
        if lo % G or hi % G:
            raise UsageError(f"grpo: this process feeds completions {lo}..{hi} of {rows}, which splits a group of "
                             f"num_generations={G}; make data.batch_size a multiple of the number of processes",
                             hint="each process must hold whole groups")
        return lo, hi

    def _decode(self, comp: list[list[int]]) -> list[str]:
        from gemma_cli.engine.data import Encoder
        from gemma_cli.engine.model.load import tokenizer_of

        enc = Encoder(tokenizer_of(self.model.causal_lm))
        stop = set(self.rollout.stop)
        return [enc.decode([t for t in c if t not in stop]) for c in comp]

    def _stop_ids(self) -> tuple[int, ...]:
        from gemma_cli.engine.data import Encoder, chat_format_for
        from gemma_cli.engine.model.load import tokenizer_of

        tok = tokenizer_of(self.model.causal_lm)
        ids = [tok.end_token_id]
        try:
            ids.append(Encoder(tok).special(chat_format_for(self.model.causal_lm.backbone).end_turn))
        except Exception:  # noqa: BLE001 - a vocabulary without the turn marker: <eos> alone
            pass
        return tuple(dict.fromkeys(ids))

    def _pad_id(self) -> int:
        from gemma_cli.engine.data import Encoder
        from gemma_cli.engine.model.load import tokenizer_of

        return Encoder(tokenizer_of(self.model.causal_lm)).pad_id

    def _logps(self, x: dict[str, Any], y: Any) -> Any:
        """The policy's per-token log-probabilities of a batch now (the rollout's, for
        iterations > 1), one compiled forward."""
        import jax

        from gemma_cli.engine.objectives.grpo import token_logps

        lm, obj = self.model.causal_lm, self.objective_
        if getattr(self, "_logps_fn", None) is None:
            bb = lm.backbone

            @jax.jit
            def fn(trainable: Any, non_trainable: Any, inputs: Any, labels: Any) -> Any:
                hidden, _ = bb.stateless_call(trainable, non_trainable, inputs)
                return token_logps(lm, hidden, labels, obj.chunk, obj.temperature)[0]

            self._logps_fn = fn
        import keras

        bb = lm.backbone
        inputs = {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"], "labels": y}
        dist = keras.distribution.distribution()
        if dist is not None:
            inputs = {k: keras.distribution.distribute_tensor(v, dist.get_data_layout(v.shape)) for k, v in inputs.items()}
        labels = inputs.pop("labels")
        return host_value(self._logps_fn([v.value for v in bb.trainable_variables],
                                         [v.value for v in bb.non_trainable_variables], inputs, labels))

    # ------------------------------------------------------------------------ eval ---
    def evaluate(self) -> dict[str, float]:
        """Greedy completions of the eval prompts, scored by the rewards: {reward, reward_<i>,
        completion_length}. Resets the running means (keras' and the loop's), as evaluate does."""
        import keras_hub
        import numpy as np

        from gemma_cli.engine.sample.sampler import limit_new_tokens

        lm = self.model.causal_lm
        G = 1
        recs = self.eval_records
        ids, texts = self._prompt_ids(recs)
        rows = self.model.batch_axis_size
        n = math.ceil(len(ids) / rows) * rows
        if not hasattr(self, "rollout"):  # the baseline before the first step
            self.rollout = Rollout(lm, self.cfg.data.sequence_length, self._stop_ids(), self._pad_id(), lm.sampler)
        train = (lm.sampler, lm.generate_function)
        # the greedy generate function is compiled once and kept beside the rollouts' one
        lm.sampler, lm.generate_function = getattr(self, "_greedy", None) or (
            limit_new_tokens(keras_hub.samplers.GreedySampler(), self.cfg.grpo.max_completion_length), None)
        try:
            padded = ids + [ids[-1]] * (n - len(ids))
            tokens = Rollout(lm, self.cfg.data.sequence_length, self.rollout.stop, self.rollout.pad, lm.sampler)(padded, (0, 0))
            self._greedy = (lm.sampler, lm.generate_function)
        finally:
            lm.sampler, lm.generate_function = train
        lens = [len(x) for x in padded]
        comp, _ = self._completions(tokens, lens)
        comp, lens = comp[: len(ids)], lens[: len(ids)]
        decoded = self._decode(comp)
        per, total = self._score(recs, texts, decoded, G)
        if self.main:  # what the model answered, beside the scores: samples/eval_step_N.jsonl
            from gemma_cli.engine.core.files import atomic_write

            rows = [{"where": r.where, "prompt": r.raw_prompt, "completion": c, "reward": float(t),
                     **{name: (None if np.isnan(per[i, j]) else float(per[i, j])) for j, name in enumerate(self.reward_names)}}
                    for i, (r, c, t) in enumerate(zip(recs, decoded, total, strict=True))]
            (self.out_dir / "samples").mkdir(parents=True, exist_ok=True)
            atomic_write(self.out_dir / "samples" / f"eval_step_{self.state.step:08d}.jsonl",
                         "".join(json.dumps(x) + "\n" for x in rows))
        lm.reset_metrics()
        self.running.reset()
        return {"reward": float(np.mean(total)),
                **{name: float(np.nanmean(per[:, j])) for j, name in enumerate(self.reward_names)},
                "completion_length": float(np.mean([len(c) for c in comp]))}
