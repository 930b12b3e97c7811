"""Preference losses (`train.method: dpo`): DPO, IPO, hinge, SimPO and ORPO on chosen/rejected pairs.

The batch holds each pair's two sequences side by side, rows [c0, r0, c1, r1, ...] (the data
pipeline keeps them on one stream, so on one device). Their loss weights mark the completion
tokens. `Preference` computes each row's summed log-probability of its completion from the
backbone's hidden states (the output head applied in chunks when `train.loss_chunk` asks for it,
as the SFT loss does), the reference model's the same way from a second forward pass traced
inside `reference()` (LoRA: the adapters switched off, `engine/model/lora.adapters_off`) or, for
a full fine-tune, from the batch (`x["ref_logps"]`, computed once before training), and
then one of the losses below, the formulas of TRL (`trl.DPOTrainer` / `CPOTrainer` /
`ORPOTrainer`), which tests/test_dpo.py checks to 1e-5:

    Δ = (logπ(c) − logπ_ref(c)) − (logπ(r) − logπ_ref(r))     summed over completion tokens
    sigmoid  −(1−ε)·logσ(βΔ) − ε·logσ(−βΔ)                   (DPO; ε = label_smoothing: cDPO)
    ipo      (Δ̄ − 1/(2β))²,  Δ̄ with each log-ratio averaged over its completion tokens
    hinge    max(0, 1 − βΔ)
    simpo    −(1−ε)·logσ(β(ā_c − ā_r) − γ) − ε·logσ(−(β(ā_c − ā_r) − γ)),  ā: mean token log-prob
    orpo     NLL(c) − λ·logσ(log odds(ā_c) − log odds(ā_r)),  odds(p) = p/(1−p), no reference

Metrics (each a batch mean over pairs): `rewards/chosen` and `rewards/rejected` (β times the
log-ratio; SimPO and ORPO: β times the mean token log-prob), `rewards/margin`,
`rewards/accuracy` (share of pairs whose chosen reward is higher), `logps/chosen`,
`logps/rejected` (summed log-probs of the policy), `logps/accuracy` (share of pairs whose chosen
answer the policy itself finds likelier: the preference accuracy of the model alone, which the
eval set reports before training too, where the rewards are all 0).

Example:
    >>> obj = Preference("sigmoid", beta=0.1, reference=adapters_off)
    >>> patches.objective.install(causal_lm, obj)
"""

from __future__ import annotations

from typing import Any

from gemma_cli.engine.objectives import Objective, Output

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen", "logps/rejected",
           "logps/accuracy")
NO_REFERENCE = ("simpo", "orpo")


def pair_losses(
    loss: str,
    chosen: Any,
    rejected: Any,
    ref_chosen: Any,
    ref_rejected: Any,
    len_chosen: Any,
    len_rejected: Any,
    *,
    beta: float,
    gamma: float = 0.5,
    lam: float = 1.0,
    label_smoothing: float = 0.0,
) -> tuple[Any, Any, Any]:
    """(per-pair loss, chosen rewards, rejected rewards) from per-sequence summed log-probs.

    Args:
        loss: str. `sigmoid`, `ipo`, `hinge`, `simpo` or `orpo`.
        chosen, rejected: [P] summed completion log-probs of the policy.
        ref_chosen, ref_rejected: [P] the reference's (ignored by simpo and orpo).
        len_chosen, len_rejected: [P] completion tokens.
        beta, gamma, lam, label_smoothing: the `dpo:` settings.

    ORPO's NLL term is not part of the per-pair loss (the objective adds it over tokens).
    """
    from keras import ops

    ls = label_smoothing
    n_c = ops.maximum(len_chosen, 1.0)
    n_r = ops.maximum(len_rejected, 1.0)
    if loss in NO_REFERENCE:
        avg_c, avg_r = chosen / n_c, rejected / n_r
        rc, rr = beta * avg_c, beta * avg_r
        if loss == "simpo":
            z = beta * (avg_c - avg_r) - gamma
            return -(1 - ls) * ops.log_sigmoid(z) - ls * ops.log_sigmoid(-z), rc, rr
        if loss == "orpo":
            # log odds(p) = log p − log(1 − p), p = exp(mean token log-prob)
            log_odds = (avg_c - avg_r) - (ops.log1p(-ops.exp(avg_c)) - ops.log1p(-ops.exp(avg_r)))
            return -lam * ops.log_sigmoid(log_odds), rc, rr
    lc, lr = chosen - ref_chosen, rejected - ref_rejected
    rc, rr = beta * lc, beta * lr
    delta = lc - lr
    if loss == "sigmoid":
        return -(1 - ls) * ops.log_sigmoid(beta * delta) - ls * ops.log_sigmoid(-beta * delta), rc, rr
    if loss == "hinge":
        return ops.relu(1 - beta * delta), rc, rr
    if loss == "ipo":
        d = lc / n_c - lr / n_r
        return ops.square(d - 1 / (2 * beta)), rc, rr
    raise ValueError(f"unknown preference loss {loss!r}")


