"""Render: a record → pieces of text and special tokens, each with a loss weight.

Three kinds of record, decided once for a dataset (from the config, else from its first
record) and then required of every record:

- `text`: one field (`data.field`), trained on in full: `<bos> text <eos>`.
- `template`: `data.template` over several fields; with `data.response_field` only that
  field and the template text after it carry the loss.
- `chat`: a conversation, as `{"messages": [{"role", "content"}]}` (roles system, user,
  assistant or model), ShareGPT `{"conversations": [{"from", "value"}]}` (system, human,
  gpt) or a `{"prompt", "completion"}` pair; rendered in Gemma's turn format

      <bos><start_of_turn>user\\n{system}\\n\\n{user}<end_of_turn>\\n<start_of_turn>model\\n{answer}<end_of_turn>\\n

  (the model family's `ChatFormat`, engine/families). The turn markers are special token
  ids taken from the tokenizer's vocabulary, never text to tokenize: in some Gemma vocabularies they are control pieces, and their text becomes
  seven ordinary tokens. A system message is folded into the first user turn, as Gemma's own
  chat template does (Gemma 4's format, `<|turn>system\\n...<turn|>`, gives it a turn of its own). With `loss_on: assistant` (the default) the model's answer and its
  `<end_of_turn>` carry the loss; the markers, role headers and user turns weigh 0.

- `preference`: a chosen and a rejected answer to one prompt (`train.method: dpo`), in TRL's
  three forms: `{"prompt": str, "chosen": str, "rejected": str}`; conversational
  `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`; implicit prompt
  `{"chosen": [conversation], "rejected": [conversation]}`, whose prompt is every turn up to the
  last user turn, the same on both sides. Rendered as chat; `Rendered.pieces` is the prompt
  (weight 0) and `meta["chosen"]` / `meta["rejected"]` the two completions (the model's turns
  weigh 1). The form is decided by the first record; a record of another form is an error.

Pieces are tokenized by the next stage (tokenize.py). `Renderer.prompt(turns)` renders the
prefix that `gemma generate --chat` feeds the model: the same pieces training saw, ending in
the open `<start_of_turn>model\\n`, so generation continues exactly where training learned
to answer.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from gemma_cli.config import template_fields
from gemma_cli.errors import UsageError

# Role names as datasets write them → Gemma's two speakers (and system, folded into user).
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "model", "model": "model", "gpt": "model"}
STYLES = {
    "messages": ("role", "content", "system, user, assistant (or model)"),
    "conversations": ("from", "value", "system, human, gpt"),
}
BOS, EOS = "<bos>", "<eos>"
PREFERENCE_FORMS = {
    "standard": '{"prompt": str, "chosen": str, "rejected": str}',
    "conversational": '{"prompt": [messages], "chosen": [messages], "rejected": [messages]}',
    "implicit": '{"chosen": [conversation], "rejected": [conversation]}',
}


def is_preference(record: dict[str, Any]) -> bool:
    """A preference record (chosen/rejected), even one missing a side (reported later)."""
    return "chosen" in record or "rejected" in record


IMAGE_MARK = "\ufffcimage\ufffc"  # where an image sits in a turn's text, between rendering steps


def _text_parts(where: str, parts: list[Any], sink: list[Any] | None = None) -> str:
    """A turn's content given as parts (`[{"type": "text", "text": "..."}]`, the OpenAI and
    transformers chat form): the text parts joined as transformers' Gemma templates join them.
    Image parts (engine/data/images.py) become `IMAGE_MARK` in the text and their `ImageRef`
    goes to `sink`; with no sink (a text-only model, preference data) they are refused, as are
    audio and other parts."""
    from gemma_cli.engine.data import images

    out = []
    for j, part in enumerate(parts):
        if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
            out.append(part["text"])
            continue
        kind = part.get("type", "text") if isinstance(part, dict) else type(part).__name__
        if kind == "text":
            raise UsageError(f"{where}[{j}]: a text part needs a string 'text'")
        if kind in ("image", "image_url") and isinstance(sink, _Images):
            sink.add(where, j, part)
            out.append(IMAGE_MARK)
            continue
        if kind in ("image", "image_url"):
            why = sink.why if isinstance(sink, _NoImages) else "images go in chat records only (not preference pairs)"
            raise UsageError(f"{where}[{j}]: an image part, but {why}")
        if kind in ("audio", "input_audio"):
            raise UsageError(f"{where}[{j}]: an audio part; no Gemma model gemma trains has an audio encoder yet")
        raise UsageError(f"{where}[{j}]: a part of type {kind!r}; only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                         f"and image parts ({images.__name__.rsplit('.', 1)[-1]}: path, base64 or image_url) are understood")
    return "".join(out)


class _NoImages(list):
    """The sink of a renderer whose model takes no images: says why an image part is refused."""

    def __init__(self, why: str):
        super().__init__()
        self.why = why


class _Images(list):
    """The images of one record, in the order they appear, checked against the model's limits."""

    def __init__(self, vision: Any, packing: bool, record_where: str):
        from gemma_cli.engine.data import images

        super().__init__()
        self.vision, self.packing = vision, packing
        self.base = images.base_dir(record_where)

    def add(self, where: str, j: int, part: Any) -> None:
        from gemma_cli.engine.data import images

        key = f"[{j}]"
        if part.get("type") == "image_url":
            r = images.ref(where, part.get("image_url"), f"{key}.image_url", self.base)
        elif "base64" in part:
            r = images.inline(where, part["base64"], f"{key}.base64")
        elif "path" in part or "image" in part or "url" in part:
            k = "path" if "path" in part else ("image" if "image" in part else "url")
            r = images.ref(where, part[k], f"{key}.{k}", self.base)
        else:
            raise UsageError(f"{where}{key}: an image part needs `path`, `base64` or `image_url`; it has {sorted(part)}")
        self.append(r)

    def done(self, where: str) -> list[Any]:
        if not self:
            return []
        if self.packing:
            raise UsageError(f"{where}: a record with images and data.packing: true; records with images are never "
                             "packed (each row carries its own image slots, as in MaxText): set data.packing: false")
        if len(self) > self.vision.max_images:
            raise UsageError(f"{where}: {len(self)} images in one record; the model takes at most "
                             f"{self.vision.max_images} (max_images_per_prompt)")
        for r in self:
            r.check()
        return list(self)


