"""Fine-tuning: mesh → layout check → model born sharded → data → compile → fit.

`finetune(cfg, log)` returns a plain dict summary. Progress goes to `log` (stderr), metrics to
`<output_dir>/metrics.jsonl` and TensorBoard, checkpoints to `<output_dir>/checkpoints`.
SIGTERM/SIGINT finish the step, checkpoint and raise `Interrupted` with the resume command;
a NaN/inf loss raises `RuntimeFailure` keeping the last good checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import time
from typing import Any

from gemma_cli.config import dump_config, to_yaml
from gemma_cli.engine import checkpoint, runtime
from gemma_cli.errors import Interrupted, RuntimeFailure, UsageError


def _digest(cfg: Any) -> str:
    d = dump_config(cfg)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def prepare(cfg: Any, log: Any) -> dict[str, Any]:
    """Everything up to a sharded model: returns a dict of live objects (and the plan)."""
    runtime.setup()
    from gemma_cli.engine import layout as meshlib
    from gemma_cli.engine import model as modellib

    n_dev = meshlib.device_count()
    shape = cfg.mesh.resolve(n_dev)
    batch_n = shape[cfg.mesh.axes.index(cfg.mesh.batch_axis)]
    if cfg.data is not None and cfg.data.batch_size % batch_n:
        raise UsageError(
            f"data.batch_size: {cfg.data.batch_size} is not divisible by the '{cfg.mesh.batch_axis}' mesh axis "
            f"({batch_n} on this machine's {n_dev} devices); use a multiple of {batch_n}"
        )
    log.step(f"Planning {cfg.model.preset} on mesh {dict(zip(cfg.mesh.axes, shape, strict=True))} ({n_dev} devices)")
    layout = meshlib.layout_for(cfg)
    plan, distribution, cls = layout.plan, layout.distribution, layout.backbone_class
    for w in plan.warnings:
        log.warn(w)
    # train.seed drives every random init (LoRA kernels, a resized head) as well as the data
    # order: two runs of one config start from the same weights, on every host alike
    import keras

    keras.utils.set_random_seed(cfg.train.seed)
    log.step(f"Loading {cfg.model.preset} ({cfg.model.precision}) sharded over the mesh")
    with distribution.scope():
        causal_lm = modellib.load_causal_lm(cfg.model.preset, cfg.model.precision)
        modellib.apply_lora_and_quantize(causal_lm, cfg.model)
    counts = modellib.param_counts(causal_lm)
    log.info(
        f"  parameters: {counts['total']:,} total, {counts['trainable']:,} trainable "
        f"({100 * counts['trainable'] / max(counts['total'], 1):.3f}%)"
    )
    return {
        "causal_lm": causal_lm,
        "distribution": distribution,
        "plan": plan,
        "mesh_shape": shape,
        "devices": n_dev,
        "backbone_class": cls,
        "params": counts,
        "batch_axis_size": batch_n,
    }


class _Schedule:
    """Learning rate: linear warmup, then constant, cosine or linear decay to 0."""

    def __init__(self, kind: str, lr: float, warmup: int, total: int):
        self.kind, self.lr, self.warmup, self.total = kind, lr, warmup, max(total, 1)

    def build(self) -> Any:
        import keras
        from keras import ops

        kind, lr, warmup, total = self.kind, self.lr, self.warmup, self.total

        class Schedule(keras.optimizers.schedules.LearningRateSchedule):
            def __call__(self, step: Any) -> Any:
                step = ops.cast(step, "float32")
                warm = ops.minimum(1.0, (step + 1.0) / float(max(warmup, 1))) if warmup else 1.0
                frac = ops.clip((step - warmup) / float(max(total - warmup, 1)), 0.0, 1.0)
                if kind == "cosine":
                    decay = 0.5 * (1.0 + ops.cos(math.pi * frac))
                elif kind == "linear":
                    decay = 1.0 - frac
                else:
                    decay = 1.0
                return lr * warm * decay

            def get_config(self) -> dict[str, Any]:
                return {"kind": kind, "lr": lr, "warmup": warmup, "total": total}

        return Schedule()


def make_optimizer(opt_cfg: Any, total_steps: int) -> Any:
    import keras

    lr = _Schedule(opt_cfg.schedule, opt_cfg.learning_rate, opt_cfg.warmup_steps, total_steps).build()
    kw: dict[str, Any] = {"learning_rate": lr, "clipnorm": opt_cfg.clipnorm}
    if opt_cfg.gradient_accumulation_steps > 1:
        kw["gradient_accumulation_steps"] = opt_cfg.gradient_accumulation_steps
    name = opt_cfg.name
    if name == "adamw":
        opt = keras.optimizers.AdamW(weight_decay=opt_cfg.weight_decay, **kw)
    elif name == "adam":
        opt = keras.optimizers.Adam(**kw)
    elif name == "sgd":
        opt = keras.optimizers.SGD(weight_decay=opt_cfg.weight_decay or None, **kw)
    else:
        opt = keras.optimizers.Adafactor(weight_decay=opt_cfg.weight_decay or None, **kw)
    if opt_cfg.exclude_from_weight_decay and (opt_cfg.weight_decay or name == "adamw"):
        opt.exclude_from_weight_decay(var_names=list(opt_cfg.exclude_from_weight_decay))
    return opt


def compile_model(causal_lm: Any, cfg: Any, total_steps: int) -> Any:
    import keras

    opt = make_optimizer(cfg.optimizer, total_steps)
    causal_lm.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
        steps_per_execution=cfg.train.steps_per_execution,
    )
    opt.build(causal_lm.trainable_variables)
    return opt


class _Stop:
    """SIGTERM/SIGINT → finish the step, then stop (a second Ctrl-C aborts at once)."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def finetune(cfg: Any, log: Any, *, resume: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Fine-tune per the config; returns a plain summary dict."""
    out_dir = cfg.output_dir
    t_start = time.time()
    resume_from = None
    if resume:
        resume_from = checkpoint.latest(out_dir)
        if resume_from is None:
            raise UsageError(f"--resume: no checkpoint in {out_dir}/checkpoints", hint="run without --resume to start")
        st = checkpoint.read_state(resume_from)
        if st.get("config_digest") and st["config_digest"] != _digest(cfg):
            log.warn(f"the config differs from the one {resume_from.name} was trained with")
    elif not dry_run and checkpoint.latest(out_dir) is not None:
        raise UsageError(
            f"{out_dir} already holds checkpoints of an earlier run",
            hint="add --resume to continue it, or set train.output_dir=<new dir> (nothing was overwritten)",
        )
    if cfg.data is None:
        raise UsageError("data: the config has no data section; finetune needs one")

    ctx = prepare(cfg, log)
    causal_lm, distribution = ctx["causal_lm"], ctx["distribution"]

    from gemma_cli.engine import data as datalib

    main = runtime.is_main_process()
    tokenizer = causal_lm.preprocessor.tokenizer
    log.step("Reading data")
    # steps: max_steps counts optimizer updates; fit counts micro-batches
    accum = cfg.optimizer.gradient_accumulation_steps
    probe = datalib.load_texts(cfg.data)
    train_ids, train_mask = datalib.token_arrays(probe[0], tokenizer, cfg.data.sequence_length, cfg.data.packing)
    per_epoch = len(train_ids) // cfg.data.batch_size
    if per_epoch == 0:
        raise UsageError(
            f"data.batch_size: {cfg.data.batch_size} is more than the {len(train_ids)} training sequences"
        )
    total = cfg.train.max_steps * accum if cfg.train.max_steps else cfg.train.epochs * per_epoch
    start = 0
    if resume_from is not None:
        start = int(checkpoint.read_state(resume_from)["step"])
        if start >= total:
            raise UsageError(f"--resume: {resume_from.name} is already at step {start} of {total}; nothing to do")
    repeats = math.ceil(total / per_epoch)
    train_ds = datalib.to_dataset(
        train_ids, train_mask, cfg.data.batch_size, cfg.train.seed, cfg.data.shuffle, repeats, skip_batches=start
    )
    eval_ds = None
    n_eval = 0
    if probe[1]:
        eids, emask = datalib.token_arrays(probe[1], tokenizer, cfg.data.sequence_length, cfg.data.packing)
        n_eval = len(eids)
        bn = ctx["batch_axis_size"]
        eb = min(cfg.data.batch_size, n_eval // bn * bn)
        if eb < 1:
            raise UsageError(f"data: {n_eval} eval sequences, fewer than the '{cfg.mesh.batch_axis}' axis ({bn})")
        eval_ds = datalib.to_dataset(eids, emask, eb, 0, False, 1)
    tokens_per_step = cfg.data.batch_size * cfg.data.sequence_length
    useful = float(train_mask[:, 1:].sum()) / max(len(train_mask), 1) * cfg.data.batch_size
    log.info(
        f"  {len(probe[0])} records → {len(train_ids)} sequences of {cfg.data.sequence_length} tokens"
        f"{' (packed)' if cfg.data.packing else ''}; {per_epoch} steps/epoch; "
        f"{n_eval} eval sequences; training {total - start} steps"
        + (f" from step {start}" if start else "")
    )

    if dry_run:
        x, y, sw = next(iter(train_ds))
        summary = {
            "dry_run": True,
            "preset": cfg.model.preset,
            "mesh": {"shape": list(ctx["mesh_shape"]), "axes": list(cfg.mesh.axes), "devices": ctx["devices"]},
            "params": ctx["params"],
            "bytes_per_device": sum(v.bytes_per_device for v in ctx["plan"].variables),
            "batch": {k: list(v.shape) for k, v in x.items()} | {"labels": list(y.shape)},
            "steps": total,
            "steps_per_epoch": per_epoch,
            "train_sequences": len(train_ids),
            "eval_sequences": n_eval,
            "warnings": ctx["plan"].warnings,
        }
        return summary

    with distribution.scope():
        optimizer = compile_model(causal_lm, cfg, total // accum)
        if resume_from is not None:
            log.step(f"Resuming from {resume_from}")
            checkpoint.restore(resume_from, causal_lm, optimizer)

    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(
            f"# resolved config of this run; rerun with: gemma finetune {out_dir}/config.yaml\n" + to_yaml(dump_config(cfg))
        )
    from gemma_cli.engine.progress import TrainCallback

    stopper = _Stop()
    cb = TrainCallback(
        cfg=cfg,
        log=log,
        out_dir=out_dir,
        start=start,
        total=total,
        tokens_per_step=tokens_per_step,
        useful_tokens_per_step=useful,
        eval_ds=eval_ds,
        stopper=stopper,
        main=main,
        save=lambda step, loss: checkpoint.save(
            out_dir,
            step,
            causal_lm,
            causal_lm.optimizer,
            {"loss": loss, "config_digest": _digest(cfg), "data_position": step, "total_steps": total},
            cfg.train.keep_checkpoints,
            write=main,
            preprocessor=preprocessor,
        ),
    )
    log.step(f"Training {total - start} steps (batch {cfg.data.batch_size} × {cfg.data.sequence_length} tokens)")
    # the batches are already tokenized: fit must not run the preprocessor again
    preprocessor, causal_lm.preprocessor = causal_lm.preprocessor, None
    with stopper, distribution.scope():
        try:
            causal_lm.fit(train_ds, epochs=1, steps_per_epoch=total - start, verbose=0, callbacks=[cb])
        finally:
            cb.close()
    final_ckpt = None
    if cb.diverged is None and cb.step > cb.last_saved:
        with distribution.scope():
            final_ckpt = cb.save_now()  # checks the weights are finite first
    if cb.diverged is not None:
        last = checkpoint.latest(out_dir)
        raise RuntimeFailure(
            f"{cb.diverged} at step {cb.step}; stopped",
            hint=(f"last good checkpoint: {last}" if last else "no checkpoint was written")
            + "; lower optimizer.learning_rate or set optimizer.clipnorm",
        )
    with distribution.scope():
        summary = cb.summary()
    causal_lm.preprocessor = preprocessor
    if stopper.signal:
        raise Interrupted(
            f"{stopper.signal} at step {cb.step}/{total}: checkpoint saved to {final_ckpt or checkpoint.latest(out_dir)}",
            hint=f"resume with: gemma finetune {cfg.source_path or '<config>'} --resume",
        )
    summary.update(
        {
            "preset": cfg.model.preset,
            "output_dir": str(out_dir),
            "checkpoint": str(checkpoint.latest(out_dir)),
            "mesh": {"shape": list(ctx["mesh_shape"]), "axes": list(cfg.mesh.axes), "devices": ctx["devices"]},
            "params": ctx["params"],
            "resumed_from": start or None,
            "wall_seconds": round(time.time() - t_start, 2),
        }
    )
    if main:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
