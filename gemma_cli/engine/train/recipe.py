"""What every training method shares: named setup steps over typed run state, then a loop.

A method is a `Recipe` subclass (`engine/train/sft.py`, and the methods `train.method` names:
`engine/train/__init__.py` has the registry). The base holds everything methods share —
output dir, model setup, data, resume, checkpoints, status, signals, hooks, summary — and
asks its subclass for two things: the `objective()` (loss and auxiliary metrics,
`engine/objectives/`) and the `loop(callbacks)` that drives the steps (SFT: keras' `fit`; a
method that generates, scores and updates, like GRPO, writes its own loop here and calls the
same callbacks).

    recipe_for(cfg)(cfg, reporter).run()
      check_output_dir()   refuse to overwrite an earlier run; find the checkpoint to resume
      setup_model()        mesh → checked layout → model born sharded (+ LoRA, quantization)
      setup_data()         the streaming data (engine/data): batches, eval set, step counts
      setup_optimizer()    patches in order (segments, compile, the objective); restore on --resume
      setup_hooks()        progress, metrics + TensorBoard, eval, checkpoints, guards
      train()              loop(); final checkpoint; summary.json

Raises `Interrupted` (exit 130) after SIGTERM/SIGINT with the resume command, and
`RuntimeFailure` when the loss or the weights diverge, keeping the last good checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_cli.config import dump_config, to_yaml
from gemma_cli.engine.core import runtime, status_file
from gemma_cli.engine.core.files import atomic_write
from gemma_cli.engine.core.report import Reporter
from gemma_cli.engine.model import checkpoint
from gemma_cli.errors import Interrupted, RuntimeFailure, UsageError


def config_digest(cfg: Any) -> str:
    """A short hash of the resolved config (a resumed run warns when it changed)."""
    d = dump_config(cfg)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ModelSetup:
    causal_lm: Any
    preprocessor: Any
    distribution: Any
    plan: Any
    mesh_shape: tuple[int, ...]
    devices: int
    batch_axis_size: int
    params: dict[str, int]


@dataclass
class DataSetup:
    train: Any
    eval: Any
    steps_per_epoch: int
    total_steps: int  # micro-batches fit runs in all (max_steps × accumulation, or epochs)
    start_step: int
    train_sequences: int
    eval_sequences: int
    tokens_per_step: int
    useful_tokens_per_step: float
    bundle: Any = None  # engine.data.DataBundle: data positions and counters for checkpoints


def data_line(c: dict[str, int]) -> str:
    """The log line of what a run trained on."""
    pct = 100 * c["tokens_trained"] / max(c["tokens_total"], 1)
    line = (
        f"data: {c['records']:,} records in {c['sequences']:,} sequences; {c['tokens_total']:,} tokens, "
        f"{c['tokens_trained']:,} carrying the loss ({pct:.1f}%)"
    )
    if c["truncated"]:
        turns = f", {c['turns_cut']:,} turns" if c["turns_cut"] else ""
        line += f"; {c['truncated']:,} records cut to the sequence length ({c['tokens_cut']:,} tokens{turns} dropped)"
    return line


def data_files(cfg: Any) -> dict[str, str]:
    """`{"data file PATH": "N bytes"}` for every local file the config's data paths name (a
    dataset directory: its files' count and total size); remote sources are config keys."""
    from gemma_cli.engine.data import sources

    d = cfg.data
    out: dict[str, str] = {}
    for pat in [*(d.paths or []), *(d.eval_paths or [])] if d is not None else []:
        hits, _ = sources.expand(pat)
        for h in map(Path, hits):
            if h.is_dir():
                files = [f for f in h.rglob("*") if f.is_file()]
                out[f"data file {h}"] = f"{len(files)} files, {sum(f.stat().st_size for f in files)} bytes"
            else:
                out[f"data file {h}"] = f"{h.stat().st_size} bytes"
    return out