class Preference(Objective):
    """The preference objective of `train.method: dpo`.

    Args:
        loss: str. `sigmoid`, `ipo`, `hinge`, `simpo` or `orpo`.
        beta: float. Defaults to 0.1.
        gamma: float. SimPO's margin. Defaults to 0.5.
        lam: float. ORPO's odds-ratio weight. Defaults to 1.0.
        label_smoothing: float. Defaults to 0.
        reference: callable(causal_lm) → context manager, `"batch"`, or None. Inside the
            context manager the model is the reference (LoRA: `adapters_off`); `"batch"`: each
            row's reference log-prob was computed before training and comes as
            `x["ref_logps"]` [B]; None means no reference (log-probs 0; always so for simpo and
            orpo).
        chunk: int | None. Sequence positions per chunk of the output head; None: whole rows.
    """

    name = "dpo"
    metric_names = METRICS
    wants_logits = False  # the head is applied here, to the policy's and the reference's hidden states
    batch_keys = ("ref_logps",)  # the precomputed reference (full fine-tune); never fed to the model

    def __init__(self, loss: str = "sigmoid", beta: float = 0.1, gamma: float = 0.5, lam: float = 1.0,
                 label_smoothing: float = 0.0, reference: Any = None, chunk: int | None = None):
        self.loss, self.beta, self.gamma, self.lam, self.ls = loss, beta, gamma, lam, label_smoothing
        self.reference = None if loss in NO_REFERENCE else reference
        self.chunk = chunk

    def _token_ce(self, model: Any, hidden: Any, y: Any, with_matches: bool) -> tuple[Any, Any]:
        """Per-token cross-entropy [B, S] of the labels (and argmax matches)."""
        from gemma_cli.engine.objectives.cross_entropy import token_losses

        return token_losses(model, hidden, y, self.chunk or hidden.shape[1], model.loss, with_matches=with_matches)

    def compute(self, model: Any, x: Any, y: Any, y_pred: Any, sample_weight: Any, training: bool) -> Output:
        import jax
        from keras import ops

        w = ops.cast(sample_weight, "float32")
        ce, matches = self._token_ce(model, y_pred, y, with_matches=not training)
        tok_logp = -ops.cast(ce, "float32") * w
        logp = ops.reshape(ops.sum(tok_logp, axis=1), (-1, 2))  # [pairs, (chosen, rejected)]
        lens = ops.reshape(ops.sum(w, axis=1), (-1, 2))
        if self.reference == "batch":  # precomputed before training, carried by the batch
            ref = jax.lax.stop_gradient(ops.reshape(ops.cast(x["ref_logps"], "float32"), (-1, 2)))
        elif self.reference is not None:
            with self.reference(model):
                ref_hidden = model.backbone(x, training=False)
            ref_ce, _ = self._token_ce(model, jax.lax.stop_gradient(ref_hidden), y, with_matches=False)
            ref = jax.lax.stop_gradient(ops.reshape(ops.sum(-ops.cast(ref_ce, "float32") * w, axis=1), (-1, 2)))
        else:
            ref = ops.zeros_like(logp)
        per_pair, rc, rr = pair_losses(
            self.loss, logp[:, 0], logp[:, 1], ref[:, 0], ref[:, 1], lens[:, 0], lens[:, 1],
            beta=self.beta, gamma=self.gamma, lam=self.lam, label_smoothing=self.ls,
        )
        loss = ops.mean(per_pair)
        if self.loss == "orpo":  # plus the SFT loss on the chosen answers (mean over their tokens)
            loss = loss - ops.sum(logp[:, 0]) / ops.maximum(ops.sum(lens[:, 0]), 1.0)
        rc, rr = jax.lax.stop_gradient(rc), jax.lax.stop_gradient(rr)
        pol = jax.lax.stop_gradient(logp)
        metrics = {
            "rewards/chosen": ops.mean(rc),
            "rewards/rejected": ops.mean(rr),
            "rewards/margin": ops.mean(rc - rr),
            "rewards/accuracy": ops.mean(ops.cast(rc > rr, "float32")),
            "logps/chosen": ops.mean(pol[:, 0]),
            "logps/rejected": ops.mean(pol[:, 1]),
            "logps/accuracy": ops.mean(ops.cast(pol[:, 0] > pol[:, 1], "float32")),
        }
        return Output(loss, metrics, matches)
