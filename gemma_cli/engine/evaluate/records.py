"""Eval records: a data file → prompts, reference answers, reward columns, preference pairs.

Read with the data pipeline's readers (`engine/data/sources.py`: JSONL, CSV, Parquet; every
record named `file:line`). The first record decides the kind of the file, then every record
must be of it:

- `preference`: `prompt`, `chosen`, `rejected` (strings): scored by likelihood only.
- `chat`: `messages` (or ShareGPT `conversations`): the turns up to the last user turn are
  the prompt, a final assistant turn the reference answer.
- `pair`: `prompt` + `completion`: the completion is the reference answer.
- `prompt`: `prompt` plus any other fields: `answer` (if any) is the reference answer.

Chat and pair records are prompted in the model family's chat format, as training renders
them; plain `prompt` records as text unless `chat=True` (`--chat`); pairs and preference
records may be turned to plain text with `chat=False` (`--no-chat`). Every field but `prompt`
is a column for the reward functions; the reference of chat and pair records is the
`completion` column, so the built-ins find it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gemma_cli.errors import UsageError

KINDS = ("preference", "chat", "pair", "prompt")


class _AnyImages:
    """Read images before the model is known: each is checked (exists, decodes) and counted;
    `check_images` then holds them against the model's image input."""

    max_images = 1 << 30


ANY_IMAGES = _AnyImages()


def check_images(records: list[EvalRecord], spec: Any, model_name: str) -> None:
    """Exit 2 naming `file:line` when a record shows images the model cannot take: a text-only
    model, or more than its `max_images_per_prompt`."""
    from gemma_cli.engine.data import images

    for r in records:
        if not r.images:
            continue
        if spec is None:
            raise UsageError(f"{r.where}: an image part, but {model_name} is a text-only model; images need a "
                             f"multimodal one: {images.MULTIMODAL}")
        if len(r.images) > spec.max_images:
            raise UsageError(f"{r.where}: {len(r.images)} images in one record; the model takes at most "
                             f"{spec.max_images} (max_images_per_prompt)")


@dataclass
class EvalRecord:
    """One record to evaluate.

    Args:
        where: str. `file:line`.
        prompt: str | list[tuple[str, str]]. Text, or the conversation so far (role, content)
            ending with a user turn (chat).
        chat: bool. Prompted in the family's chat format.
        shown: str. The prompt as reports show it (the last user message, or the text).
        reference: str | None. The reference answer, for likelihood.
        chosen: str | None. The preferred completion (preference files).
        rejected: str | None. The other completion (preference files).
        columns: dict. The record's fields for the reward functions.
        images: list. The images of a chat prompt (image parts, or `images` with `<image>`
            placeholders), for a multimodal model.
    """

    where: str
    prompt: Any
    chat: bool
    shown: str
    reference: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    columns: dict[str, Any] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list)  # images.ImageRef the prompt shows, in order


def kind_of(record: dict[str, Any]) -> str | None:
    if all(k in record for k in ("prompt", "chosen", "rejected")):
        return "preference"
    if "messages" in record or "conversations" in record:
        return "chat"
    if "prompt" in record and "completion" in record:
        return "pair"
    if "prompt" in record:
        return "prompt"
    return None


def _string(where: str, record: dict[str, Any], key: str) -> str:
    v = record.get(key)
    if not isinstance(v, str):
        raise UsageError(f"{where}: `{key}` must be a string, got {type(v).__name__}")
    if not v.strip():
        raise UsageError(f"{where}: `{key}` is empty")
    return v


def parse(where: str, record: dict[str, Any], kind: str, chat: bool | None, vision: Any = None,
          model_name: str | None = None) -> EvalRecord:
    """One record of a file of `kind` as an EvalRecord (UsageError naming `where`)."""
    mine = kind_of(record)
    if mine is None:
        raise UsageError(f"{where}: expected `messages`, `prompt` (+ `completion`, or other fields) or "
                         f"`prompt`/`chosen`/`rejected`; fields there: {sorted(record)}")
    if mine != kind:
        raise UsageError(f"{where}: a {mine} record in a file of {kind} records; use one kind per file")
    columns = {k: v for k, v in record.items() if k != "prompt"}
    if kind == "preference":
        prompt = _string(where, record, "prompt")
        return EvalRecord(where, prompt, chat is not False, prompt, chosen=_string(where, record, "chosen"),
                          rejected=_string(where, record, "rejected"), columns=columns)
    if kind == "chat":
        from gemma_cli.engine.data.images import PLACEHOLDER
        from gemma_cli.engine.data.render import IMAGE_MARK, Renderer

        turns, refs, reference = Renderer.for_chat(vision=vision, model_name=model_name).prompt_turns(where, record)
        if reference is not None:
            columns.setdefault("completion", reference)
        return EvalRecord(where, turns, True, turns[-1][1].replace(IMAGE_MARK, PLACEHOLDER), reference=reference,
                          columns=columns, images=refs)
    prompt = _string(where, record, "prompt")
    if kind == "pair":
        reference = _string(where, record, "completion")
        return EvalRecord(where, prompt, chat is not False, prompt, reference=reference, columns=columns)
    answer = record.get("answer")
    reference = answer if isinstance(answer, str) and answer.strip() else None
    return EvalRecord(where, prompt, bool(chat), prompt, reference=reference, columns=columns)


def read(path: str, *, chat: bool | None = None, limit: int | None = None, vision: Any = None,
         model_name: str | None = None) -> tuple[str, list[EvalRecord]]:
    """(kind, records) of a data file (JSONL, CSV, Parquet), at most `limit` records.

    Args:
        path: str. The file (or a glob), as `--data` names it.
        chat: bool | None. Force the chat format on (`--chat`) or off (`--no-chat`); None:
            chat for chat, pair and preference records, text for plain prompts.
        limit: int | None. Read only the first records.
        vision: images.VisionSpec | None. The model's image input: chat records may show images
            (checked here: they exist, decode, and fit the model's limit); None refuses them,
            naming `model_name`.
    """
    from gemma_cli.engine.data.sources import open_local

    src = open_local([path], None, "--data", block=256)
    n = len(src) if limit is None else min(limit, len(src))
    out: list[EvalRecord] = []
    kind = None
    for i in range(n):
        where, record = src[i]
        if kind is None:
            kind = kind_of(record)
            if kind is None:
                parse(where, record, "prompt", chat)  # raises, naming the fields
        if kind == "chat" and chat is False:
            raise UsageError(f"--no-chat: {where}: `messages` records are always prompted in the chat format")
        out.append(parse(where, record, kind, chat, vision, model_name))
    if not out:
        raise UsageError(f"--data {path}: no records")
    return kind or "prompt", out


def columns_of(records: list[EvalRecord]) -> dict[str, list[Any]]:
    """The reward columns: every field any record has, one list each (None where missing)."""
    keys: list[str] = []
    for r in records:
        keys += [k for k in r.columns if k not in keys]
    return {k: [r.columns.get(k) for r in records] for k in keys}


def check_rewards(records: list[EvalRecord], rewards: list[Any]) -> None:
    """A built-in reward's reference field is in every record (UsageError with `file:line`)."""
    for rw in rewards:
        if not rw.needs:
            continue
        for r in records:
            if not any(k in r.columns for k in rw.needs):
                raise UsageError(f"{r.where}: --reward {rw.spec} needs a reference answer: a field "
                                 + " or ".join(f"'{k}'" for k in rw.needs) + f"; fields there: {sorted(r.columns)}")