def chat_format_for(backbone: Any = None) -> Any:
    """The model family's turn format (engine/families) for a keras-hub backbone (an object or
    its class name); Gemma's when None. A family without one cannot take chat data."""
    from gemma_cli.engine import families

    if backbone is None:
        return families.GEMMA_CHAT
    name = backbone if isinstance(backbone, str) else type(backbone).__name__
    fam = families.for_backbone(name)
    if fam is None:
        return families.GEMMA_CHAT
    if fam.chat is None:
        raise UsageError(f"data.format: chat: the {fam.name} family has no chat format in gemma yet")
    return fam.chat


@dataclass(frozen=True)
class Piece:
    """Text to tokenize, or one special token named by its vocabulary piece.

    Args:
        text: str. Text (tokenized as it stands), or a special piece name when `special`.
        weight: float. Loss weight of predicting each of its tokens (0 or 1).
        turn: int. Index of the conversation turn the piece belongs to (-1: none).
        special: bool. `text` is a vocabulary piece (`<bos>`, `<start_of_turn>`...).
    """

    text: str
    weight: float
    turn: int = -1
    special: bool = False
    image: Any = None  # images.ImageRef: this piece is an image (its tokens come from tokenize)


@dataclass
class Rendered:
    """One record as pieces, with where it came from (`file:line`)."""

    where: str
    pieces: list[Piece]
    turns: int = 0
    chat: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list)  # images.ImageRef in order of appearance


def _str(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)


def chat_style(record: dict[str, Any], messages_field: str | None) -> str | None:
    """`messages`, `conversations`, `pair`, the configured field, or None (not chat)."""
    if messages_field:
        return messages_field if messages_field in record else None
    for key in STYLES:
        if key in record:
            return key
    if "prompt" in record and "completion" in record:
        return "pair"
    return None


