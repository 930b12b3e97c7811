"""Hugging Face checkpoints (config.json + safetensors + tokenizer) as `model.preset`.

A local directory whose config.json has a `model_type` (what `save_pretrained` writes), or an
`hf://org/model` repository of one, is read the way keras-hub reads `hf://` presets: through keras-hub's own converters
(`keras_hub/src/utils/transformers/convert_*.py`, picked by its `TransformersPresetLoader`),
with the family's fix-ups for what those converters read wrong or leave out
(`Family.hf_kwargs_fixup`, e.g. Gemma 4 head dims written by transformers 5, the RMSNorm
epsilon and RoPE scaling of Llama 3). Which families load: `families.hf_model_types()`.

- `backbone_config(dir)`: the serialized backbone config from config.json alone (no weights;
  plan mode). A vision+text checkpoint is planned with the towers its family loads
  (`Family.hf_towers`: Gemma 3's vision encoder and projector), else as its text backbone.
- `load_causal_lm(dir, dtype)`: the family's keras-hub CausalLM with the converted weights
  and tokenizer.

Example:
    >>> from gemma_cli.engine.model import hf as hf_checkpoint
    >>> hf_checkpoint.backbone_config("checkpoints/my-gemma3")["class_name"]
    'Gemma3Backbone'
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gemma_cli.errors import RuntimeFailure, UsageError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def read_config(path: str | Path) -> dict[str, Any] | None:
    """config.json of `path` if it is a Hugging Face checkpoint (has `model_type`), else None.

    `path` is a local directory, or an `hf://org/model` repository (config.json downloaded
    through keras-hub, as `from_preset` does).
    """
    if str(path).startswith("hf://"):
        from gemma_cli.engine.core import runtime

        runtime.setup()
        from keras_hub.src.utils.preset_utils import load_json

        from gemma_cli.engine.core import remote

        try:
            with remote.guard("hf"):
                cfg = load_json(str(path), "config.json")
        except Exception:  # noqa: BLE001 — not reachable here: keras-hub's loader will say why
            return None
    else:
        f = Path(path).expanduser() / "config.json"
        if not f.is_file():
            return None
        try:
            cfg = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"model.preset: {f}: not readable JSON ({e})") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg or "registered_name" in cfg:
        return None
    return cfg


def is_hf_checkpoint(path: str | Path) -> bool:
    return read_config(path) is not None


def family_of(path: str | Path, cfg: dict[str, Any]) -> Any:
    """The family of a checkpoint's `model_type`; exit 2 naming it and the supported ones."""
    from gemma_cli.engine import families

    model_type = str(cfg.get("model_type"))
    fam = families.for_hf_model_type(model_type)
    if fam is None:
        arch = ", ".join(cfg.get("architectures") or []) or "no architectures"
        raise UsageError(
            f"model.preset: {path}: a Hugging Face '{model_type}' checkpoint ({arch}); "
            f"gemma loads these model_types: {', '.join(families.hf_model_types())}",
            hint="convert it to one of those, or give a keras-hub preset",
        )
    return fam


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A vision+text config reduced to its text model (`gemma4` → `gemma4_text`, ...)."""
    if isinstance(cfg.get("text_config"), dict) and cfg["model_type"] in ("gemma3", "gemma4"):
        return {**cfg["text_config"], "model_type": f"{cfg['model_type']}_text"}
    return cfg


def model_config(cfg: dict[str, Any], fam: Any) -> dict[str, Any]:
    """What the converter reads: the whole config when the family loads the checkpoint's towers
    (`Family.hf_towers`), else its text model."""
    if fam.hf_towers and cfg.get("vision_config"):
        return cfg
    return _text_config(cfg)


def _towers(kwargs: dict[str, Any], fam: Any) -> dict[str, Any]:
    """Backbone kwargs with the towers the family loads serialized (plan mode), the others None."""
    out = dict(kwargs)
    for tower in ("vision_encoder", "audio_encoder"):
        if tower not in out:
            continue
        if tower in fam.hf_towers and out[tower] is not None:
            import keras

            out[tower] = keras.saving.serialize_keras_object(out[tower])
        else:
            out[tower] = None
    return out


def image_processor(read: Callable[[str], dict[str, Any] | None]) -> dict[str, Any] | None:
    """A checkpoint's image processor settings: preprocessor_config.json (what Hub repositories
    of Gemma 3 hold), or the `image_processor` section of processor_config.json (what
    transformers 5 writes). `read(name)`: the parsed file, None if absent."""
    pc = read("preprocessor_config.json")
    if pc is None:
        proc = read("processor_config.json") or {}
        pc = proc.get("image_processor") if isinstance(proc.get("image_processor"), dict) else None
    return pc


def normalisation(pc: dict[str, Any] | None) -> tuple[list[float], list[float]]:
    """(scale, offset) per channel of transformers' `pixel * rescale_factor` then
    `(x - mean) / std` (keras-hub 0.32's own reader multiplies by std instead of dividing)."""
    pc = pc or {}
    mean, std = pc.get("image_mean", [0.5] * 3), pc.get("image_std", [0.5] * 3)
    rescale = float(pc.get("rescale_factor", 1 / 255))
    return [rescale / s for s in std], [-m / s for m, s in zip(mean, std, strict=True)]


def image_converter_config(preset: str, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The keras-hub image converter of a checkpoint: resize to the tower's size, then
    `normalisation` of its image processor settings."""
    from keras_hub.src.utils.preset_utils import check_file_exists, load_json

    vc = cfg.get("vision_config")
    if not isinstance(vc, dict):
        return None
    scale, offset = normalisation(image_processor(lambda n: load_json(preset, n) if check_file_exists(preset, n) else None))
    size = int(vc.get("image_size", 224))
    return {"image_size": (size, size), "scale": scale, "offset": offset}


def has_vision(path: str | Path) -> bool:
    cfg = read_config(path)
    return bool(cfg and cfg.get("vision_config"))


def check_files(path: str | Path, fam: Any) -> None:
    p = Path(path).expanduser()
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        raise UsageError(
            f"model.preset: {p}: a Hugging Face checkpoint without weights (no {' or '.join(WEIGHT_FILES)})",
            hint="save it with save_pretrained(..., safe_serialization=True)",
        )
    if not any((p / f).is_file() for f in fam.hf_tokenizer_files):
        raise UsageError(
            f"model.preset: {p}: no tokenizer ({' or '.join(fam.hf_tokenizer_files)}) for this {fam.name} checkpoint",
            hint="save the tokenizer into the same directory (tokenizer.save_pretrained)",
        )


def _converter(path: str | Path, cfg: dict[str, Any], fam: Any = None) -> Any:
    """keras-hub's converter module for the checkpoint, or the family's own (`Family.hf_converter`)."""
    from gemma_cli.engine.core import runtime

    runtime.setup()
    if fam is not None and fam.hf_converter:
        import importlib

        return importlib.import_module(f"gemma_cli.engine.families.{fam.hf_converter}")
    from keras_hub.src.utils.transformers.preset_loader import TransformersPresetLoader

    return TransformersPresetLoader(str(path), cfg).converter


def convert_kwargs(converter: Any, cfg: dict[str, Any], fam: Any) -> dict[str, Any]:
    """Backbone kwargs from keras-hub's converter module, then the family's fix-up."""
    kwargs = converter.convert_backbone_config(cfg)
    if fam.hf_kwargs_fixup is not None:
        kwargs = fam.hf_kwargs_fixup(cfg, kwargs)
    return kwargs


def backbone_config(path: str | Path, dtype: str = "bfloat16", hf_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The serialized backbone config ({module, class_name, config, registered_name}), no weights.

    A vision+text checkpoint gives its text backbone (what fine-tuning shards). `hf_config`:
    the config.json already read.
    """
    cfg = hf_config if hf_config is not None else read_config(path)
    if cfg is None:
        raise UsageError(f"model.preset: {path}: not a Hugging Face checkpoint (config.json has no model_type)")
    fam = family_of(path, cfg)
    text = model_config(cfg, fam)
    kwargs = convert_kwargs(_converter(path, text, fam), text, fam)
    return fam.serialized(_towers(kwargs, fam), dtype)


def load_causal_lm(path: str | Path, dtype: str) -> Any:
    """The family's keras-hub CausalLM with the checkpoint's weights and tokenizer."""
    cfg = read_config(path)
    if cfg is None:
        raise UsageError(f"model.preset: {path}: not a Hugging Face checkpoint (config.json has no model_type)")
    fam = family_of(path, cfg)
    if not str(path).startswith("hf://"):  # hf://: keras-hub downloads them and says what is missing
        check_files(path, fam)
    from gemma_cli.engine.core import runtime

    runtime.setup()
    import keras_hub
    from keras_hub.src.utils.preset_utils import PresetLoader, check_file_exists, jax_memory_cleanup
    from keras_hub.src.utils.transformers.preset_loader import TransformersPresetLoader
    from keras_hub.src.utils.transformers.safetensor_utils import SafetensorLoader

    class Tensors(SafetensorLoader):
        """keras-hub's reader of the safetensors, also finding a SigLIP tower's weights where
        transformers 5 writes them (`vision_tower.encoder...`, no `vision_model.` level)."""

        def get_tensor(self, hf_weight_key: str) -> Any:
            try:
                return super().get_tensor(hf_weight_key)
            except Exception:
                alt = hf_weight_key.replace("vision_tower.vision_model.", "vision_tower.")
                if alt == hf_weight_key:
                    raise
                return super().get_tensor(alt)

    class Loader(TransformersPresetLoader):
        """keras-hub's HF loader with the family's kwargs fix-up (and converter, if it has its
        own); processor_config.json optional."""

        def __init__(self, preset: str, config: dict[str, Any]):
            super().__init__(preset, config)
            self.converter = _converter(preset, config, fam)

        def load_backbone(self, cls: Any, load_weights: bool, **kwargs: Any) -> Any:
            backbone = cls(**{**convert_kwargs(self.converter, self.config, fam), **kwargs})
            if load_weights:
                jax_memory_cleanup(backbone)
                with Tensors(self.preset) as loader:
                    self.converter.convert_weights(backbone, loader, self.config)
            return backbone

        def load_tokenizer(self, cls: Any, config_name: str = "tokenizer.json", **kwargs: Any) -> Any:
            # keras-hub's Gemma 4 exporter writes tokenizer.model, its reader wants tokenizer.json
            if fam.name == "gemma4" and not check_file_exists(self.preset, "tokenizer.json"):
                from keras_hub.src.utils.preset_utils import get_file

                proto = get_file(self.preset, "tokenizer.model")
                return cls(proto=proto, has_vision_tokens=self.config.get("vision_config") is not None,
                           has_audio_tokens=self.config.get("audio_config") is not None, **kwargs)
            return super().load_tokenizer(cls, config_name, **kwargs)

        def _processor_config(self) -> bool:
            return check_file_exists(self.preset, "processor_config.json")

        def load_preprocessor(self, cls: Any, config_file: Any = None, **kwargs: Any) -> Any:
            import inspect

            tokens = self.config.get("mm_tokens_per_image")
            if tokens and fam.hf_towers and "num_vision_tokens_per_image" in inspect.signature(cls.__init__).parameters:
                kwargs.setdefault("num_vision_tokens_per_image", int(tokens))
            if not self._processor_config():  # a text-only checkpoint (keras-hub's Gemma 4 reader needs it)
                return PresetLoader.load_preprocessor(self, cls, **kwargs)
            return super().load_preprocessor(cls, config_file, **kwargs)

        def load_image_converter(self, cls: Any, **kwargs: Any) -> Any:
            own = fam.name == "gemma4"  # keras-hub reads Gemma 4's processor_config.json (patches, soft tokens)
            conf = image_converter_config(self.preset, self.config) if fam.hf_towers and not own else None
            return cls(**{**conf, **kwargs}) if conf is not None else super().load_image_converter(cls, **kwargs)

        def load_video_converter(self, cls: Any, **kwargs: Any) -> Any:
            return super().load_video_converter(cls, **kwargs) if self._processor_config() else None

    loader = Loader(path if str(path).startswith("hf://") else str(Path(path).expanduser()), cfg)
    # keras-hub's `CausalLM.from_preset` picks the first CausalLM of the backbone class, which
    # for Gemma 4 is the speculative-decoding `Gemma4AssistantCausalLM`: name the class.
    cls = getattr(keras_hub.models, fam.causal_lm_class)
    try:
        return loader.load_task(cls, True, True, dtype=dtype)
    except (UsageError, RuntimeFailure):
        raise
    except Exception as e:  # a checkpoint whose tensors do not fit its config; hf://: the network
        if str(path).startswith("hf://"):
            from gemma_cli.engine.model.errors import load_error

            raise load_error(str(path), e) from None
        text = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        raise RuntimeFailure(f"cannot load the Hugging Face checkpoint {path}: {text}") from None
