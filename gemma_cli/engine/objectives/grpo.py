"""GRPO and its variants (DAPO, Dr. GRPO): the clipped policy-gradient objective on sampled
completions scored by reward functions (`train.method: grpo`).

Per completion token t of sequence i, with the policy's log-probability `logp`, the rollout's
`old` (the same weights when each rollout is used for one update: `iterations: 1`) and the
advantage `A_i` of the sequence:

    ratio = exp(logp - old)
    loss_t = -min(ratio * A_i, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A_i) + beta * kl_t
    kl_t = exp(ref - logp) - (ref - logp) - 1            (Schulman's k3, only when beta > 0)

reduced over the completion tokens (mask m) as `loss`:
- `grpo`: mean over each sequence's tokens, then over sequences;
- `dapo`: sum over all tokens / number of tokens in the batch (the token mean; the default);
- `dr_grpo`: sum over all tokens / (sequences × max_completion_length).

Advantages come from the rewards of the G completions of each prompt (`advantages`): reward
minus the group mean, divided by the group's std (`scale_rewards: group`), the batch's std
(`batch`) or not at all (`none`), std + 1e-4 as TRL does. These are TRL's definitions
(`trl.GRPOTrainer._compute_loss`, token-level importance sampling); tests/test_grpo.py checks
each `loss` type, the clipping, the KL and the advantages against TRL on fixed tensors.

Log-probabilities are of the logits divided by the sampling temperature (as TRL computes them),
from the backbone's hidden states through the output head in sequence chunks (never the full
[B, S, V] logits at once), with the per-token entropy from the same chunks.

Only the completion's positions go through the head: with `completion_start` [B] in the batch
(the position of each row's first completion label), the hidden states, labels and masks are
gathered into a [B, max_completion_length] window first (TRL's `logits_to_keep`), so the vocabulary
projection — most of a small Gemma's step — costs completion tokens, not prompt + completion.

Batch inputs (besides token_ids and padding_mask): `advantages` [B]; `completion_start` [B];
`old_logps` [B, S] when
`iterations > 1`; `ref_logps` [B, S] when beta > 0 and the reference is not this model with its
LoRA adapters off (which is computed in the step). `y` is the next token, `sample_weight` the
completion mask (1 on completion tokens, 0 on prompt and padding).
"""

from __future__ import annotations

from typing import Any

from gemma_cli.engine.objectives import Objective, Output

LOSSES = ("grpo", "dapo", "dr_grpo")
SCALES = ("group", "batch", "none")


def advantages(rewards: Any, group: int, scale: str = "group") -> tuple[Any, Any]:
    """(advantages [N], std-is-zero flags [N]) of rewards [N] in groups of `group` consecutive
    completions (numpy; NaN rewards — every function said "does not apply" — are left out of
    the group statistics and get advantage 0)."""
    import numpy as np

    r = np.asarray(rewards, dtype=np.float64)
    g = r.reshape(-1, group)
    with np.errstate(invalid="ignore"):
        mean = np.repeat(np.nanmean(g, axis=1), group)
        if scale == "batch":
            std = np.full_like(r, _nanstd(r))
        else:
            std = np.repeat(np.array([_nanstd(row) for row in g]), group)
    adv = r - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    adv = np.where(np.isnan(adv), 0.0, adv)
    return adv.astype(np.float32), np.isclose(std, 0.0)


def _nanstd(x: Any) -> float:
    """Unbiased std ignoring NaNs (torch.std's default correction, as TRL's nanstd)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(np.std(x, ddof=1)) if x.size > 1 else float("nan")


def token_logps(causal_lm: Any, hidden: Any, labels: Any, chunk: int, temperature: float = 1.0,
                with_entropy: bool = False) -> tuple[Any, Any]:
    """Log-probabilities [B, S] of `labels` under the head applied to `hidden` [B, S, H],
    logits / temperature, by chunks of `chunk` positions; with `with_entropy` also each
    position's entropy [B, S] (else None)."""
    import jax
    import jax.numpy as jnp

    from gemma_cli.engine.objectives.cross_entropy import _chunks, _label_chunks, _logits, _unchunk

    h, s = _chunks(hidden, chunk)
    y = _label_chunks(jnp.asarray(labels).astype("int32"), h.shape[0], chunk, s)

    @jax.checkpoint
    def one(args: Any) -> Any:
        hc, yc = args
        logits = jnp.asarray(_logits(causal_lm, hc), dtype="float32") / temperature
        logp_all = jax.nn.log_softmax(logits, axis=-1)
        logp = jnp.take_along_axis(logp_all, yc[..., None], axis=-1)[..., 0]
        if not with_entropy:
            return logp
        return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)

    out = jax.lax.map(one, (h, y))
    if with_entropy:
        return _unchunk(out[0], s), _unchunk(out[1], s)
    return _unchunk(out, s), None


def completion_window(x: Any, seq: int, width: int) -> tuple[Any, Any]:
    """(take, inside): `take` maps [B, S, ...] arrays to their [B, width, ...] windows starting at
    `x["completion_start"]`; `inside` [B, width] is 1 where the window is within the sequence
    (positions past S read the last one; multiply the mask by `inside`). Without
    `completion_start`, or when the window would be the whole sequence: the identity and 1."""
    import jax.numpy as jnp

    start = x.get("completion_start") if isinstance(x, dict) else None
    if start is None or width >= seq:
        return (lambda a: a), 1.0
    pos = jnp.asarray(start, dtype="int32")[:, None] + jnp.arange(width, dtype="int32")[None, :]
    idx = jnp.minimum(pos, seq - 1)

    def take(a: Any) -> Any:
        a = jnp.asarray(a)
        return jnp.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), axis=1)

    return take, (pos < seq).astype("float32")