class Renderer:
    """Turns records into pieces per the data config.

    Args:
        cfg: DataConfig. `field`, `template`, `response_field`, `format`, `messages_field`,
            `loss_on`.
        kind: str. `text`, `template` or `chat`; None decides from the first record seen by
            `decide`.
        chat: families.ChatFormat (or a function returning it). Gemma's when None.
        vision: images.VisionSpec or None. The model's image input; None: a text-only model,
            whose records may not hold images.
        model_name: str. The preset, named when an image meets a text-only model.

    Example:
        >>> r = Renderer(cfg, "chat")
        >>> r("data.jsonl:1", {"messages": [{"role": "user", "content": "Hi"},
        ...                                {"role": "assistant", "content": "Hello"}]})
    """

    def __init__(self, cfg: Any, kind: str | None = None, chat: Any = None, vision: Any = None,
                 model_name: str | None = None):
        self.cfg = cfg
        self.vision = vision
        self.model_name = model_name
        self.kind = kind or ("template" if cfg.template else ("chat" if cfg.format == "chat" else None))
        self.style: str | None = None  # the chat style of the first record
        self.form: str | None = None  # the preference form of the first record
        self._loss_all = cfg.loss_on == "all"
        self._format = chat  # families.ChatFormat; Gemma's when None (looked up when first needed)

    @classmethod
    def for_chat(cls, chat: Any = None, vision: Any = None, model_name: str | None = None) -> Renderer:
        """A chat renderer with the default data settings (for `generate --chat`, `eval`);
        `vision`: the model's images.VisionSpec (None: image parts are refused)."""
        cfg = SimpleNamespace(template=None, format="chat", messages_field=None, loss_on=None, field="text", response_field=None)
        return cls(cfg, "chat", chat, vision=vision, model_name=model_name)

    def prompt_turns(self, where: str, record: dict[str, Any]) -> tuple[list[tuple[str, str]], list[Any], str | None]:
        """A chat record as a prompt: (the turns up to the last user turn, the images they show
        in order (checked: they exist and decode, no more than the model takes), the reference
        answer of a final assistant turn or None). For `generate` and `eval` prompt files."""
        sink = self._sink(where)
        turns = self.turns(where, record, sink)
        refs = sink.done(where) if isinstance(sink, _Images) else []
        reference = None
        if turns and turns[-1][0] == "model":
            reference, turns = turns[-1][1], turns[:-1]
            if IMAGE_MARK in reference:
                raise UsageError(f"{where}: an image in the reference answer; images go in the prompt's turns")
        if not turns or turns[-1][0] != "user":
            raise UsageError(f"{where}: the conversation must end with a user turn (or a user turn, then "
                             "the reference assistant answer)")
        return turns, refs, reference

    @property
    def chat_format(self) -> Any:
        if self._format is None:
            self._format = chat_format_for(None)
        elif callable(self._format):  # resolved only when chat data shows up
            self._format = self._format()
        return self._format

    # ------------------------------------------------------------------------ decide ---
    def decide(self, where: str, record: dict[str, Any]) -> str:
        """Fix the record kind (and chat style) from the first record."""
        if self.vision is not None and self.vision.layout == "prefix":
            self.kind = "paligemma"  # `_prefix_suffix`: every record, whatever its form
            return self.kind
        if self.kind is None and is_preference(record):
            self.kind = "preference"
        if self.kind == "preference":
            if self.form is None:
                self.form = _preference_form(where, record)
            return self.kind
        if self.kind is None:
            if self.cfg.messages_field or (self.cfg.field not in record and chat_style(record, None)):
                self.kind = "chat"
            else:
                self.kind = "text"
        if self.kind == "chat" and self.style is None:
            style = chat_style(record, self.cfg.messages_field)
            if style is None:
                raise UsageError(self._not_chat(where, record))
            self.style = style
        if self.kind == "text" and self.cfg.loss_on == "assistant":
            raise UsageError(
                f"data.loss_on: `assistant` needs chat records or a template with data.response_field; "
                f"the record at {where} is plain text (field {self.cfg.field!r})"
            )
        return self.kind

    def _not_chat(self, where: str, record: dict[str, Any]) -> str:
        want = (
            f"a {self.cfg.messages_field!r} list of turns"
            if self.cfg.messages_field
            else "`messages` (a list of {role, content}), `conversations` (ShareGPT {from, value}) or `prompt` + `completion`"
        )
        return f"{where}: expected a chat record with {want}; fields there: {sorted(record)}"

    # ------------------------------------------------------------------------ render ---
    def __call__(self, where: str, record: dict[str, Any]) -> Rendered:
        if self.vision is not None and self.vision.layout == "prefix":
            return self._prefix_suffix(where, record)
        if self.kind is None or (self.kind == "chat" and self.style is None) or (self.kind == "preference" and self.form is None):
            self.decide(where, record)
        if self.kind == "preference":
            return self._preference(where, record)
        if self.kind == "chat":
            return self._chat(where, record)
        if self.kind == "template":
            return self._template(where, record)
        f = self.cfg.field
        if f not in record:
            raise UsageError(f"data.field: {f!r} is not in the record at {where}; fields there: {sorted(record)}")
        return Rendered(where, [Piece(BOS, 0.0, special=True), Piece(_str(record[f]), 1.0), Piece(EOS, 1.0, special=True)])

    def _template(self, where: str, record: dict[str, Any]) -> Rendered:
        cfg = self.cfg
        values: dict[str, str] = {}
        for f in template_fields(cfg.template):
            if f not in record:
                raise UsageError(f"data.template: field {f!r} is not in the record at {where}; fields there: {sorted(record)}")
            values[f] = _str(record[f])
        pieces = [Piece(BOS, 0.0, special=True)]
        if cfg.response_field is None:
            pieces.append(Piece(cfg.template.format(**values), 1.0))
        else:
            prompt, answer = "", ""
            seen = False
            for literal, f, spec, conv in string.Formatter().parse(cfg.template):
                if f == cfg.response_field and not seen:
                    seen = True
                    prompt += literal
                    answer += _format_field(values[f], spec, conv)
                    continue
                text = literal + (_format_field(values[f], spec, conv) if f else "")
                if seen:
                    answer += text
                else:
                    prompt += text
            w_prompt = 1.0 if self._loss_all else 0.0
            if prompt:
                pieces.append(Piece(prompt, w_prompt))
            pieces.append(Piece(answer, 1.0))
        pieces.append(Piece(EOS, 1.0, special=True))
        return Rendered(where, pieces)

    # -------------------------------------------------------------------------- chat ---
    def _sink(self, where: str) -> list[Any]:
        """Where the image parts of one record go (or why there are none)."""
        from gemma_cli.engine.data import images

        if self.vision is None:
            name = self.model_name or "the model"
            return _NoImages(f"{name} is a text-only model; images need a multimodal one: {images.MULTIMODAL}")
        return _Images(self.vision, bool(getattr(self.cfg, "packing", False)), where)

    def turns(self, where: str, record: dict[str, Any], sink: list[Any] | None = None) -> list[tuple[str, str]]:
        """The record's conversation as (role, content) with roles system|user|model, checked;
        images (content parts or the record's `images` list) marked in the text and added to `sink`."""
        style = chat_style(record, self.cfg.messages_field)
        if style is None:
            raise UsageError(self._not_chat(where, record))
        if self.style is not None and style != self.style:
            raise UsageError(
                f"{where}: a `{style}` record among `{self.style}` records (mixed formats); "
                "use one chat format per dataset"
            )
        if style == "pair":
            out = []
            for key, role in (("prompt", "user"), ("completion", "model")):
                v = record[key]
                if not isinstance(v, str):
                    raise UsageError(f"{where}: `{key}` must be a string, got {type(v).__name__}")
                if not v.strip():
                    raise UsageError(f"{where}: `{key}` is empty")
                out.append((role, v))
            return out
        out = self._turn_list(where, style, record[style], sink)
        if "images" in record:
            out = self._image_list(where, record["images"], out, sink)
        return out

    def _image_list(self, where: str, paths: Any, turns: list[tuple[str, str]], sink: Any) -> list[tuple[str, str]]:
        """LLaMA-Factory's form: `images` fill the `<image>` placeholders of the text in order."""
        from gemma_cli.engine.data import images

        if not isinstance(paths, list):
            raise UsageError(f"{where}: `images` must be a list of image paths, got {type(paths).__name__}")
        if not paths:
            return turns
        if not isinstance(sink, _Images):
            raise UsageError(f"{where}: `images`: " + (sink.why if isinstance(sink, _NoImages) else "images go in chat records only"))
        if sink:
            raise UsageError(f"{where}: both image parts and an `images` list; use one form per record")
        n = sum(c.count(images.PLACEHOLDER) for _, c in turns)
        if n != len(paths):
            raise UsageError(f"{where}: {len(paths)} `images` but {n} {images.PLACEHOLDER} placeholders in the text; "
                             "each image needs one placeholder where it sits")
        for j, p in enumerate(paths):
            sink.append(images.ref(where, p, f"images[{j}]", sink.base))
        return [(r, c.replace(images.PLACEHOLDER, IMAGE_MARK)) for r, c in turns]

    def _turn_list(self, where: str, style: str, turns: Any, sink: list[Any] | None = None) -> list[tuple[str, str]]:
        """A list of turns (`record[style]`) as (role, content), checked; `style` names it in errors."""
        if not isinstance(turns, list):
            raise UsageError(f"{where}: `{style}` must be a list of turns, got {type(turns).__name__}")
        role_key, content_key, allowed = STYLES.get(style, ("role", "content", "system, user, assistant (or model)"))
        out = []
        for k, t in enumerate(turns):
            if not isinstance(t, dict):
                raise UsageError(f"{where}: `{style}`[{k}] must be an object with {role_key!r} and {content_key!r}, got {type(t).__name__}")
            if role_key not in t or content_key not in t:
                raise UsageError(f"{where}: `{style}`[{k}] must have {role_key!r} and {content_key!r}; it has {sorted(t)}")
            role = ROLES.get(str(t[role_key]).lower()) if isinstance(t[role_key], str) else None
            if role is None:
                raise UsageError(f"{where}: `{style}`[{k}]: unknown role {t[role_key]!r}; expected one of {allowed}")
            content = t[content_key]
            if isinstance(content, list):  # OpenAI / transformers content parts
                content = _text_parts(f"{where}: `{style}`[{k}]: {content_key!r}", content, sink)
            if not isinstance(content, str):
                raise UsageError(f"{where}: `{style}`[{k}]: {content_key!r} must be a string (or a list of "
                                 f"{{\"type\": \"text\", \"text\": ...}} parts), got {type(content).__name__}")
            if not content.strip():
                raise UsageError(f"{where}: `{style}`[{k}]: empty {content_key!r}")
            if role == "system" and k != 0:
                raise UsageError(f"{where}: `{style}`[{k}]: a system turn may only come first")
            out.append((role, content))
        return out

    def _fold(self, where: str, turns: list[tuple[str, str]], *, need_answer: bool) -> list[tuple[str, str]]:
        """System folded into the first user turn (a turn of its own where the family's format
        says `system: turn`, Gemma 4); user/model alternating, starting with user."""
        head: list[tuple[str, str]] = []
        if turns and turns[0][0] == "system" and self.chat_format.system == "turn":
            if len(turns) < 2 or turns[1][0] != "user":
                raise UsageError(f"{where}: a system turn must be followed by a user turn")
            head, turns = turns[:1], turns[1:]
        if turns and turns[0][0] == "system":
            system = turns[0][1]
            if len(turns) < 2 or turns[1][0] != "user":
                raise UsageError(f"{where}: a system turn must be followed by a user turn")
            turns = [("user", f"{system}\n\n{turns[1][1]}")] + turns[2:]
        if not turns:
            raise UsageError(f"{where}: the conversation has no turns")
        expect = "user"
        for k, (role, _) in enumerate(turns):
            if role != expect:
                raise UsageError(
                    f"{where}: turn {k} is {_say(role)} turn where {_say(expect)} turn was expected "
                    "(turns alternate user, assistant, starting with user)"
                )
            expect = "model" if role == "user" else "user"
        if need_answer and not any(r == "model" for r, _ in turns):
            raise UsageError(f"{where}: the conversation has no assistant turn: nothing to train on")
        return head + turns

    def _chat(self, where: str, record: dict[str, Any]) -> Rendered:
        sink = self._sink(where)
        turns = self._fold(where, self.turns(where, record, sink), need_answer=True)
        refs = sink.done(where) if isinstance(sink, _Images) else []
        todo = iter(refs)
        pieces = [Piece(BOS, 0.0, special=True)]
        for k, (role, content) in enumerate(turns):
            pieces.extend(self._turn(k, role, content, closed=True, images=todo))
        return Rendered(where, pieces, turns=len(turns), chat=True, images=refs)

    # ------------------------------------------------------------------------ PaliGemma ---
    def _prefix_suffix(self, where: str, record: dict[str, Any]) -> Rendered:
        """PaliGemma's format: `[image] <bos> prefix \n suffix <eos>`, loss on the suffix and
        `<eos>` only, from `{"image", "prefix", "suffix"}` (big_vision's and transformers' form)
        or a chat record of one user turn (its image and text: the prefix) and one answer."""
        from gemma_cli.engine.data import images

        sink = self._sink(where)
        if "prefix" in record or "suffix" in record:
            for key in ("prefix", "suffix"):
                if not isinstance(record.get(key), str):
                    raise UsageError(f"{where}: a PaliGemma record needs string `prefix` and `suffix` (and `image`); "
                                     f"`{key}` is {type(record.get(key)).__name__}")
            prefix, suffix = record["prefix"], record["suffix"]
            pics = record["images"] if isinstance(record.get("images"), list) else [record.get("image")]
            for j, p in enumerate(x for x in pics if x is not None):
                sink.append(images.ref(where, p, f"image[{j}]" if "images" in record else "image", sink.base))
        else:
            turns = self.turns(where, record, sink)
            if [r for r, _ in turns] != ["user", "model"]:
                raise UsageError(f"{where}: PaliGemma takes one user turn (the image and the prefix) and one answer; "
                                 f"this record has {len(turns)} turns ({', '.join(r for r, _ in turns)})")
            prefix, suffix = turns[0][1].replace(IMAGE_MARK, "").strip(), turns[1][1]
        refs = sink.done(where)
        if len(refs) != 1:
            raise UsageError(f"{where}: PaliGemma takes exactly one image per record (it comes before the text); "
                             f"this record has {len(refs)}")
        pieces = [Piece(IMAGE_MARK, 0.0, special=True, image=refs[0]), Piece(BOS, 0.0, special=True),
                  Piece(f"{prefix}\n", 0.0), Piece(suffix, 1.0), Piece(EOS, 1.0, special=True)]
        return Rendered(where, pieces, images=refs)

    # -------------------------------------------------------------------- preference ---
    def _preference(self, where: str, record: dict[str, Any]) -> Rendered:
        """A preference record → prompt pieces (weight 0) and the chosen and rejected pieces."""
        form = _preference_form(where, record)
        if self.form is not None and form != self.form:
            raise UsageError(f"{where}: a {form} preference record among {self.form} ones (mixed record forms); "
                             f"use one form per dataset: {PREFERENCE_FORMS[self.form]}")
        sides: dict[str, list[tuple[str, str]]] = {}
        if form == "standard":
            for key in ("prompt", "chosen", "rejected"):
                if not record[key].strip():
                    raise UsageError(f"{where}: `{key}` is empty" + ("" if key == "prompt" else ": an empty completion"))
            prompt = [("user", record["prompt"])]
            sides = {k: [("model", record[k])] for k in ("chosen", "rejected")}
        else:
            convs = {k: self._turn_list(where, k, record[k]) for k in ("chosen", "rejected")}
            if form == "conversational":
                prompt = self._turn_list(where, "prompt", record["prompt"])
                if not prompt:
                    raise UsageError(f"{where}: `prompt` has no turns")
                sides = convs
            else:  # implicit: the prompt is every turn up to the last user turn
                heads = {}
                for k, conv in convs.items():
                    users = [i for i, (r, _) in enumerate(conv) if r == "user"]
                    if not users:
                        raise UsageError(f"{where}: `{k}` has no user turn, so no implicit prompt")
                    heads[k] = users[-1] + 1
                    sides[k] = conv[heads[k]:]
                prompt = convs["chosen"][: heads["chosen"]]
                if convs["rejected"][: heads["rejected"]] != prompt:
                    raise UsageError(f"{where}: the implicit prompts of `chosen` and `rejected` differ (the turns up to "
                                     "the last user turn must be the same on both sides)")
        for k, turns in sides.items():
            if not turns:
                raise UsageError(f"{where}: `{k}` is empty: an empty completion (no assistant answer to compare)")
            if turns[0][0] != "model":
                raise UsageError(f"{where}: `{k}` starts with {_say(turns[0][0])} turn; roles out of order "
                                 "(the completion answers the prompt: it starts with an assistant turn)")
        if sides["chosen"] == sides["rejected"]:
            raise UsageError(f"{where}: `chosen` is identical to `rejected`: nothing to prefer")
        n_prompt = len(self._fold(where, prompt, need_answer=False))
        if prompt[-1][0] != "user":
            raise UsageError(f"{where}: the prompt ends with {_say(prompt[-1][0])} turn; roles out of order "
                             "(a prompt ends with the user's turn)")
        out: dict[str, list[Piece]] = {}
        head: list[Piece] = []
        for k, turns in sides.items():
            folded = self._fold(where, prompt + turns, need_answer=True)  # roles alternate across the seam
            pieces = []
            for i, (role, content) in enumerate(folded):
                pieces.extend(self._turn(i, role, content, closed=True, loss_all=False, train=i >= n_prompt))
            cut = 5 * n_prompt  # a closed turn is 5 pieces: start, header, content, end, newline
            head = [Piece(BOS, 0.0, special=True), *pieces[:cut]]
            out[k] = pieces[cut:]
        return Rendered(where, head, turns=n_prompt, chat=True, meta=out)

    def _turn(self, k: int, role: str, content: str | None, *, closed: bool, loss_all: bool | None = None,
              train: bool = True, images: Any = None) -> list[Piece]:
        fmt = self.chat_format
        every = self._loss_all if loss_all is None else loss_all
        answer = 1.0 if train and (role == "model" or every) else 0.0
        frame = 1.0 if train and every else 0.0
        header = fmt.roles["assistant"] if role == "model" else fmt.roles.get(role, fmt.roles["user"])
        out = [Piece(fmt.start_turn, frame, k, special=True), Piece(f"{header}\n", frame, k)]
        if content is not None and IMAGE_MARK in content and images is not None:
            for j, text in enumerate(content.split(IMAGE_MARK)):
                if j:  # an image: never trained on (tokenize gives its tokens weight 0)
                    out.append(Piece(IMAGE_MARK, 0.0, k, special=True, image=next(images)))
                if text:
                    out.append(Piece(text, answer, k))
        elif content is not None:
            out.append(Piece(content, answer, k))
        if closed:
            out += [Piece(fmt.end_turn, answer, k, special=True), Piece("\n", frame, k)]
        return out

    def prompt(self, turns: list[tuple[str, str]] | str, images: list[Any] | None = None) -> list[Piece]:
        """Pieces of a generation prompt: the conversation so far, then an open model turn.

        Args:
            turns: list of (role, content), roles as in the data (user, assistant, system...),
                ending with a user turn; or one user message as a string.
            images: list of images.ImageRef. Shown at the start of the last user turn (where
                `IMAGE_MARK`s in the text do not place them).
        """
        if isinstance(turns, str):
            turns = [("user", turns)]
        if images:
            marked = sum(c.count(IMAGE_MARK) for _, c in turns)
            if not marked:
                role, content = turns[-1]
                turns = [*turns[:-1], (role, IMAGE_MARK * len(images) + content)]
            elif marked != len(images):
                raise UsageError(f"chat prompt: {len(images)} images for {marked} image places")
        mapped = []
        for k, (role, content) in enumerate(turns):
            r = ROLES.get(role.lower())
            if r is None:
                raise UsageError(f"chat prompt: turn {k}: unknown role {role!r}")
            mapped.append((r, content))
        folded = self._fold("chat prompt", mapped, need_answer=False)
        if folded[-1][0] != "user":
            raise UsageError("chat prompt: the last turn must be the user's")
        pieces = [Piece(BOS, 0.0, special=True)]
        todo = iter(images or [])
        for k, (role, content) in enumerate(folded):
            pieces.extend(self._turn(k, role, content, closed=True, images=todo))
        pieces.extend(self._turn(len(folded), "model", None, closed=False))
        return pieces


