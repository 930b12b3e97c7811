"""Sampling from a live model: batched generation under the model's distribution.

`Sampler(causal_lm, distribution, generate_cfg)` samples from whatever weights the model holds
now — a model just loaded for `gemma generate`, or the policy being trained, LoRA adapters
included, under the training mesh with no second copy of the weights (a training loop
calls `causal_lm.jax_state_sync()` first: keras keeps the live training state outside the
variables between steps). Loading a model to sample from is `engine/sample/generate.py`.

The batch is padded to a fixed size that is a multiple of the mesh's batch axis (keras-hub
raises IndivisibleError when one prompt meets a batch axis of 2); the padding is dropped from
the results. keras-hub compiles one generate function per input shape: every batch has the
same shape, so it compiles once.

`--chat` prompts are token ids, not text: the data pipeline's chat renderer builds them
(`gemma_cli.engine.data.chat_prompt_ids`), turn markers by vocabulary id, so the model is
prompted with exactly the prefix that chat fine-tuning trained it to answer, and generation
stops at `<end_of_turn>`.

Images (`gemma generate --chat --image`, a multimodal model): each prompt's user turn starts
with the images, rendered and tokenized as training renders them (engine/data: the image
tokens, `vision_indices` and `vision_mask`), and keras-hub's Gemma 3 `generate_step` takes them.
"""

from __future__ import annotations

import math
import time
from typing import Any

from gemma_cli.engine.core.report import NullReporter
from gemma_cli.errors import UsageError


def make_sampler(gen: Any) -> Any:
    import keras_hub

    s = gen.sampler
    if s == "greedy":
        return keras_hub.samplers.GreedySampler()
    if s == "top_k":
        return keras_hub.samplers.TopKSampler(k=gen.top_k, seed=gen.seed, temperature=gen.temperature)
    if s == "top_p":
        return keras_hub.samplers.TopPSampler(p=gen.top_p, seed=gen.seed, temperature=gen.temperature)
    if s == "random":
        return keras_hub.samplers.RandomSampler(seed=gen.seed, temperature=gen.temperature)
    return keras_hub.samplers.BeamSampler(num_beams=gen.num_beams)


def limit_new_tokens(sampler: Any, new_tokens: int) -> Any:
    """Make a keras-hub sampler stop its loop once the longest prompt has `new_tokens` new
    tokens, instead of at the end of the token buffer: the same tokens where they are read (each
    row's first `new_tokens`, the random draws of each iteration unchanged), the rest of the
    buffer left as padding. A fixed buffer sized for the longest prompt then costs the
    completion length, not the buffer length, for batches of short prompts (GRPO rollouts).
    Samplers whose loop is not keras-hub's (prompt, cache, index, mask) are left as they are."""
    import keras

    plain = type(sampler).run_loop

    def run_loop(cond: Any, body: Any, model: Any = None, loop_vars: Any = None, maximum_iterations: Any = None) -> Any:
        if loop_vars is None or len(loop_vars) != 4:
            return plain(sampler, cond, body, model=model, loop_vars=loop_vars, maximum_iterations=maximum_iterations)
        ops = keras.ops
        end = ops.max(ops.sum(ops.cast(loop_vars[3], "int32"), axis=-1)) + new_tokens

        def bounded(prompt: Any, cache: Any, index: Any, mask: Any) -> Any:
            return ops.logical_and(cond(prompt, cache, index, mask), index < end)

        return plain(sampler, bounded, body, model=model, loop_vars=loop_vars, maximum_iterations=maximum_iterations)

    object.__setattr__(sampler, "run_loop", run_loop)
    return sampler


