"""Tokenize: rendered pieces → token ids with per-token loss weights, cut to the row.

Text pieces go through SentencePiece directly (`sentencepiece.SentencePieceProcessor` on the
keras-hub tokenizer's own model proto), so tokenizing needs neither TensorFlow nor the GIL:
SentencePiece releases it while it encodes, and the pipeline's worker threads run in
parallel. Special pieces (`<bos>`, `<start_of_turn>`...) are looked up in the vocabulary,
never tokenized. Tokenizers that are not SentencePiece fall back to calling the keras-hub
tokenizer.

An image piece becomes what keras-hub's Gemma 3 preprocessor makes of `<start_of_image>`:
`\\n\\n<start_of_image>` + `<img>` × tokens_per_image + `<end_of_image>\\n\\n`, all of weight 0,
and its pixels are decoded here, in the worker threads (`Doc.images`, engine/data/images.py).

A document longer than the row (`sequence_length + 1` tokens, the input plus the shifted
label) is cut: a conversation at the last turn boundary that fits (whole turns from the end
are dropped); when even its first answer does not fit, and for plain text, at the row length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gemma_cli.engine.data.render import BOS, EOS, Rendered
from gemma_cli.errors import UsageError


@dataclass
class Doc:
    """One tokenized document.

    Args:
        ids: np.ndarray int32 [n]. `<bos> ... `, at most the row length + 1.
        weights: np.ndarray float32 [n]. Loss weight of predicting token i (weights[0] unused).
        where: str. `file:line` of the record.
        cut_tokens: int. Tokens dropped by truncation (0 = whole).
        cut_turns: int. Whole turns dropped (conversations).
        index: int. Position of the record in its stream (for resume).
    """

    ids: Any
    weights: Any
    where: str
    cut_tokens: int = 0
    cut_turns: int = 0
    index: int = -1
    images: list[Any] | None = None  # float32 [S, S, 3] per image, in order (vision models)

    @property
    def length(self) -> int:
        """Positions the document takes in a row: its tokens minus the one only predicted."""
        return len(self.ids) - 1


class Encoder:
    """Token ids for pieces, from a keras-hub tokenizer.

    Args:
        tokenizer: keras_hub.tokenizers.Tokenizer. The model's tokenizer (its SentencePiece
            proto is used when it has one).
        vision: images.VisionSpec or None. The model's image input (image pieces need it).
    """

    def __init__(self, tokenizer: Any, vision: Any = None):
        self.tokenizer = tokenizer
        self.vision = vision
        proto = getattr(tokenizer, "proto", None)
        self._sp = None
        if proto:
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_proto=proto)
        self.pad_id = int(_attr(tokenizer, "pad_token_id", 0))
        self._special: dict[str, int] = {
            BOS: int(_attr(tokenizer, "start_token_id", None)),
            EOS: int(_attr(tokenizer, "end_token_id", None)),
        }
        self._cache: dict[str, list[int]] = {}

    def special(self, piece: str) -> int:
        """The id of a special piece, from the vocabulary (never by tokenizing its text)."""
        hit = self._special.get(piece)
        if hit is not None:
            return hit
        tid = None
        try:
            if self._sp is not None:
                tid = self._sp.piece_to_id(piece)
                if tid == self._sp.unk_id() and piece != self._sp.id_to_piece(tid):
                    tid = None
            else:
                tid = int(self.tokenizer.token_to_id(piece))
        except Exception:
            tid = None
        if tid is None:
            raise UsageError(
                f"data.format: chat: the tokenizer has no {piece} token; chat turns need Gemma's turn markers"
            )
        self._special[piece] = int(tid)
        return int(tid)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (no bos/eos)."""
        if self._sp is not None:
            return self._sp.encode(texts, out_type=int)
        out = self.tokenizer(texts)
        if hasattr(out, "to_list"):
            return [list(map(int, t)) for t in out.to_list()]
        return [list(map(int, t)) for t in out]

    def decode(self, ids: list[int]) -> str:
        if self._sp is not None:
            return self._sp.decode(ids)
        return str(self.tokenizer.detokenize(ids))

    def _short(self, text: str) -> list[int]:
        """Ids of a short, repeated piece (role headers, newlines), cached."""
        hit = self._cache.get(text)
        if hit is None:
            hit = self.encode([text])[0]
            if len(self._cache) < 64:
                self._cache[text] = hit
        return hit

    def pieces(self, rendered: Rendered) -> tuple[list[list[int]], list[Any]]:
        """(ids per piece, the pieces) of a rendered record."""
        return self.pieces_of(rendered.pieces)

    def pieces_of(self, pieces: list[Any]) -> tuple[list[list[int]], list[Any]]:
        """(ids per piece, the pieces): special pieces by id, short texts cached, the rest in
        one batched call."""
        out: list[list[int] | None] = [None] * len(pieces)
        long: list[int] = []
        for k, p in enumerate(pieces):
            if getattr(p, "image", None) is not None:
                out[k] = self.image_ids()
            elif p.special:
                out[k] = [self.special(p.text)]
            elif len(p.text) <= 16:
                out[k] = self._short(p.text)
            else:
                long.append(k)
        if long:
            for k, ids in zip(long, self.encode([pieces[k].text for k in long]), strict=True):
                out[k] = ids
        return out, pieces  # type: ignore[return-value]

    def image_ids(self) -> list[int]:
        """The tokens one image takes (keras-hub's Gemma 3 expansion of `<start_of_image>`)."""

        if self.vision is None:
            raise UsageError("internal: an image piece for an encoder without a vision spec")
        v = self.vision
        if v.layout == "prefix":  # PaliGemma: the backbone puts the image in front of the text
            return []
        start, soft, end = v.markers
        nl = self._short(v.around) if v.around else []
        return [*nl, self.special(start), *[self.special(soft)] * v.tokens_per_image, self.special(end), *nl]

    def doc(self, rendered: Rendered, max_tokens: int) -> Doc:
        """Tokenize, weigh and cut one rendered record to at most `max_tokens` tokens."""
        import numpy as np

        ids_per, pieces = self.pieces(rendered)
        n = sum(len(x) for x in ids_per)
        keep = len(pieces)
        cut_turns = 0
        if n > max_tokens and rendered.chat:
            keep, cut_turns = _turn_cut(ids_per, pieces, max_tokens)
        ids = np.fromiter((t for x in ids_per[:keep] for t in x), dtype=np.int32)
        weights = np.concatenate(
            [np.full(len(x), p.weight, dtype=np.float32) for x, p in zip(ids_per[:keep], pieces[:keep], strict=True)]
        ) if keep else np.zeros(0, np.float32)
        cut = n - len(ids)
        if len(ids) > max_tokens:
            cut += len(ids) - max_tokens
            ids, weights = ids[:max_tokens], weights[:max_tokens]
        doc = Doc(ids, weights, rendered.where, cut_tokens=cut, cut_turns=cut_turns)
        if rendered.images:
            doc.images = self._pixels(rendered, ids)
        return doc

    def _pixels(self, rendered: Rendered, ids: Any) -> list[Any]:
        """The pixels of the images whose tokens survived the cut; an image cut in half is an error."""

        if self.vision.layout == "prefix":  # never cut: it is not in the text
            return [r.pixels(self.vision) for r in rendered.images]
        n = int((ids == self.special(self.vision.markers[1])).sum())
        per = self.vision.tokens_per_image
        if n % per:
            raise UsageError(f"{rendered.where}: data.sequence_length cuts through an image ({per} tokens each); "
                             "raise data.sequence_length")
        return [r.pixels(self.vision) for r in rendered.images[: n // per]]


    def pair(self, rendered: Rendered, max_tokens: int) -> tuple[Doc, Doc]:
        """The chosen and the rejected document of a preference record (`Rendered.meta`), each
        at most `max_tokens` tokens: the shared prompt is cut from the left first (its `<bos>`
        kept), down to half the row, then the completions from the right."""
        import numpy as np

        def flat(pieces: list[Any]) -> tuple[Any, Any]:
            ids_per, _ = self.pieces_of(pieces)
            ids = np.fromiter((t for x in ids_per for t in x), dtype=np.int32)
            w = [np.full(len(x), p.weight, dtype=np.float32) for x, p in zip(ids_per, pieces, strict=True)]
            return ids, (np.concatenate(w) if w else np.zeros(0, np.float32))

        p_ids, p_w = flat(rendered.pieces)
        sides = {k: flat(v) for k, v in rendered.meta.items()}
        longest = max(len(ids) for ids, _ in sides.values())
        p_cut = 0
        if len(p_ids) + longest > max_tokens:
            keep = max(max_tokens - longest, min(len(p_ids), max_tokens // 2))
            p_cut = len(p_ids) - keep
            if p_cut > 0:  # from the left, after <bos>
                p_ids = np.concatenate([p_ids[:1], p_ids[1 + p_cut:]])
                p_w = np.concatenate([p_w[:1], p_w[1 + p_cut:]])
        out = []
        for ids, w in (sides["chosen"], sides["rejected"]):
            room = max_tokens - len(p_ids)
            c_cut = max(0, len(ids) - room)
            ids, w = ids[:room], w[:room]
            out.append(Doc(np.concatenate([p_ids, ids]), np.concatenate([p_w, w]), rendered.where,
                           cut_tokens=max(p_cut, 0) + c_cut))
        return out[0], out[1]


def _turn_cut(ids_per: list[list[int]], pieces: list[Any], max_tokens: int) -> tuple[int, int]:
    """(pieces to keep, turns dropped): the longest run of whole turns within max_tokens that
    still holds a trained answer; (all, 0) when there is none (the caller cuts at the row)."""
    total = 0
    best = None
    turns = max((p.turn for p in pieces), default=-1) + 1
    for k, (ids, p) in enumerate(zip(ids_per, pieces, strict=True)):
        total += len(ids)
        if total > max_tokens:
            break
        last_of_turn = k + 1 == len(pieces) or pieces[k + 1].turn != p.turn
        if p.turn >= 0 and last_of_turn and any(q.weight > 0 for q in pieces[: k + 1] if q.turn >= 0):
            best = (k + 1, turns - p.turn - 1)
    return best if best is not None else (len(pieces), 0)


def _attr(tok: Any, name: str, default: Any) -> Any:
    v = getattr(tok, name, None)
    if v is None:
        if default is None:
            raise UsageError(f"the tokenizer has no {name}")
        return default
    return v