def policy_loss(logp: Any, old: Any, ref: Any, adv: Any, mask: Any, *, loss: str, epsilon: float,
                epsilon_high: float, beta: float, max_completion_length: int) -> tuple[Any, dict[str, Any]]:
    """The GRPO loss of per-token log-probabilities [B, S] and its diagnostics (jax.numpy).

    Args:
        logp: the policy's per-token log-probabilities (differentiated).
        old: the rollout's (None: `stop_gradient(logp)`, one update per rollout).
        ref: the reference's (None unless beta > 0).
        adv: advantages [B].
        mask: completion mask [B, S] (float).
    Returns:
        (loss, {"clip_low", "clip_high", "clip_region", "kl"}): clip shares are token means
        over the mask; kl is the masked token mean (0 when beta == 0).
    """
    import jax
    import jax.numpy as jnp

    old = jax.lax.stop_gradient(logp) if old is None else old
    a = adv[:, None]
    ratio = jnp.exp(logp - old)
    clipped = jnp.clip(ratio, 1 - epsilon, 1 + epsilon_high)
    per_token = -jnp.minimum(ratio * a, clipped * a)
    kl = jnp.zeros_like(logp)
    if beta != 0.0:
        d = ref - logp
        kl = jnp.exp(d) - d - 1
        per_token = per_token + beta * kl
    m = mask.astype(per_token.dtype)
    tokens = jnp.maximum(m.sum(), 1.0)
    if loss == "grpo":
        out = jnp.mean((per_token * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0))
    elif loss == "dapo":
        out = (per_token * m).sum() / tokens
    elif loss == "dr_grpo":
        out = (per_token * m).sum() / (per_token.shape[0] * max_completion_length)
    else:
        raise ValueError(f"unknown GRPO loss {loss!r}; one of {', '.join(LOSSES)}")
    low = ((ratio < 1 - epsilon) & (a < 0)).astype(m.dtype)
    high = ((ratio > 1 + epsilon_high) & (a > 0)).astype(m.dtype)
    stats = {
        "clip_low": (low * m).sum() / tokens,
        "clip_high": (high * m).sum() / tokens,
        "clip_region": (jnp.maximum(low, high) * m).sum() / tokens,
        "kl": jax.lax.stop_gradient((kl * m).sum() / tokens),
    }
    return out, stats


class GRPO(Objective):
    """The GRPO objective on a batch of scored completions (see the module docstring).

    Args:
        loss: str. `grpo`, `dapo` or `dr_grpo`.
        epsilon: float. Lower clip range.
        epsilon_high: float. Upper clip range (clip-higher).
        beta: float. KL coefficient (0: no reference pass).
        max_completion_length: int. Dr. GRPO's normaliser.
        temperature: float. The rollouts' sampling temperature (logits are divided by it).
        chunk: int. Sequence positions per chunk of the output head.
        reference: Callable | None. With beta > 0: a context manager factory under which the
            model is its reference (`engine/model/lora.adapters_off`: LoRA off, computed in the
            step), or None to read `ref_logps` from the batch.
    """

    name = "grpo"
    metric_names = ("kl", "entropy", "clip_low", "clip_high", "clip_region")
    wants_logits = False
    batch_keys = ("advantages", "completion_start", "old_logps", "ref_logps")

    def __init__(self, *, loss: str = "dapo", epsilon: float = 0.2, epsilon_high: float | None = None,
                 beta: float = 0.0, max_completion_length: int = 256, temperature: float = 1.0,
                 chunk: int = 128, reference: Any = None):
        if loss not in LOSSES:
            raise ValueError(f"unknown GRPO loss {loss!r}; one of {', '.join(LOSSES)}")
        self.loss, self.epsilon, self.beta = loss, epsilon, beta
        self.epsilon_high = epsilon if epsilon_high is None else epsilon_high
        self.max_completion_length, self.temperature = max_completion_length, temperature
        self.chunk, self.reference = chunk, reference

    def compute(self, model: Any, x: Any, y: Any, y_pred: Any, sample_weight: Any, training: bool) -> Output:
        import jax
        import jax.numpy as jnp

        mask = jnp.asarray(sample_weight, dtype="float32")
        take, inside = completion_window(x, y_pred.shape[1], self.max_completion_length)
        y = take(jnp.asarray(y))
        mask = take(mask) * inside
        logp, entropy = token_logps(model, take(y_pred), y, self.chunk, self.temperature, with_entropy=True)
        ref = None
        if self.beta != 0.0:
            if self.reference is not None:
                inputs = {k: x[k] for k in ("token_ids", "padding_mask")}
                with self.reference(model):
                    ref_hidden = model.backbone(inputs, training=False)
                ref, _ = token_logps(model, take(ref_hidden), y, self.chunk, self.temperature)
                ref = jax.lax.stop_gradient(ref)
            else:
                ref = take(x["ref_logps"])
        old = x.get("old_logps") if isinstance(x, dict) else None
        if old is not None:
            old = take(old)
        loss, stats = policy_loss(logp, old, ref, x["advantages"], mask, loss=self.loss, epsilon=self.epsilon,
                                  epsilon_high=self.epsilon_high, beta=self.beta,
                                  max_completion_length=self.max_completion_length)
        tokens = jnp.maximum(mask.sum(), 1.0)
        stats["entropy"] = jax.lax.stop_gradient((entropy * mask).sum() / tokens)
        return Output(loss, {k: stats[k] for k in self.metric_names})
