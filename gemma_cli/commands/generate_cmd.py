"""`gemma generate TARGET [key=value ...] -p PROMPT ...`."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from gemma_cli import defaults as D
from gemma_cli.commands.common import (
    DebugOpt,
    JsonOpt,
    OverridesArg,
    QuietOpt,
    TargetArg,
    boundary,
    make_output,
)
from gemma_cli.errors import UsageError


@dataclass(frozen=True)
class ChatPrompt:
    """A JSONL prompt given as a chat record (`messages`, maybe with image parts, or `prompt`
    with an `images` list and `<image>` placeholders), read once the model is known."""

    where: str
    record: dict[str, Any]

    def turns(self, spec: Any, name: str) -> tuple[list[tuple[str, str]], list[Any], str]:
        """(turns, images, the last user message as reports show it)."""
        from gemma_cli.engine.data import Renderer
        from gemma_cli.engine.data.images import PLACEHOLDER
        from gemma_cli.engine.data.render import IMAGE_MARK

        rec = self.record
        if "messages" not in rec:
            if not isinstance(rec.get("prompt"), str):
                raise UsageError(f"{self.where}: a JSON line with `images` needs a string field 'prompt'")
            rec = {"messages": [{"role": "user", "content": rec["prompt"]}], "images": rec["images"]}
        turns, refs, _ = Renderer.for_chat(vision=spec, model_name=name).prompt_turns(self.where, rec)
        return turns, refs, turns[-1][1].replace(IMAGE_MARK, PLACEHOLDER)


def read_prompts(prompts: list[str], prompt_file: str | None, stdin_text: str | None) -> list[Any]:
    """Prompts from -p, a file or stdin: one per line, or JSONL objects with a `prompt` field
    (which wins over `messages`), or chat records (`messages` without `prompt`, image parts
    allowed; or `prompt` with an `images` list: `ChatPrompt`)."""
    out = list(prompts)
    sources: list[tuple[str, str]] = []
    if prompt_file:
        p = Path(prompt_file)
        if not p.exists():
            raise UsageError(f"--prompt-file: {prompt_file}: no such file")
        sources.append((prompt_file, p.read_text(encoding="utf-8")))
    if stdin_text is not None:
        sources.append(("<stdin>", stdin_text))
    for where, text in sources:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UsageError(f"{where}:{n}: not valid JSON: {e.msg}") from None
                if isinstance(rec, dict) and ("images" in rec or ("messages" in rec and "prompt" not in rec)):
                    out.append(ChatPrompt(f"{where}:{n}", rec))  # a chat record, maybe with images
                    continue
                if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                    raise UsageError(f"{where}:{n}: a JSON line needs a string field 'prompt' (or chat 'messages')")
                out.append(rec["prompt"])
            else:
                out.append(line)
    for i, p in enumerate(out):
        if isinstance(p, str) and not p.strip():
            raise UsageError(f"prompt {i + 1} is empty")
    if not out:
        raise UsageError("no prompt: give -p/--prompt, --prompt-file, or pipe prompts on stdin (one per line)")
    return out


def generate(
    target: TargetArg = None,
    overrides: OverridesArg = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeatable).")] = None,
    prompt_file: Annotated[str | None, typer.Option("--prompt-file", help="One prompt per line, or JSONL with 'prompt'.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(
        "--max-new-tokens", min=1, help=f"Tokens to generate after the prompt. [default: generate.max_new_tokens, {D.MAX_NEW_TOKENS}]")] = None,
    max_length: Annotated[int | None, typer.Option(
        "--max-length", min=1, help="Total tokens incl. the prompt (wins over --max-new-tokens). [default: generate.max_length, unset]")] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", help="greedy | top_k | top_p | random | beam. [default: generate.sampler, greedy]")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", min=0.0001, help=f"[default: generate.temperature, {D.TEMPERATURE}]")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, help=f"top_k sampler. [default: generate.top_k, {D.TOP_K}]")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", min=0.0001, max=1.0, help=f"top_p sampler. [default: generate.top_p, {D.TOP_P}]")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Prompts per batch (rounded up to the batch axis).")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap prompts in the model family's turn template (Gemma: <start_of_turn>, Gemma 4: <|turn>); stop at the end-of-turn marker.")] = False,
    template: Annotated[
        bool, typer.Option("--template", help="Wrap prompts in the config's data.template (prompt → first field).")
    ] = False,
    echo: Annotated[bool, typer.Option("--echo", help="Keep the prompt in the output.")] = False,
    image: Annotated[list[str] | None, typer.Option(
        "--image", help="An image file shown with every prompt (repeatable; --chat, a multimodal model).")] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per prompt on stdout.")] = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Generate text from a preset, a run config or a fine-tuned run.

    Prompts come from -p (repeatable), --prompt-file, or stdin (one per line, or JSONL with a
    "prompt" field). Completions go to stdout; timings to stderr. Without a target:
    $GEMMA_CONFIG, ./gemma.yaml (or the run it trained), or the most recent run under runs/
    with a checkpoint.

    Examples:

      gemma generate runs/gemma3_270m_demo --chat -p "What does gemma inspect show?"

      gemma generate --chat --prompt-file data/demo_heldout.jsonl --jsonl

      echo "The capital of France is" | gemma generate configs/gemma3_270m_demo.yaml --json

      gemma generate presets/gemma3_270m --chat -p "Write a haiku about TPUs" --sampler top_p
    """
    out = make_output(json_, quiet, debug, documents=json_ or jsonl)
    with boundary(out):
        if json_ and jsonl:
            raise UsageError("--json and --jsonl: choose one")
        from gemma_cli import targets

        items = list(overrides or [])
        for key, val in (
            ("generate.max_length", max_length),
            ("generate.max_new_tokens", max_new_tokens),
            ("generate.sampler", sampler),
            ("generate.temperature", temperature),
            ("generate.top_k", top_k),
            ("generate.top_p", top_p),
            ("generate.seed", seed),
        ):
            if val is not None:
                items.append(f"{key}={val}")
        stdin_text = None
        if not prompt and not prompt_file and not sys.stdin.isatty():
            stdin_text = sys.stdin.read()
        prompts = read_prompts(prompt or [], prompt_file, stdin_text)
        tgt = targets.resolve(target, items, verb="generate", log=out)
        cfg = tgt.config
        from gemma_cli import preflight

        preflight.require(preflight.target(tgt))
        images = _images(image or [], chat, cfg.model.preset)
        prompt_images, shown_chat = None, None
        if any(isinstance(p, ChatPrompt) for p in prompts):
            if not chat or template:
                raise UsageError("chat prompts (JSONL `messages` or `images`) need --chat (and no --template)")
            from gemma_cli.engine.data import images as imagelib

            spec, name = imagelib.for_preset(cfg.model.preset)
            parsed = [p.turns(spec, name) if isinstance(p, ChatPrompt) else ([("user", p)], [], p) for p in prompts]
            prompts = [t for t, _, _ in parsed]
            prompt_images = [r for _, r, _ in parsed]
            shown_chat = [s for _, _, s in parsed]
        if template:
            if cfg.data is None or not cfg.data.template:
                raise UsageError("--template: the config has no data.template")
            from gemma_cli.engine.sample.generate import wrap_template

            shown = prompts
            prompts = [wrap_template(p, cfg.data.template) for p in prompts]
        else:
            shown = shown_chat if prompt_images is not None else prompts
        from gemma_cli.engine.core import runtime

        runtime.setup()
        if json_ or jsonl:
            runtime.silence_keras_stdout()
        import time

        from gemma_cli.engine.sample.generate import Generator

        t0 = time.perf_counter()
        gen = Generator(cfg, out, tgt.checkpoint, batch_size)
        t_load = time.perf_counter() - t0
        t1 = time.perf_counter()
        g = cfg.generate
        if g.max_length is not None and max_length is None and max_new_tokens is None:
            out.warn(f"generate.max_length: {g.max_length} counts the prompt; prefer generate.max_new_tokens "
                     "(tokens after the prompt, as Hugging Face counts them)")
        if g.max_length is not None and max_new_tokens is None:
            results = gen(prompts, max_length=g.max_length, chat=chat, echo=echo, images=images, prompt_images=prompt_images)
        else:
            results = gen(prompts, max_new_tokens=g.max_new_tokens, chat=chat, echo=echo, images=images,
                          prompt_images=prompt_images)
        dt = time.perf_counter() - t1
        for r, s in zip(results, shown, strict=True):
            r["prompt"] = s
        new = sum(r["completion_tokens"] for r in results)
        tps = new / dt if dt > 0 else 0.0
        out.info(
            f"{len(results)} prompt(s), {new} new tokens in {dt:.2f}s ({tps:.1f} tok/s incl. "
            f"{gen.compiles} compilation(s)); load {t_load:.1f}s"
        )
        doc = {
            "target": tgt.source,
            "kind": tgt.kind,
            "checkpoint": str(tgt.checkpoint) if tgt.checkpoint else None,
            "chosen_because": tgt.chosen_because,
            "preset": cfg.model.preset,
            "sampler": cfg.generate.sampler,
            "max_length": cfg.generate.max_length,
            "max_new_tokens": None if (cfg.generate.max_length is not None and max_new_tokens is None) else cfg.generate.max_new_tokens,
            "results": results,
            "seconds": round(dt, 3),
            "tokens_per_second": round(tps, 2),
            "compilations": gen.compiles,
        }
        if jsonl:
            for r in results:
                out.text(json.dumps(r))
            return
        out.result(doc, human=lambda c: _human(results))


def _human(results: list[dict[str, Any]]) -> None:
    many = len(results) > 1
    for i, r in enumerate(results):
        if many:
            sys.stdout.write(f"=== [{i + 1}/{len(results)}] {r['prompt'].strip()[:70]!r}\n")
        sys.stdout.write(r["completion"].rstrip("\n") + "\n")
        if many and i < len(results) - 1:
            sys.stdout.write("\n")
    sys.stdout.flush()


def _images(paths: list[str], chat: bool, preset: str) -> list[Any]:
    """`--image` files, checked before the model loads: --chat, a multimodal model, readable images."""
    if not paths:
        return []
    if not chat:
        raise UsageError("--image: images go in a chat turn; add --chat")
    from gemma_cli.engine.data import images as imagelib

    spec, name = imagelib.for_preset(preset)
    if spec is None:
        raise UsageError(f"--image: {name} is a text-only model; images need a multimodal one: {imagelib.MULTIMODAL}")
    if len(paths) > spec.max_images:
        raise UsageError(f"--image: {len(paths)} images; the model takes at most {spec.max_images} (max_images_per_prompt)")
    refs = [imagelib.ref("--image", p, "--image", Path.cwd()) for p in paths]
    for r in refs:
        r.check()
    return refs
