"""Images in chat records: where they come from, how they are checked, decoded and resized.

An image is named in a record by a content part, in the forms chat datasets already use:

    {"type": "image", "path": "charts/1.png"}          a file (relative to the data file's folder)
    {"type": "image", "base64": "iVBORw0..."}          the file's bytes, base64
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}   a data URL
    {"type": "image", "image": "charts/1.png"}          (transformers' key; a path or a data URL)

or by a record-level `"images": ["a.png", ...]` list whose entries fill the `<image>`
placeholders of the turns' text in order (LLaMA-Factory's form). `http(s)://` URLs are
refused: download the images first (training must not depend on a web host).

Rendering checks each image (it exists, PIL can read its header and verify it) so that a bad
one is `file:line` in the preflight; the pixels are decoded later, in the tokenizer's worker
threads, once per image: opened, converted to RGB, the largest centred square cropped and
resized bilinearly (half-pixel centres, no antialiasing) to the model's `image_size`, then
scaled to `pixel * scale + offset` in float32 — what keras-hub's `Gemma3ImageConverter`
(`ImageConverter(crop_to_aspect_ratio=True, interpolation="bilinear")`) does. A huge JPEG is
decoded at a reduced size (`Image.draft`) when that still leaves at least twice the target.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_cli.errors import UsageError

PLACEHOLDER = "<image>"  # LLaMA-Factory's placeholder in text, for the record-level `images` list
START, SOFT, END = "<start_of_image>", "<img>", "<end_of_image>"
MULTIMODAL = ("gemma3_4b, gemma3_12b, gemma3_27b (and their instruct versions), pali_gemma2_* presets, or a checkpoint "
              "with a vision encoder (Gemma 3, Gemma 4, PaliGemma)")


@dataclass(frozen=True)
class VisionSpec:
    """What a vision model takes per image.

    Args:
        image_size: int. Side of the square the image is resized to.
        tokens_per_image: int. Soft tokens each image becomes (256 for Gemma 3).
        max_images: int. Images one record may carry (the preprocessor's
            `max_images_per_prompt`).
        scale: float | tuple. Pixel scale after resizing. Defaults to 1/127.5.
        offset: float | tuple. Pixel offset after scaling. Defaults to -1.
        layout: str. How the model takes images (engine/data/vision_layouts.py): `interleave`
            (Gemma 3), `prefix` (PaliGemma), `patches` (Gemma 4). Defaults to `interleave`.
        markers: tuple. The (start, soft, end) pieces of an image in the text.
        around: str. Text on both sides of an image's tokens (`\n\n` for Gemma 3).
        patch_size: int. Patch side (`patches` layout).
        pool: int. Patches pooled per side into one token (`patches` layout).
    """

    image_size: int
    tokens_per_image: int
    max_images: int = 2
    scale: Any = 1 / 127.5
    offset: Any = -1.0
    layout: str = "interleave"
    markers: tuple[str, str, str] = (START, SOFT, END)
    around: str = "\n\n"
    patch_size: int = 0
    pool: int = 0

    @classmethod
    def from_config(cls, bb_config: dict[str, Any], preprocessor: dict[str, Any] | None = None) -> VisionSpec | None:
        """The spec of a serialized backbone config (None for a text-only model) and, when
        given, the preset's `preprocessor.json` (max images, the image converter's scale/offset)."""
        from gemma_cli.engine.data import vision_layouts

        own = vision_layouts.spec_of_config(bb_config, cls)
        if own is not None:
            return own
        inner = bb_config.get("config", bb_config)
        enc = inner.get("vision_encoder")
        if not enc:
            return None
        ec = enc.get("config", enc)
        size = int(ec["image_size"])
        tokens = (size // int(ec["patch_size"])) ** 2 // int(ec.get("pool_size", 14)) ** 2
        kw: dict[str, Any] = {}
        pc = (preprocessor or {}).get("config", preprocessor or {})
        if pc.get("max_images_per_prompt"):
            kw["max_images"] = int(pc["max_images_per_prompt"])
        conv = (pc.get("image_converter") or {}).get("config") or {}
        for k in ("scale", "offset"):
            if conv.get(k) is not None:
                kw[k] = tuple(conv[k]) if isinstance(conv[k], list) else float(conv[k])
        return cls(size, tokens, **kw)

    @classmethod
    def of_preset(cls, preset: str, bb_config: dict[str, Any]) -> VisionSpec | None:
        """From a backbone config and, for a local keras-hub preset, its preprocessor.json."""
        pre = None
        path = Path(preset).expanduser() / "preprocessor.json"
        if "://" not in preset and path.is_file():
            try:
                pre = json.loads(path.read_text())
            except (OSError, ValueError):
                pre = None
        return cls.from_config(bb_config, pre)

    @classmethod
    def of_hf(cls, preset: str, cfg: dict[str, Any]) -> VisionSpec | None:
        """From a Hugging Face vision+text checkpoint's config.json and preprocessor_config.json,
        when its family loads the tower (`Family.hf_towers`); max images as keras-hub's
        preprocessor (2). PaliGemma and Gemma 4: engine/data/vision_layouts.py."""
        from gemma_cli.engine import families
        from gemma_cli.engine.data import vision_layouts

        own = vision_layouts.spec_of_hf(preset, cfg, cls)
        if own is not None:
            return own
        fam = families.for_hf_model_type(str(cfg.get("model_type")))
        vc = cfg.get("vision_config")
        if fam is None or "vision_encoder" not in fam.hf_towers or not isinstance(vc, dict) or not cfg.get("mm_tokens_per_image"):
            return None
        from gemma_cli.engine.model import hf

        def read(name: str) -> dict[str, Any] | None:
            try:
                return json.loads((Path(preset).expanduser() / name).read_text())
            except (OSError, ValueError):
                return None

        scale, offset = hf.normalisation(hf.image_processor(read))
        return cls(int(vc.get("image_size", 224)), int(cfg["mm_tokens_per_image"]), scale=tuple(scale), offset=tuple(offset))

    @classmethod
    def of_model(cls, causal_lm: Any) -> VisionSpec | None:
        """From a live CausalLM (its backbone's vision encoder and its preprocessor, if any)."""
        from gemma_cli.engine.data import vision_layouts

        own = vision_layouts.spec_of_model(causal_lm, cls)
        if own is not None:
            return own
        bb = causal_lm.backbone
        enc = getattr(bb, "vision_encoder", None)
        if enc is None:
            return None
        kw: dict[str, Any] = {}
        pre = getattr(causal_lm, "preprocessor", None)
        if pre is not None and getattr(pre, "max_images_per_prompt", None):
            kw["max_images"] = int(pre.max_images_per_prompt)
        conv = getattr(pre, "image_converter", None)
        if conv is not None:
            for k in ("scale", "offset"):
                v = conv.get_config().get(k)
                if v is not None:
                    kw[k] = tuple(v) if isinstance(v, list | tuple) else float(v)
        return cls(int(enc.image_size), int(enc.num_vision_tokens_per_image), **kw)


@dataclass(frozen=True)
class ImageRef:
    """One image of a record: a file path or the encoded bytes, and where it was named."""

    where: str
    path: str | None = None
    data: bytes | None = None

    def describe(self) -> str:
        return self.path if self.path is not None else f"<{len(self.data or b'')} inline bytes>"

    def open(self) -> Any:
        from PIL import Image

        if self.path is not None:
            return Image.open(self.path)
        return Image.open(io.BytesIO(self.data or b""))

    def check(self) -> None:
        """Exit 2 (`file:line`) unless the image exists and PIL can read and verify it."""
        if self.path is not None and not Path(self.path).is_file():
            raise UsageError(f"{self.where}: image {self.path} does not exist (or is not a file)")
        try:
            with self.open() as im:
                im.verify()
        except OSError as e:
            raise UsageError(f"{self.where}: image {self.describe()} cannot be read or decoded ({e}); "
                             "give a PNG, JPEG, WebP or GIF file") from None
        except Exception as e:  # PIL raises assorted errors on corrupt files
            raise UsageError(f"{self.where}: image {self.describe()} is corrupt ({type(e).__name__}: {e})") from None

    def pixels(self, spec: VisionSpec) -> Any:
        """float32 [S, S, 3]: decoded, centre-cropped, resized and scaled (module docstring)."""
        import numpy as np

        try:
            with self.open() as im:
                w, h = im.size
                side = min(w, h)
                if im.format == "JPEG" and side >= 4 * spec.image_size:
                    im.draft("RGB", (max(2 * spec.image_size * w // side, 1), max(2 * spec.image_size * h // side, 1)))
                arr = np.asarray(im.convert("RGB"), dtype=np.float32)
        except Exception as e:
            raise UsageError(f"{self.where}: image {self.describe()} cannot be decoded ({type(e).__name__}: {e})") from None
        out = resize_bilinear(center_square(arr), spec.image_size)
        return out * np.asarray(spec.scale, np.float32) + np.asarray(spec.offset, np.float32)


def vision_batch(tokens: Any, soft: int, images: Any, spec: VisionSpec) -> dict[str, Any]:
    """The vision inputs of a batch of token rows: `images` as given, `vision_mask` where the
    soft image tokens sit (`soft`) and `vision_indices` their positions, left-aligned in
    [rows, max_images × tokens_per_image]."""
    import numpy as np

    mask = (np.asarray(tokens) == soft).astype("int32")
    idx = np.zeros((len(mask), spec.max_images * spec.tokens_per_image), dtype="int32")
    for r in range(len(mask)):
        at = np.nonzero(mask[r])[0]
        idx[r, : len(at)] = at
    return {"images": images, "vision_indices": idx, "vision_mask": mask}


def center_square(arr: Any) -> Any:
    """The largest centred square of an [H, W, C] array (keras' crop_to_aspect_ratio)."""
    h, w = arr.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return arr[top : top + side, left : left + side]


def resize_bilinear(arr: Any, size: int) -> Any:
    """Bilinear resize of [H, W, C] to [size, size, C], half-pixel centres, no antialiasing
    (as `keras.ops.image.resize(..., interpolation="bilinear", antialias=False)`)."""
    import numpy as np

    def axis(n_in: int) -> tuple[Any, Any, Any]:
        x = (np.arange(size, dtype=np.float64) + 0.5) * (n_in / size) - 0.5
        x = np.clip(x, 0, n_in - 1)
        lo = np.floor(x).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (x - lo).astype(np.float32)

    y0, y1, fy = axis(arr.shape[0])
    x0, x1, fx = axis(arr.shape[1])
    rows = arr[y0] * (1 - fy)[:, None, None] + arr[y1] * fy[:, None, None]
    return (rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]).astype(np.float32)


def base_dir(where: str) -> Path | None:
    """The folder of the data file named by `where` (`path:line`), if it is a local file."""
    path = where.rsplit(":", 1)[0] if ":" in where else where
    p = Path(path)
    return p.parent if p.is_file() else None


def ref(where: str, value: Any, key: str, base: Path | None = None) -> ImageRef:
    """An `ImageRef` from what a record names: a path (relative ones against `base`, the data
    file's folder), a `data:` URL, or base64 text."""
    if isinstance(value, dict):  # {"url": ...} of image_url parts
        value = value.get("url")
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: {key}: an image needs a path, a data: URL or base64 text, got {type(value).__name__}")
    low = value[:8].lower()
    if low.startswith(("http://", "https:/")):
        raise UsageError(f"{where}: {key}: {value[:80]} is a web URL; download the image first and name the file "
                         "(training reads local files only)")
    if low.startswith("data:"):
        head, _, body = value.partition(",")
        if ";base64" not in head:
            raise UsageError(f"{where}: {key}: a data: URL must be base64 (data:image/png;base64,...)")
        return ImageRef(where, data=_b64(where, key, body))
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return ImageRef(where, path=str(p))


def inline(where: str, text: Any, key: str) -> ImageRef:
    """An `ImageRef` from base64 text (a `base64` part)."""
    if not isinstance(text, str):
        raise UsageError(f"{where}: {key}: `base64` must be a string")
    if text.startswith("data:"):
        return ref(where, text, key)
    return ImageRef(where, data=_b64(where, key, text))


def _b64(where: str, key: str, body: str) -> bytes:
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{where}: {key}: the base64 image data does not decode") from None


def for_preset(preset: str) -> tuple[VisionSpec | None, str]:
    """(the vision spec, how to name the model) of `model.preset`, read without keras: a local
    keras-hub preset's config.json and preprocessor.json, or a Hugging Face checkpoint's
    config.json and preprocessor_config.json (`VisionSpec.of_hf`), or a known preset name's
    architecture (families: Gemma 3 4B, 12B, 27B carry their tower)."""
    from gemma_cli.engine import families

    local = "://" not in preset and Path(preset).expanduser().is_dir()
    if local:
        path = Path(preset).expanduser() / "config.json"
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError):
            return None, preset
        if isinstance(cfg, dict) and "model_type" not in cfg:
            return VisionSpec.of_preset(preset, cfg), preset
        spec = VisionSpec.of_hf(preset, cfg) if isinstance(cfg, dict) else None
        if spec is not None:
            return spec, preset
        if isinstance(cfg, dict) and cfg.get("vision_config"):
            return None, f"{preset} (a Hugging Face '{cfg.get('model_type')}' checkpoint, loaded as its text model by gemma today)"
        return None, preset
    known = families.get_preset(preset)
    spec = VisionSpec.from_config(known) if known is not None else None
    if spec is not None:  # by name with the tower: Gemma 3 4B+ (2 images per prompt), PaliGemma (1, first)
        return spec, preset
    return None, preset