class Recipe:
    """One training run of a config; subclasses are the methods (`train.method`).

    Args:
        cfg: RunConfig. The validated run config.
        reporter: Reporter. Where progress goes (the CLI's Output).
        resume: bool | str. Continue from the latest checkpoint in `cfg.output_dir`; "auto":
            continue when there is one, start fresh when there is none, and return at once
            (`already_finished`) when it is the run's last step. Defaults to False.
        dry_run: bool. Stop after reading the first batch; train nothing.
    """

    method = ""  # the `train.method` value this recipe runs

    def __init__(self, cfg: Any, reporter: Reporter, *, resume: bool | str = False, dry_run: bool = False):
        self.cfg, self.reporter, self.dry_run = cfg, reporter, dry_run
        self.auto = resume == "auto"
        self.resume = bool(resume) and not self.auto  # settled by check_output_dir under auto
        self.finished: tuple[Path, dict[str, Any]] | None = None
        self.out_dir: Path = cfg.output_dir
        self.resume_from: Path | None = None
        self.main = True
        self.model: ModelSetup | None = None
        self.data: DataSetup | None = None
        self.optimizer: Any = None
        self.state: Any = None
        self.hooks: dict[str, Any] = {}
        self.objective_: Any = None
        self.t_start = time.time()

    # ------------------------------------------------------------- what a method adds ---
    def objective(self) -> Any:
        """The method's objective (`engine/objectives.Objective`), built once the model and
        data are set up."""
        raise NotImplementedError

    def loop(self, callbacks: Any) -> None:
        """Run the training steps from `data.start_step` to `data.total_steps`, calling
        `callbacks` (a keras CallbackList: `on_train_begin`, `on_train_batch_end(batch, logs)`
        with the objective's metrics in `logs`, `on_train_end`) as keras' fit does."""
        raise NotImplementedError

    # ----------------------------------------------------------------------- steps ---
    def check_output_dir(self) -> None:
        """With --resume a checkpoint; without it no earlier run. The CLI's preflight
        (`gemma_cli.preflight.run_dir`) checked more before anything loaded: writability and
        every checkpoint file; this is the engine's own guard for callers that skip it."""
        cfg, out_dir = self.cfg, self.out_dir
        latest = checkpoint.latest(out_dir)
        if self.auto:
            self._settle_auto(latest)
            if self.finished is not None:
                return
        if self.resume and latest is None:
            raise UsageError(f"--resume: no checkpoint in {out_dir}/checkpoints (run without --resume to start)")
        if latest is not None and not self.resume and not self.dry_run:
            raise UsageError(cfg.problem("train.output_dir", f"{out_dir} already holds checkpoints of an earlier run "
                                         "(add --resume to continue it, or set train.output_dir=<new dir>; nothing was overwritten)"))
        if self.resume:
            self.resume_from = checkpoint.latest(out_dir)
            assert self.resume_from is not None  # run_dir checked it
            st = checkpoint.read_state(self.resume_from)
            if st.get("config_digest") and st["config_digest"] != config_digest(cfg):
                self.reporter.warn(f"the config differs from the one {self.resume_from.name} was trained with")
        if cfg.data is None:
            raise UsageError("data: the config has no data section; finetune needs one")
        bad = cfg.model.training_problem()
        if bad:
            raise UsageError(cfg.problem("model.quantize", bad))

    def agree(self) -> None:
        """On several processes: every process holds the same config and data files, or every
        one exits 2 naming the first difference (`engine/core/agreement.py`), before the mesh
        is chosen or any model loads."""
        runtime.setup()
        if runtime.process_count() == 1:
            return
        from gemma_cli.engine.core import agreement

        facts = agreement.flatten(dump_config(self.cfg), "config")
        facts.update(data_files(self.cfg))
        agreement.check(facts)

    def choose_mesh(self) -> None:
        """A config without `mesh.shape` gets the lowest-traffic mesh its memory plan fits
        (`engine/plan/machine.choose`), written into the run's config; a mesh the user gave is
        never changed, only checked."""
        from gemma_cli.engine.plan import machine

        choice = machine.choose(self.cfg)
        if choice is not None:
            self.reporter.info(choice.why)

    def _settle_auto(self, latest: Path | None) -> None:
        """`--resume auto`: resume from `latest`, start fresh without one, or note that the run
        already ended there. A checkpoint of another config is refused (exit 2)."""
        if latest is None:
            self.reporter.info(f"--resume auto: no checkpoint in {self.out_dir}/checkpoints; starting fresh")
            return
        st = checkpoint.read_state(latest)
        if st.get("config_digest") and st["config_digest"] != config_digest(self.cfg):
            raise UsageError(
                f"--resume auto: the config differs from the one {latest.name} was trained with",
                hint=f"restore the config of {self.out_dir}/config.yaml, or set train.output_dir=<new dir>",
            )
        total = st.get("total_steps")
        if isinstance(total, int) and st["step"] >= total:
            self.finished = (latest, st)
            return
        self.resume = True

    def finished_summary(self) -> dict[str, Any]:
        """What `--resume auto` returns for a run that already ended: its summary.json (when
        written), marked `already_finished`."""
        assert self.finished is not None
        ckpt, st = self.finished
        self.reporter.info(f"already finished at step {st['step']}: {ckpt}")
        try:
            summary = json.loads((self.out_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        return {**summary, "already_finished": True, "steps": st["step"], "total_steps": st["total_steps"],
                "checkpoint": str(ckpt), "output_dir": str(self.out_dir)}

    def setup_model(self) -> ModelSetup:
        cfg, log = self.cfg, self.reporter
        runtime.setup()
        from gemma_cli.engine.model import load as modellib
        from gemma_cli.engine.model import runs
        from gemma_cli.engine.plan import layout as layoutlib

        self.main = runtime.is_main_process()
        n_dev = layoutlib.device_count()
        shape = cfg.mesh.resolve(n_dev)
        bad = cfg.batch_problem(shape)
        if bad:
            raise UsageError(f"data.batch_size: {bad} (mesh {list(shape)} on this machine's {n_dev} devices)")
        log.step(f"Planning {cfg.model.preset} on mesh {dict(zip(cfg.mesh.axes, shape, strict=True))} ({n_dev} devices)")
        layout = layoutlib.layout_for(cfg)
        for w in layout.plan.warnings:
            log.warn(w)
        for n in layout.plan.notes:
            log.info(f"  layout: {n}")
        import keras

        # train.seed drives every random init (LoRA kernels, a resized head) as well as the
        # data order: two runs of one config start from the same weights, on every host alike
        keras.utils.set_random_seed(cfg.train.seed)
        log.step(f"Loading {cfg.model.preset} ({cfg.model.precision}) sharded over the mesh")
        lm = runs.load(cfg, reporter=log, distribution=layout.distribution, adapters=True, remat=cfg.train.remat)
        counts = modellib.param_counts(lm)
        log.info(
            f"  parameters: {counts['total']:,} total, {counts['trainable']:,} trainable "
            f"({100 * counts['trainable'] / max(counts['total'], 1):.3f}%)"
        )
        self.model = ModelSetup(
            causal_lm=lm,
            preprocessor=lm.preprocessor,
            distribution=layout.distribution,
            plan=layout.plan,
            mesh_shape=shape,
            devices=n_dev,
            batch_axis_size=layout.batch_axis_size,
            params=counts,
        )
        return self.model

    def setup_data(self) -> DataSetup:
        """The streaming data of the run (engine/data): every check that can run before
        anything is written runs here; `--resume` continues at the checkpoint's data position."""
        from gemma_cli.engine import data as datalib
        from gemma_cli.engine.data.images import VisionSpec
        from gemma_cli.engine.model import load as modellib

        cfg, log, m = self.cfg, self.reporter, self.model
        assert m is not None
        d = cfg.data
        log.step("Reading data")
        start, position = 0, None
        if self.resume_from is not None:
            st = checkpoint.read_state(self.resume_from)
            start, position = int(st["step"]), st.get("data_position")
        bundle = datalib.build(
            d,
            modellib.tokenizer_of(m.causal_lm),
            seed=cfg.train.seed,
            start_step=start,
            streams=datalib.streams_for(m.distribution, cfg.mesh.batch_axis),
            resume=position,
            segment_ids=d.packing,
            position_ids="position_ids" in [i.name for i in m.causal_lm.backbone.inputs],
            keep_positions=max(1024, 4 * cfg.train.steps_per_execution),
            chat=lambda: datalib.chat_format_for(m.causal_lm.backbone),
            reporter=log,
            method=getattr(cfg.train, "method", None),
            vision=VisionSpec.of_model(m.causal_lm),
            model_name=cfg.model.preset,
        )
        info = bundle.info
        per_epoch = info.steps_per_epoch
        # max_steps counts optimizer updates; fit counts micro-batches
        accum = cfg.optimizer.gradient_accumulation_steps
        total = cfg.train.max_steps * accum if cfg.train.max_steps else cfg.train.epochs * per_epoch
        if start >= total:
            raise UsageError(f"--resume: {self.resume_from.name} is already at step {start} of {total}; nothing to do")
        seg = bundle.peek["segment_ids"]
        log.info(info.line(d))
        log.info(f"  training {total - start} steps" + (f" from step {start}" if start else ""))
        self.data = DataSetup(
            train=bundle.train,
            eval=bundle.eval,
            steps_per_epoch=per_epoch,
            total_steps=total,
            start_step=start,
            train_sequences=per_epoch * d.batch_size,
            eval_sequences=info.eval_sequences,
            tokens_per_step=d.batch_size * d.sequence_length,
            useful_tokens_per_step=float((seg > 0).sum()) / max(len(seg), 1) * d.batch_size,
            bundle=bundle,
        )
        return self.data

    def setup_optimizer(self) -> Any:
        from gemma_cli.engine.model.optimizer import compile_model

        m, d = self.model, self.data
        assert m is not None and d is not None
        self.objective_ = self.objective()
        with m.distribution.scope():
            self.optimizer = compile_model(
                m.causal_lm, self.cfg, d.total_steps // self.cfg.optimizer.gradient_accumulation_steps, m.batch_axis_size,
                objective=self.objective_,
            )
            if self.resume_from is not None:
                self.reporter.step(f"Resuming from {self.resume_from}")
                checkpoint.restore(self.resume_from, m.causal_lm, self.optimizer)
        return self.optimizer

    def setup_hooks(self) -> list[Any]:
        from gemma_cli.engine.train import hooks as H
        from gemma_cli.engine.train.state import RunState

        cfg, m, d = self.cfg, self.model, self.data
        assert m is not None and d is not None
        self.state = st = RunState(
            start=d.start_step,
            total=d.total_steps,
            tokens_per_step=d.tokens_per_step,
            useful_tokens_per_step=d.useful_tokens_per_step,
            metric_names=("loss", *self.objective_.metric_names),
        )
        schedule = H.Schedule(cfg.train, d.total_steps, d.eval is not None)
        stopper = H.StopOnSignal(st, self.reporter)
        tracker = H.StepTracker(st, schedule, stopper)
        view = H.ProgressView(st, self.reporter, tracker, schedule, show=self.main)
        metrics = H.MetricsLog(st, self.out_dir, schedule, view, self.main, self.reporter,
                               report_to=cfg.train.report_to, run_name=cfg.name or self.out_dir.name,
                               config=dump_config(cfg))
        ev = H.Evaluation(st, d.eval, schedule, metrics, view)
        ck = H.Checkpointing(st, schedule, self._save, view)
        self.hooks = {
            "tracker": tracker,
            "guard": H.DivergenceGuard(st, tracker),
            "view": view,
            "metrics": metrics,
            "eval": ev,
            "checkpoint": ck,
            "stop": stopper,
        }
        return list(self.hooks.values())

    def _save(self, step: int, loss: float) -> Path:
        m, d = self.model, self.data
        assert m is not None and d is not None
        state = {
            "loss": loss,
            "config_digest": config_digest(self.cfg),
            "quantize": self.cfg.model.quantize,  # a resume must rebuild the same base
            "data_position": d.bundle.state(step),  # every process takes part (a gather)
            "total_steps": d.total_steps,
        }
        return checkpoint.save(
            self.out_dir,
            step,
            m.causal_lm,
            m.causal_lm.optimizer,
            state,
            self.cfg.train.keep_checkpoints,
            write=self.main,
            preprocessor=m.preprocessor,
        )

    # ------------------------------------------------------------------------- run ---
    def run(self) -> dict[str, Any]:
        """The steps in order; out of memory anywhere becomes one line with the plan's
        estimate and what to change (`engine/plan/oom.py`, exit 1)."""
        phase = "loading the model"
        try:
            self.agree()
            self.choose_mesh()
            self.check_output_dir()
            if self.finished is not None:
                return self.finished_summary()
            self.setup_model()
            phase = "reading the data"
            self.setup_data()
            if self.dry_run:
                return self.dry_run_summary()
            phase = "building the optimizer"
            self.setup_optimizer()
            self.write_config()
            phase = "the train step"
            return self.train()
        except Exception as e:
            from gemma_cli.engine.plan import oom

            if not oom.is_oom(e):
                raise
            st = self.state
            step = None
            if phase == "the train step" and st is not None:
                step = st.step + 1
                if st.step == st.start:
                    phase = "compiling or running the first train step"
            raise oom.explain(self.cfg, e, phase=phase, step=step) from None

    def write_config(self) -> None:
        if self.main:
            atomic_write(
                self.out_dir / "config.yaml",
                f"# resolved config of this run; rerun with: gemma finetune {self.out_dir}/config.yaml\n"
                + to_yaml(dump_config(self.cfg)),
            )
            d = self.data
            assert d is not None
            status_file.started(self.out_dir, step=d.start_step, total_steps=d.total_steps,
                                resumed=self.resume_from is not None)

    def train(self) -> dict[str, Any]:
        from gemma_cli.engine.train import hooks as H

        cfg, m, d = self.cfg, self.model, self.data
        assert m is not None and d is not None
        hooks = self.setup_hooks()
        self.reporter.step(f"Training {d.total_steps - d.start_step} steps (batch {cfg.data.batch_size} × {cfg.data.sequence_length} tokens)")
        lm = m.causal_lm
        # the batches are already tokenized: fit must not run the preprocessor again; its
        # tokenizer stays reachable for a live sampler (`model.load.tokenizer_of`)
        if m.preprocessor is not None and getattr(lm, "_gemma_tokenizer", None) is None:
            object.__setattr__(lm, "_gemma_tokenizer", m.preprocessor.tokenizer)
        lm.preprocessor = None
        callbacks = H.HookList(hooks, add_history=True, add_progbar=False, model=lm)
        try:
            summary = self._train_loop(callbacks, hooks)
        finally:
            self.hooks["metrics"].finish(None)  # after a failure: close the trackers (no-op when finished)
        return summary

    def _train_loop(self, callbacks: Any, hooks: list[Any]) -> dict[str, Any]:
        cfg, m, d, st = self.cfg, self.model, self.data, self.state
        assert m is not None and d is not None
        lm = m.causal_lm
        try:
            with self.hooks["stop"], m.distribution.scope():
                try:
                    self.loop(callbacks)
                finally:
                    self.hooks["view"].close()
                    self.hooks["metrics"].close()
            final_ckpt = None
            if st.diverged is None and st.step > st.last_saved:
                with m.distribution.scope():
                    final_ckpt = self.hooks["checkpoint"].save_now()  # checks the weights are finite first
            if st.diverged is not None:
                if self.main:
                    status_file.ended(self.out_dir, "diverged", step=st.step, reason=st.diverged)
                last = checkpoint.latest(self.out_dir)
                raise RuntimeFailure(
                    f"{st.diverged} at step {st.step}; stopped",
                    hint=(f"last good checkpoint: {last}" if last else "no checkpoint was written")
                    + "; lower optimizer.learning_rate or set optimizer.clipnorm",
                )
            with m.distribution.scope():
                eval_loss = self.hooks["eval"].final()
        finally:
            lm.preprocessor = m.preprocessor
        if st.stop_signal:
            if self.main:
                status_file.ended(self.out_dir, "interrupted", step=st.step, reason=f"{st.stop_signal} at step {st.step}")
            raise Interrupted(
                f"{st.stop_signal} at step {st.step}/{st.total}: checkpoint saved to {final_ckpt or checkpoint.latest(self.out_dir)}",
                hint=f"resume with: gemma finetune {cfg.source_path or '<config>'} --resume",
            )
        summary = self.summary(eval_loss)
        summary["data"] = counts = d.bundle.counters(st.step)  # every process takes part (a gather)
        self.reporter.info(data_line(counts))
        if self.main:
            atomic_write(self.out_dir / "summary.json", json.dumps(summary, indent=2))
            status_file.ended(self.out_dir, "finished", step=st.step)
        self.hooks["metrics"].finish(summary)
        return summary

    # --------------------------------------------------------------------- results ---
    def _common(self) -> dict[str, Any]:
        m = self.model
        assert m is not None
        return {
            "preset": self.cfg.model.preset,
            "mesh": {"shape": list(m.mesh_shape), "axes": list(self.cfg.mesh.axes), "devices": m.devices},
            "params": m.params,
        }

    def dry_run_summary(self) -> dict[str, Any]:
        m, d = self.model, self.data
        assert m is not None and d is not None
        peek = d.bundle.peek  # this process's rows of the first batch
        rows = self.cfg.data.batch_size
        shape = [rows, peek["token_ids"].shape[1]]
        return {
            "dry_run": True,
            **self._common(),
            "bytes_per_device": sum(v.bytes_per_device for v in m.plan.variables),
            "batch": {"token_ids": shape, "padding_mask": shape, "labels": shape},
            "steps": d.total_steps,
            "steps_per_epoch": d.steps_per_epoch,
            "train_records": d.bundle.info.records,
            "train_sequences": d.train_sequences,
            "eval_sequences": d.eval_sequences,
            "data": {
                "kind": d.bundle.info.kind,
                "first_batch_tokens": int((peek["segment_ids"] > 0).sum()),
                "first_batch_tokens_trained": int(peek["weights"].sum()),
            },
            "warnings": m.plan.warnings,
        }

    def summary(self, eval_loss: float | None) -> dict[str, Any]:
        from gemma_cli.engine.model import load as modellib
        from gemma_cli.engine.train.hooks import loss_plot

        st = self.state
        files = {"metrics": str(self.out_dir / "metrics.jsonl")}
        if "tensorboard" in st.files:
            files["tensorboard"] = st.files["tensorboard"]
        if self.main:
            png = loss_plot(st, self.out_dir, self.cfg.name or "run")
            if png:
                files["loss_curve"] = png
        return {
            "steps": st.step,
            "total_steps": st.total,
            "first_loss": st.history[0]["loss"] if st.history else None,
            "final_loss": st.history[-1]["loss"] if st.history else st.last_loss,
            # the objective's auxiliary metrics over the last log window, by name
            "final_metrics": {k: st.history[-1][k] for k in st.metric_names[1:] if st.history and k in st.history[-1]},
            "eval_loss": eval_loss,
            "evals": st.evals,
            "step_seconds": st.step_seconds,
            "tokens_per_second": st.tokens_per_second or None,
            "time_to_first_step": st.time_to_first_step,
            "weights_bytes_per_device": modellib.device_weight_bytes(self.model.causal_lm) if self.model else None,
            "files": files,
            **self._common(),
            "output_dir": str(self.out_dir),
            "checkpoint": str(checkpoint.latest(self.out_dir)),
            "resumed_from": self.data.start_step or None if self.data else None,
            "wall_seconds": round(time.time() - self.t_start, 2),
        }
