"""Teacher-forced log-probabilities of token sequences under a live model, batched and sharded.

`Scorer(causal_lm, distribution)` scores `(ids, weights)` documents — the ids and per-token
loss weights the data pipeline makes for training (`engine/data/tokenize.py`: `weights[i]` is
the weight of predicting token i) — and returns per document the weighted sum of the tokens'
log-probabilities, the weight total, and whether every weighted token is the model's argmax
(lm-eval's `is_greedy`).

The log-probabilities are training's: the backbone's hidden states, then the model's own head
by sequence chunks (`objectives.cross_entropy.token_losses`, the chunked loss, so a 262k
vocabulary never materialises [batch, sequence, vocab] float32 logits at once), one jitted
function over the model's variables under its distribution. Batches have a fixed size (a
multiple of the mesh's batch axis; padding rows are dropped) and the sequence is padded to a
power of two (at least 16), so a few shapes compile once each.
"""

from __future__ import annotations

import math
from typing import Any

MIN_BUCKET = 16


def bucket(n: int) -> int:
    """The padded sequence length for `n` tokens: the next power of two, at least MIN_BUCKET."""
    return max(MIN_BUCKET, 1 << max(n - 1, 1).bit_length())


class Scorer:
    """Log-probabilities of given tokens under a CausalLM as it is now.

    Args:
        causal_lm: keras_hub.models.CausalLM. The model (its weights are read at each call).
        distribution: keras Distribution | None. The one its variables live under.
        batch_axis: int. Devices the batch splits over. Defaults to 1.
        batch_size: int | None. Documents per forward pass, rounded up to the batch axis.
            Defaults to the batch axis.
        chunk_bytes: int. Float32 logits per chunk of the head (bytes). Defaults to 256 MiB.

    Example:
        >>> s = Scorer(lm, layout.distribution, batch_axis=4)
        >>> [(logp, n, greedy)] = s.score([(ids, weights)])
    """

    def __init__(self, causal_lm: Any, distribution: Any, *, batch_axis: int = 1, batch_size: int | None = None,
                 chunk_bytes: int = 1 << 28):
        self.lm, self.distribution = causal_lm, distribution
        self.batch_axis = max(batch_axis, 1)
        want = batch_size or self.batch_axis
        self.batch_size = math.ceil(want / self.batch_axis) * self.batch_axis
        self.chunk_bytes = chunk_bytes
        self._fn: Any = None
        self.compiles = 0
        self._shapes: set[tuple[int, int]] = set()
        self.tokens = 0  # forward tokens (padding included), for throughput

    def _build(self) -> Any:
        import jax
        import keras

        from gemma_cli.engine.objectives.cross_entropy import token_losses

        lm = self.lm
        variables = lm.variables
        loss_obj = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        vocab = int(lm.backbone.vocabulary_size)

        def fn(values: list[Any], ids: Any, mask: Any, vision: dict[str, Any] | None = None) -> Any:
            with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
                hidden = lm.backbone({"token_ids": ids, "padding_mask": mask, **(vision or {})})
                per_row = max(ids.shape[0] // self.batch_axis, 1) * vocab * 4
                chunk = max(1, min(ids.shape[1], 2 ** int(math.log2(max(self.chunk_bytes // per_row, 1)))))
                nll, matches = token_losses(lm, hidden[:, :-1], ids[:, 1:], chunk, loss_obj, with_matches=True)
            return -nll.astype("float32"), matches

        return jax.jit(fn)

    def score(self, docs: list[tuple[Any, Any]]) -> list[tuple[float, float, bool]]:
        """(weighted log-prob sum, weight total, every weighted token greedy) per document.

        Args:
            docs: list of (ids, weights) or (ids, weights, pixels): int token ids starting
                with `<bos>`, float weights of predicting each token (weights[0] is unused), and
                for a multimodal prompt the pixels of its images ([S, S, 3] each, in order).
        """
        import numpy as np

        if self._fn is None:
            self._fn = self._build()
        out: list[tuple[float, float, bool]] = []
        values = [v.value for v in self.lm.variables]
        for i in range(0, len(docs), self.batch_size):
            chunk = docs[i : i + self.batch_size]
            rows = chunk + [chunk[-1]] * (self.batch_size - len(chunk))
            seq = bucket(max(len(d[0]) for d in rows))
            ids = np.zeros((len(rows), seq), dtype="int32")
            mask = np.zeros((len(rows), seq), dtype=bool)
            w = np.zeros((len(rows), seq), dtype="float32")
            for r, (x, wt, *_) in enumerate(rows):
                ids[r, : len(x)] = x
                mask[r, : len(x)] = True
                w[r, : len(x)] = wt
            if (len(rows), seq) not in self._shapes:
                self._shapes.add((len(rows), seq))
                self.compiles += 1
            # a vision model's backbone takes image inputs even for text (then all empty)
            vision = self._vision(ids, rows) if getattr(self.lm.backbone, "vision_encoder", None) is not None else None
            logp, matches = self._forward(values, ids, mask, vision)
            logp, matches = np.asarray(logp, dtype="float64"), np.asarray(matches)
            wt = w[:, 1:]
            self.tokens += int(mask.sum())
            for r in range(len(chunk)):
                sel = wt[r] > 0
                out.append((float((logp[r] * wt[r]).sum()), float(wt[r].sum()), bool(np.all(matches[r][sel] > 0.5))))
        return out

    def _vision(self, ids: Any, rows: list[Any]) -> dict[str, Any]:
        """`images`, `vision_indices`, `vision_mask` of a batch whose documents carry the pixels
        of their images (a third element), placed where the image tokens sit."""
        import numpy as np

        from gemma_cli.engine.data.images import SOFT, VisionSpec, vision_batch
        from gemma_cli.engine.model.load import tokenizer_of

        spec = VisionSpec.of_model(self.lm)
        soft = int(tokenizer_of(self.lm).token_to_id(SOFT))
        images = np.zeros((len(rows), spec.max_images, spec.image_size, spec.image_size, 3), dtype=np.float32)
        for r, d in enumerate(rows):
            for j, px in enumerate(d[2] if len(d) > 2 else []):
                images[r, j] = px
        return vision_batch(ids, soft, images, spec)

    def _forward(self, values: list[Any], ids: Any, mask: Any, vision: dict[str, Any] | None = None) -> Any:
        import keras

        dist = self.distribution
        if dist is None:
            return self._fn(values, ids, mask, vision)
        with dist.scope():
            ids_d = keras.distribution.distribute_tensor(ids, dist.get_data_layout(ids.shape))
            mask_d = keras.distribution.distribute_tensor(mask, dist.get_data_layout(mask.shape))
            vis = {k: keras.distribution.distribute_tensor(v, dist.get_data_layout(v.shape)) for k, v in (vision or {}).items()}
            return self._fn(values, ids_d, mask_d, vis or None)
