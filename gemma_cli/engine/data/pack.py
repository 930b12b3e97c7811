"""Pack: tokenized documents → fixed-length rows with segment ids, positions and loss weights.

A document of n tokens `t0 .. t(n-1)` takes n-1 positions of a row: inputs `t0 .. t(n-2)`,
labels `t1 .. t(n-1)`, label weights `w1 .. w(n-1)`. So no position's label ever belongs to
another document, whatever is packed next to it. Each row carries

    token_ids    int32 [L]  inputs (pad id after the last document)
    labels       int32 [L]  the next token of the same document
    weights      float32 [L] loss weight of each label (0 on padding and masked tokens)
    segment_ids  int32 [L]  1..k: the document of each position in the row; 0 = padding
    positions    int32 [L]  position inside its document (restarts at 0)

Unpacked, each document is one row (segment id 1). Packed, documents are placed whole, in
order, into the current row while they fit; the next one that does not fit starts a new row
(next-fit: the order of documents is kept, so a row's content and the resume position depend
only on the record order). The model receives `{"token_ids", "padding_mask": segment_ids}`:
keras-hub treats any non-zero mask value as a token, and the segment-aware attention
(engine/patches/segments.py) keeps documents apart by their ids.

Rows for a vision model (`ImageSlots`) also carry keras-hub Gemma 3's image inputs:

    images          float32 [slots, S, S, 3]  the row's images in order, zeros in unused slots
    vision_indices  int32 [slots * T]         positions of the `<img>` tokens, then 0s
    vision_mask     int32 [L]                 1 where token_ids is `<img>`

Records with images are never packed (the renderer refuses it): one document, one row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gemma_cli.engine.data.tokenize import Doc

FIELDS = ("token_ids", "labels", "weights", "segment_ids", "positions")
VISION_FIELDS = ("images", "vision_indices", "vision_mask", "pixel_values", "pixel_position_ids", "response_mask")


@dataclass(frozen=True)
class ImageSlots:
    """The image inputs of every row for a vision model.

    Args:
        size: int. Image side S.
        tokens: int. Tokens per image T.
        slots: int. Images per row (the model's max images per prompt; 0 with packing).
        soft_id: int. The `<img>` token id.
        layout: str. `interleave` (Gemma 3, here), `prefix` (PaliGemma) or `patches` (Gemma 4):
            engine/data/vision_layouts.py.
        patch: int. Patch side (`patches`).
    """

    size: int
    tokens: int
    slots: int
    soft_id: int
    layout: str = "interleave"
    patch: int = 0


@dataclass
class Row:
    """One row's arrays (see the module docstring) and what went into it.

    Args:
        arrays: dict[str, np.ndarray]. The five row arrays.
        docs: int. Documents in the row.
        next_index: int. Stream index of the first document not in this or an earlier row.
        cut_docs: int. Documents in the row that were truncated.
        cut_tokens: int. Tokens those lost.
    """

    arrays: dict[str, Any]
    docs: int
    next_index: int
    cut_docs: int = 0
    cut_tokens: int = 0
    cut_turns: int = 0


class RowBuilder:
    """Fills one row of `length` positions with whole documents.

    Args:
        length: int. Positions per row (data.sequence_length).
        pad_id: int. Token id of padding.
    """

    def __init__(self, length: int, pad_id: int, image: ImageSlots | None = None):
        self.length, self.pad_id, self.image = length, pad_id, image
        self._docs: list[Doc] = []
        self._used = 0

    @property
    def empty(self) -> bool:
        return not self._docs

    def fits(self, doc: Doc) -> bool:
        return self._used + doc.length <= self.length

    def add(self, doc: Doc) -> None:
        if doc.length > self.length:
            raise ValueError(f"document of {doc.length} positions in a row of {self.length}")
        self._docs.append(doc)
        self._used += doc.length

    def take(self, next_index: int) -> Row:
        """The row's arrays; the builder starts empty again."""
        import numpy as np

        n = self.length
        ids = np.full(n, self.pad_id, dtype=np.int32)
        labels = np.full(n, self.pad_id, dtype=np.int32)
        weights = np.zeros(n, dtype=np.float32)
        seg = np.zeros(n, dtype=np.int32)
        pos = np.zeros(n, dtype=np.int32)
        at = 0
        for k, d in enumerate(self._docs, 1):
            m = d.length
            ids[at : at + m] = d.ids[:-1]
            labels[at : at + m] = d.ids[1:]
            weights[at : at + m] = d.weights[1:]
            seg[at : at + m] = k
            pos[at : at + m] = np.arange(m, dtype=np.int32)
            at += m
        arrays = {"token_ids": ids, "labels": labels, "weights": weights, "segment_ids": seg, "positions": pos}
        if self.image is not None and self.image.layout != "interleave":
            from gemma_cli.engine.data import vision_layouts

            tw = np.zeros(n, dtype=np.float32)  # the loss weight of each input token itself
            at = 0
            for d in self._docs:
                tw[at : at + d.length] = d.weights[:-1]
                at += d.length
            pics = [p for d in self._docs for p in (d.images or [])]
            arrays.update(vision_layouts.row_arrays(self.image, pics, ids, tw))
        elif self.image is not None:
            arrays.update(self._vision(ids))
        row = Row(
            arrays,
            docs=len(self._docs),
            next_index=next_index,
            cut_docs=sum(1 for d in self._docs if d.cut_tokens),
            cut_tokens=sum(d.cut_tokens for d in self._docs),
            cut_turns=sum(d.cut_turns for d in self._docs),
        )
        self._docs, self._used = [], 0
        return row

    def _vision(self, ids: Any) -> dict[str, Any]:
        import numpy as np

        im = self.image
        assert im is not None
        pics = [p for d in self._docs for p in (d.images or [])]
        if len(pics) > im.slots:
            raise ValueError(f"{len(pics)} images in a row of {im.slots} image slots")
        images = np.zeros((im.slots, im.size, im.size, 3), dtype=np.float32)
        for k, p in enumerate(pics):
            images[k] = p
        mask = (ids == im.soft_id).astype(np.int32)
        where = np.nonzero(mask)[0].astype(np.int32)
        indices = np.zeros(im.slots * im.tokens, dtype=np.int32)
        indices[: len(where)] = where[: len(indices)]
        return {"images": images, "vision_indices": indices, "vision_mask": mask}


def rows(docs: Iterable[Doc], length: int, pad_id: int, packing: bool, image: ImageSlots | None = None) -> Iterator[Row]:
    """Rows from documents in order: one per document, or next-fit packed.

    Each `Doc.index` is the document's position in its stream; a row's `next_index` is where
    a resumed stream must start to produce the rows after it.
    """
    b = RowBuilder(length, pad_id, image)
    for doc in docs:
        if not packing:
            b.add(doc)
            yield b.take(doc.index + 1)
            continue
        if not b.empty and not b.fits(doc):
            yield b.take(doc.index)
        b.add(doc)
    if not b.empty and packing:
        # the last, partial row of a finite stream (eval sets)
        yield b.take(-1)


def stack(rows_: list[Row]) -> dict[str, Any]:
    """[rows] → dict of [len(rows), L] arrays."""
    import numpy as np

    return {k: np.stack([r.arrays[k] for r in rows_]) for k in rows_[0].arrays}


def model_batch(
    arrays: dict[str, Any], segment_ids: bool = True, position_ids: bool = False
) -> tuple[dict[str, Any], Any, Any]:
    """(x, y, sample_weight) for keras `fit` from stacked row arrays.

    Args:
        arrays: dict. Stacked row arrays (`stack`).
        segment_ids: bool. Feed segment ids as `padding_mask` (documents kept apart by the
            segment-aware attention); False feeds 0/1 (plain keras-hub attention).
        position_ids: bool. Feed each token's position in its document as `position_ids`, for
            backbones that take it as an input (Gemma 4); the others must not get the key.
    """
    seg = arrays["segment_ids"]
    mask = seg if segment_ids else (seg > 0).astype(seg.dtype)
    x = {"token_ids": arrays["token_ids"], "padding_mask": mask}
    if position_ids:
        x["position_ids"] = arrays["positions"]
    for k in VISION_FIELDS:
        if k in arrays:
            x[k] = arrays[k]
    return x, arrays["labels"], arrays["weights"]