class Sampler:
    """Generation from a live CausalLM under its distribution; `__call__` generates for many prompts.

    Args:
        causal_lm: keras_hub.models.CausalLM. The model to sample from, as it is now. A model
            compiled for training keeps its training state: only its sampler is set.
        distribution: keras Distribution. The one the model's variables live under.
        generate_cfg: GenerateConfig. The sampler and its settings (`generate:` section).
        batch_axis: int. Devices the batch splits over. Defaults to 1.
        batch_size: int | None. Prompts per batch, rounded up to the batch axis.
        reporter: Reporter | None. Per-batch timings (debug lines). Defaults to silent.
    """

    def __init__(self, causal_lm: Any, distribution: Any, generate_cfg: Any, *, batch_axis: int = 1,
                 batch_size: int | None = None, reporter: Any = None):
        from gemma_cli.engine.model.load import tokenizer_of

        self.lm, self.distribution, self.log = causal_lm, distribution, reporter or NullReporter()
        self.batch_axis = max(batch_axis, 1)
        self.generate_cfg = generate_cfg
        sampler = make_sampler(generate_cfg)
        with distribution.scope():
            if getattr(causal_lm, "compiled", False):  # a model in training: keep its compiled state
                causal_lm.sampler = sampler
                causal_lm.generate_function = None
            else:
                causal_lm.compile(sampler=sampler)
        want = batch_size or self.batch_axis
        self.batch_size = math.ceil(want / self.batch_axis) * self.batch_axis
        self.tokenizer = tokenizer_of(causal_lm)
        self.compiles = 0
        self._shapes: set[tuple[int, int]] = set()

    def _stop_ids(self, chat: bool) -> Any:
        tok = self.tokenizer
        ids = [tok.end_token_id]
        if chat:
            from gemma_cli.engine.data import Encoder

            ids.append(Encoder(tok).special(self.chat_format.end_turn))
        return tuple(ids)

    @property
    def chat_format(self) -> Any:
        """The model family's turn format (engine/families)."""
        from gemma_cli.engine.data.render import chat_format_for

        return chat_format_for(self.lm.backbone)

    def chat_prompt_ids(self, prompt: str | list[tuple[str, str]], images: list[Any] | None = None) -> list[int]:
        """The token ids `--chat` feeds the model for a user message (or a conversation
        prefix): the chat renderer's, as training saw them (images first in the user turn)."""
        from gemma_cli.engine.data import Encoder, Renderer, chat_prompt_ids

        if not images:
            return chat_prompt_ids(self.tokenizer, prompt, self.chat_format)
        ids_per, _ = Encoder(self.tokenizer, self.vision).pieces_of(Renderer.for_chat(self.chat_format).prompt(prompt, images))
        return [t for ids in ids_per for t in ids]

    @property
    def vision(self) -> Any:
        from gemma_cli.engine.data.images import VisionSpec

        return VisionSpec.of_model(self.lm)

    def __call__(
        self, prompts: list[str], *, max_length: int | None = None, max_new_tokens: int | None = None,
        chat: bool = False, echo: bool = False, images: list[Any] | None = None,
        prompt_images: list[list[Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Completions of `prompts`. Give `max_new_tokens` (tokens after the prompt; the
        generated length is rounded up to a multiple of 64 so that similar prompts share one
        compilation, and the extra tokens are dropped) or `max_length` (prompt included).
        `images` are shown with every prompt (`--image`), `prompt_images[i]` with prompt i only
        (the image parts of a JSONL chat prompt, placed where the prompt's text marks them)."""
        if max_length is None and max_new_tokens is None:
            raise ValueError("give max_length or max_new_tokens")
        results: list[dict[str, Any]] = []
        stop = self._stop_ids(chat)
        per = [list(images or []) + list(x or []) for x in (prompt_images or [[]] * len(prompts))]
        if any(per) and (not chat or self.vision is None):
            raise UsageError("images need --chat and a multimodal model (one with a vision encoder)")
        self._max_new = max_new_tokens if max_length is None else None
        for i in range(0, len(prompts), self.batch_size):
            chunk = prompts[i : i + self.batch_size]
            pad = self.batch_size - len(chunk)
            batch = chunk + [chunk[-1]] * pad
            self._images = per[i : i + len(chunk)] + [per[i + len(chunk) - 1]] * pad  # per row
            if max_length is None:
                longest = max(len(self.chat_prompt_ids(p, im)) if chat else len(self._ids(p)) + 1
                              for p, im in zip(batch, self._images, strict=True))
                max_length = -(-(longest + max_new_tokens) // 64) * 64
                fixed = False
            else:
                fixed = True
            shape = (len(batch), max_length)
            first = shape not in self._shapes
            self._shapes.add(shape)
            t0 = time.perf_counter()
            with self.distribution.scope():
                if chat:
                    outs = self._chat_batch(batch, max_length, stop)
                elif self.lm.preprocessor is None:  # no TensorFlow: token ids in, token ids out
                    outs = self._text_batch(batch, max_length, stop)
                else:
                    outs = self.lm.generate(batch, max_length=max_length, stop_token_ids=stop, strip_prompt=False)
            dt = time.perf_counter() - t0
            if first:
                self.compiles += 1
            outs = list(outs)[: len(chunk)]
            new_tokens = 0
            for orig, full in zip(chunk, outs, strict=True):
                if isinstance(full, tuple):
                    prompt_text, completion, n_prompt, n_new = full
                else:
                    full = full if isinstance(full, str) else full.decode("utf-8", errors="replace")
                    prompt_text = orig
                    completion = full[len(prompt_text) :] if full.startswith(prompt_text) else full
                    n_prompt = len(self._ids(prompt_text)) + 1
                    new_ids = self._ids(completion)
                    if self._max_new and len(new_ids) > self._max_new:  # the length was rounded up
                        from gemma_cli.engine.data import Encoder

                        new_ids = new_ids[: self._max_new]
                        completion = Encoder(self.tokenizer).decode(new_ids)
                    n_new = len(new_ids)
                new_tokens += n_new
                results.append(
                    {
                        "prompt": orig,
                        "completion": (prompt_text + completion) if echo else completion,
                        "prompt_tokens": n_prompt,
                        "completion_tokens": n_new,
                        "seconds": round(dt, 4),
                        "compiled": first,
                    }
                )
            self.log.debug_line(f"batch of {len(chunk)} (+{pad} padding): {dt:.2f}s, {new_tokens} new tokens")
            if not fixed:
                max_length = None
        return results

    def _text_batch(self, prompts: list[str], max_length: int, stop: tuple[int, ...]) -> list[tuple[str, str, int, int]]:
        """Plain prompts as `<bos> + ids`, as keras-hub's preprocessor would feed them."""
        ids = [[self.tokenizer.start_token_id, *self._ids(p)] for p in prompts]
        return [(p, completion, n, k) for p, (_, completion, n, k) in zip(prompts, self._id_batch(ids, max_length, stop), strict=True)]

    def _chat_batch(self, prompts: list[str], max_length: int, stop: tuple[int, ...]) -> list[tuple[str, str, int, int]]:
        """Generate from chat prompts given as token ids; (prompt text, completion, prompt
        tokens, new tokens) per prompt."""
        from gemma_cli.engine.data import Renderer
        from gemma_cli.engine.data.render import BOS

        renderer = Renderer.for_chat(self.chat_format)
        ids = [self.chat_prompt_ids(p, im) for p, im in zip(prompts, self._images, strict=True)]
        shown = ["".join(piece.text for piece in renderer.prompt(p, im) if piece.text != BOS and piece.image is None)
                 for p, im in zip(prompts, self._images, strict=True)]
        return [(s, completion, n, k) for s, (_, completion, n, k) in zip(shown, self._id_batch(ids, max_length, stop), strict=True)]

    def _id_batch(self, ids: list[list[int]], max_length: int, stop: tuple[int, ...]) -> list[tuple[str, str, int, int]]:
        """Generate from prompts given as token ids: ("", completion, prompt tokens, new tokens)."""
        import keras
        import numpy as np

        from gemma_cli.engine.data import Encoder

        enc = Encoder(self.tokenizer)
        longest = max(len(x) for x in ids)
        if longest >= max_length:
            raise UsageError(
                f"generate.max_length: {max_length} tokens leave no room after a prompt of {longest} tokens; "
                "raise it, or remove it and set generate.max_new_tokens"
            )
        tokens = np.full((len(ids), max_length), enc.pad_id, dtype="int32")
        mask = np.zeros((len(ids), max_length), dtype=bool)
        for r, seq in enumerate(ids):
            tokens[r, : len(seq)] = seq
            mask[r, : len(seq)] = True
        inputs = {"token_ids": tokens, "padding_mask": mask}
        if any(getattr(self, "_images", None) or []):
            inputs.update(self._vision_inputs(tokens, enc))
        dist = keras.distribution.distribution()
        if dist is not None:
            inputs = {k: keras.distribution.distribute_tensor(v, dist.get_data_layout(v.shape)) for k, v in inputs.items()}
        out = self.lm.make_generate_function()(inputs, stop_token_ids=stop)
        out_ids = np.asarray(out["token_ids"])
        results = []
        for r, seq in enumerate(ids):
            new = [int(t) for t in out_ids[r, len(seq) :]]
            for k, t in enumerate(new):
                if t in stop:
                    new = new[:k]
                    break
            if getattr(self, "_max_new", None):
                new = new[: self._max_new]
            results.append(("", enc.decode(new), len(seq), len(new)))
        return results

    def _vision_inputs(self, tokens: Any, enc: Any) -> dict[str, Any]:
        """`images`, `vision_indices`, `vision_mask` of a batch whose row r shows `self._images[r]`
        (each image decoded once per batch)."""
        import numpy as np

        from gemma_cli.engine.data.images import SOFT, vision_batch

        spec = self.vision
        soft = enc.special(SOFT)
        decoded: dict[int, Any] = {}
        images = np.zeros((len(tokens), spec.max_images, spec.image_size, spec.image_size, 3), dtype=np.float32)
        for r, row in enumerate(self._images):
            for j, ref in enumerate(row):
                if id(ref) not in decoded:
                    decoded[id(ref)] = ref.pixels(spec)
                images[r, j] = decoded[id(ref)]
        return vision_batch(tokens, soft, images, spec)

    def _ids(self, text: str) -> list[int]:
        if not text:
            return []
        t = self.tokenizer(text)
        return list(t.numpy() if hasattr(t, "numpy") else t)