def _preference_form(where: str, record: dict[str, Any]) -> str:
    """`standard`, `conversational` or `implicit`; a record with one side only is an error."""
    missing = [k for k in ("chosen", "rejected") if k not in record]
    if missing:
        raise UsageError(f"{where}: a preference record needs both `chosen` and `rejected`; it has only one side "
                         f"(`{missing[0]}` is missing)")
    c, r = record["chosen"], record["rejected"]
    p = record.get("prompt")
    if isinstance(c, str) and isinstance(r, str) and isinstance(p, str):
        return "standard"
    if isinstance(c, list) and isinstance(r, list):
        if p is None:
            return "implicit"
        if isinstance(p, list):
            return "conversational"
    kinds = ", ".join(f"{k}: {type(record[k]).__name__}" for k in ("prompt", "chosen", "rejected") if k in record)
    raise UsageError(f"{where}: a preference record in none of the forms ({kinds}); expected one of "
                     + "; ".join(PREFERENCE_FORMS.values()))


def _format_field(value: str, spec: str | None, conv: str | None) -> str:
    if conv == "r":
        value = repr(value)
    elif conv == "a":
        value = ascii(value)
    return format(value, spec or "")


def _say(role: str) -> str:
    """The role as a message names it, with its article: `an assistant`, `a user`."""
    return {"model": "an assistant", "user": "a user", "system": "a system"}[role]
