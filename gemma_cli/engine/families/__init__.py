"""Model families: everything gemma knows about one architecture, in one module each.

A family module (`gemma.py` for Gemma 1/2, `gemma3.py`, `llama3.py`, ...) defines one
`Family` with:

- `presets`: the architecture table — each well-known preset's serialized keras-hub backbone
  config and the parameter count keras-hub publishes for it (plan any of them offline);
- `layout_rules`: the default layout rules (regex → mesh axes) on a mesh's model/batch axes;
- `lora_targets`: the layers that get LoRA adapters by default;
- `chat`: the turn format (special-token pieces and role names) for chat data and `--chat`;
- `hf_model_types`: the Hugging Face `model_type`s whose checkpoints load into this family
  (through keras-hub's own converter in `keras_hub/src/utils/transformers/`), with
  `hf_tokenizer_files` (one of them must be in a checkpoint), `hf_kwargs_fixup` (what the
  converter reads wrong or leaves out of a config.json), `hf_export_fixup` /
  `hf_export_weights` (what keras-hub's `export_to_transformers` writes wrong: config.json
  and tokenizer_config.json edits, or a whole weight map) and the chat template written into
  an export's tokenizer_config.json;
- `gguf_archs` / `gguf_module`: the llama.cpp architectures the family maps to and the module
  here that holds that mapping (tensor names, metadata, vocabulary; `gemma convert gguf` and
  `gemma export --format gguf` both use it);
- `tiny`: tiny backbone configs for tests (vocab ~128, 2 layers), and `tiny_hf`: tiny
  Hugging Face configs with the family's distinctive settings (tests/hf_tiny.py builds them
  with `transformers`);
- `block_name`: the name of decoder block i (`decoder_block_{i}`), the unit `train.remat`
  rematerialises;
- `dim_names`: regex → names of a weight's dimensions (`heads`, `hidden`, `head_dim`, ...), which
  the layout planner uses to say which dimension it sharded.

Adding a family is one module here (plus its tests) and one line in `FAMILIES` below. This
package is plain data and light functions: it imports keras/keras_hub only inside the keras-hub
rule readers.

Example:
    >>> from gemma_cli.engine import families
    >>> families.for_backbone("Gemma3Backbone").name
    'gemma3'
    >>> families.get_preset("gemma_7b_en")["config"]["num_layers"]
    28
"""

from __future__ import annotations

import ast
import copy
import difflib
import functools
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Axes = tuple[str | None, ...]
RuleSpec = tuple[str, Axes]


def backbone_class(bb_config: dict[str, Any]) -> str:
    """The class name in a serialized backbone config (`Gemma3Backbone`)."""
    return bb_config.get("class_name") or bb_config.get("registered_name", "").split(">")[-1]


@dataclass(frozen=True)
class ChatFormat:
    """How a family writes a conversation.

    Args:
        start_turn: str. The special piece opening a turn (`<start_of_turn>`).
        end_turn: str. The special piece closing a turn (`<end_of_turn>`).
        roles: dict. Our role names → the family's (`assistant` → `model`).
        system: str. `fold`: a system message is prepended to the first user turn (Gemma 1-3);
            `turn`: it is a turn of its own, role `roles["system"]` (Gemma 4).
        image_token: str | None. In the exported template, an image content part becomes this
            text, which the model's `transformers` processor expands into the image's tokens
            (`<start_of_image>` for Gemma 3). Defaults to None (image parts are left out).
    """

    start_turn: str
    end_turn: str
    roles: dict[str, str]
    system: str = "fold"
    image_token: str | None = None  # what an image part is in the text transformers' processor expands

    def hf_template(self) -> str:
        """This format as a `transformers` chat template (Jinja, for tokenizer_config.json).

        `{{ bos_token }}`, then per message `<start><role>\\n<content><end>\\n`, roles mapped by
        `roles`; with `add_generation_prompt` the model's turn is opened. A `fold` system
        message is prepended to the first user turn (Gemma 1-3); a `turn` one is a turn of
        its own (Gemma 4).
        """
        roles = "{" + ", ".join(f"{k!r}: {v!r}" for k, v in self.roles.items()) + "}"
        fold = self.system == "fold"
        return "".join([
            "{{ bos_token }}",
            f"{{%- set roles = {roles} %}}",
            "{%- set prefix = '' %}",
            "{%- if fold and messages and messages[0]['role'] == 'system' %}"
            "{%- set prefix = messages[0]['content'] | trim + '\\n\\n' %}{%- set messages = messages[1:] %}"
            "{%- endif %}".replace("fold", "true" if fold else "false"),
            "{%- for message in messages %}",
            # content as a string, or as parts (text joined; an image part is the image token)
            "{%- if message['content'] is string %}{%- set text = message['content'] | trim %}{%- else %}",
            "{%- set ns = namespace(text='') %}{%- for part in message['content'] %}",
            "{%- if part['type'] == 'text' %}{%- set ns.text = ns.text + part['text'] %}",
            f"{{%- elif part['type'] in ['image', 'image_url'] %}}{{%- set ns.text = ns.text + {(self.image_token or '')!r} %}}",
            "{%- endif %}{%- endfor %}{%- set text = ns.text | trim %}{%- endif %}",
            "{%- if loop.first and message['role'] == 'user' %}{%- set text = prefix + text %}{%- endif %}",
            f"{{{{ {self.start_turn!r} + roles.get(message['role'], message['role']) + '\\n' + text + {self.end_turn + chr(10)!r} }}}}",
            "{%- endfor %}",
            f"{{%- if add_generation_prompt %}}{{{{ {self.start_turn + self.roles['assistant'] + chr(10)!r} }}}}{{%- endif %}}",
        ])


GEMMA_CHAT = ChatFormat(
    start_turn="<start_of_turn>",
    end_turn="<end_of_turn>",
    roles={"user": "user", "assistant": "model", "model": "model"},
    system="fold",
)


# Hugging Face / PEFT module names (`target_modules: [q_proj, v_proj]`) → keras-hub layer names
HF_LORA_GEMMA = {
    "q_proj": "query", "k_proj": "key", "v_proj": "value", "o_proj": "attention_output",
    "gate_proj": "ffw_gating", "up_proj": "ffw_gating_2", "down_proj": "ffw_linear",
}


def gate_width(class_name: str | None, intermediate_dim: int) -> int:
    """One feed-forward gate's width from a backbone config's `intermediate_dim`."""
    fam = for_backbone(class_name) if class_name else None
    return intermediate_dim // (fam.gate_divisor if fam is not None else 1)


def hf_module_paths(table: dict[str, str] = HF_LORA_GEMMA) -> dict[str, str]:
    """keras-hub layer name → its Hugging Face module path inside a decoder layer
    (`query` → `self_attn.q_proj`, `ffw_gating` → `mlp.gate_proj`): the inverse of `table`."""
    return {keras: ("self_attn." if hf in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp.") + hf
            for hf, keras in table.items()}


@dataclass(frozen=True)
class Preset:
    """One row of the architecture table: a backbone config and its published size."""

    config: dict[str, Any]
    params: int


@dataclass(frozen=True)
class Family:
    """One model family (see the module docstring)."""

    name: str
    backbone_classes: tuple[str, ...]
    module: str  # keras-hub module of the backbone class (for serialized configs)
    layer_name: str  # the backbone layer's name in serialized configs
    layout_rules: Callable[[str, str], list[RuleSpec]]
    layout_source: str
    lora_targets: tuple[str, ...] = ("query", "value")
    hf_lora_names: dict[str, str] = field(default_factory=lambda: dict(HF_LORA_GEMMA))
    peft_export: bool = False  # `gemma export --format peft` maps this family's LoRA to PEFT's modules
    gate_divisor: int = 1  # keras-hub's Gemma 1/2 `intermediate_dim` counts both gates: 2
    gguf_hint: str | None = None  # why `export --format gguf` refuses this family, and what to do
    chat: ChatFormat | None = GEMMA_CHAT
    hf_model_types: tuple[str, ...] = ()
    gguf_archs: tuple[str, ...] = ()  # llama.cpp `general.architecture` values
    gguf_module: str | None = None  # module of this package with the GGUF mapping
    presets: dict[str, Preset] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    vision_presets: frozenset[str] = frozenset()  # names of vision+text presets
    tiny: dict[str, dict[str, Any]] = field(default_factory=dict)
    block_name: str = "decoder_block_{i}"
    dim_names: tuple[tuple[str, tuple[str, ...]], ...] = ()
    hf_tokenizer_files: tuple[str, ...] = ("tokenizer.model",)
    # towers of a multimodal HF checkpoint this family loads, plans and exports (the rest are
    # planned and loaded as the text backbone): `("vision_encoder",)`
    hf_towers: tuple[str, ...] = ()
    # module of this package that replaces keras-hub's HF converter for this family (its
    # `convert_backbone_config` / `convert_weights` / `convert_tokenizer`): `paligemma_hf`
    hf_converter: str | None = None
    # (causal_lm, out_dir): writes the whole `--format hf` export where keras-hub has no
    # exporter for the family (PaliGemma); `fix_hf_export` then runs as for the others
    hf_export: Callable[[Any, Any], None] | None = None
    # causal_lm → {file name: text}: files an HF export needs that keras-hub's exporter does not
    # write (Gemma 4's processor_config.json)
    hf_export_files: Callable[[Any], dict[str, str]] | None = None
    hf_kwargs_fixup: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None
    hf_export_fixup: Callable[[Any, dict[str, Any], dict[str, Any]], None] | None = None
    # (causal_lm, config, tok_cfg): what a multimodal export writes from the live model and its
    # tokenizer (image token ids, the processor's files), after `hf_export_fixup`
    hf_export_vision: Callable[[Any, dict[str, Any], dict[str, Any]], None] | None = None
    # (backbone, layer): transformers' module path of a LoRA layer of the vision tower (PEFT
    # export; its kernel is a Dense `(in, out)`), None if the layer is not in the tower
    hf_vision_lora_path: Callable[[Any, Any], str | None] | None = None
    hf_export_weights: Callable[[Any], dict[str, Any]] | None = None  # replaces keras-hub's weight map
    hf_chat_template: str | None = None  # defaults to `chat.hf_template()`
    tiny_hf: dict[str, dict[str, Any]] = field(default_factory=dict)
    tiny_hf_vision: dict[str, dict[str, Any]] = field(default_factory=dict)  # image+text test models

    def chat_template(self) -> str | None:
        """The `transformers` chat template of this family (None if it has no chat format)."""
        if self.hf_chat_template is not None:
            return self.hf_chat_template
        return self.chat.hf_template() if self.chat is not None else None

    @property
    def causal_lm_class(self) -> str:
        """The keras-hub CausalLM of this family (`Gemma4Backbone` → `Gemma4CausalLM`)."""
        return self.backbone_class.replace("Backbone", "CausalLM")

    @property
    def backbone_class(self) -> str:
        return self.backbone_classes[0]

    def block_names(self, num_layers: int) -> list[str]:
        """The layer names of the decoder blocks of a `num_layers`-layer backbone."""
        return [self.block_name.format(i=i) for i in range(num_layers)]

    def dim_names_of(self, path: str, rank: int) -> tuple[str, ...] | None:
        """The names of the dimensions of the weight at `path`, if the family knows them."""
        for pattern, names in self.dim_names:
            if len(names) == rank and re.fullmatch(pattern, path):
                return names
        return None

    def serialized(self, config: dict[str, Any], dtype: str = "bfloat16") -> dict[str, Any]:
        """`{"module", "class_name", "config", "registered_name"}` as a preset's config.json."""
        inner: dict[str, Any] = {
            "name": self.layer_name,
            "trainable": True,
            "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": dtype}, "registered_name": None},
        }
        inner.update(copy.deepcopy(config))
        cls = self.backbone_class
        return {"module": self.module, "class_name": cls, "config": inner, "registered_name": f"keras_hub>{cls}"}


def keras_hub_rules(cls_name: str) -> Callable[[str, str], list[RuleSpec]]:
    """Rules read off keras-hub's own `<cls>.get_layout_map` (regex → axes), no device used."""

    def rules(model_axis: str, batch_axis: str) -> list[RuleSpec]:
        import numpy as np

        from gemma_cli.engine.core import runtime

        runtime.setup()
        import keras
        import keras_hub

        cls = getattr(keras_hub.models, cls_name)
        # a placeholder 2-axis mesh: get_layout_map only names axes
        mesh = keras.distribution.DeviceMesh(shape=(1, 1), axis_names=[batch_axis, model_axis], devices=np.arange(1))
        lm = cls.get_layout_map(mesh, model_parallel_dim_name=model_axis, data_parallel_dim_name=batch_axis)
        return [(pattern, tuple(layout.axes)) for pattern, layout in lm._layout_map.items()]  # noqa: SLF001

    return rules


def named_rules(table: list[RuleSpec]) -> Callable[[str, str], list[RuleSpec]]:
    """Rules written with the axis names `model`/`batch`, renamed onto a mesh's axes."""

    def rules(model_axis: str, batch_axis: str) -> list[RuleSpec]:
        names = {"model": model_axis, "batch": batch_axis}
        return [(p, tuple(names[a] if a else None for a in axes)) for p, axes in table]

    return rules


# Dimension names of the keras-hub Gemma weights (Gemma 1/2/3 share the layer structure).
GEMMA_DIM_NAMES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("token_embedding/embeddings", ("vocab", "hidden")),
    (r".*attention/(query|key|value)/kernel", ("heads", "hidden", "head_dim")),
    (r".*attention/attention_output/kernel", ("heads", "head_dim", "hidden")),
    (r".*ffw_gating(_2)?/kernel", ("hidden", "ffw")),
    (r".*ffw_linear/kernel", ("ffw", "hidden")),
    (r".*attention/(query|key|value)/lora_kernel_a", ("heads", "hidden", "rank")),
    (r".*attention/(query|key|value)/lora_kernel_b", ("rank", "head_dim")),
)


# ------------------------------------------------------------------------- registry ---
def _families() -> list[Family]:
    from gemma_cli.engine.families import gemma, gemma3, gemma4, llama3, paligemma

    return [gemma.FAMILY, gemma3.FAMILY, gemma4.FAMILY, llama3.FAMILY, paligemma.FAMILY]


FAMILIES: list[Family] = []


def all_families() -> list[Family]:
    if not FAMILIES:
        FAMILIES.extend(_families())
    return FAMILIES


def by_name(name: str) -> Family:
    for f in all_families():
        if f.name == name:
            return f
    raise KeyError(name)


def lora_layer_names(class_name: str, names: list[str] | tuple[str, ...] | None) -> list[str] | None:
    """`model.lora.target_layers` as keras-hub layer names: Hugging Face / PEFT module names
    (`q_proj`, `v_proj`, `gate_proj` ...) become the family's layers (`query`, `value`,
    `ffw_gating` ...); keras-hub names pass through; None stays None (the family's default)."""
    if names is None:
        return None
    fam = for_backbone(class_name)
    table = fam.hf_lora_names if fam is not None else HF_LORA_GEMMA
    out: list[str] = []
    for n in names:
        k = table.get(n, n)
        if k not in out:
            out.append(k)
    return out


def for_backbone(class_name: str) -> Family | None:
    """The family of a keras-hub backbone class name (`Gemma3Backbone`), or None."""
    for f in all_families():
        if class_name in f.backbone_classes:
            return f
    return None


def for_gguf_arch(arch: str) -> Family | None:
    """The family whose GGUF mapping reads llama.cpp architecture `arch` (`gemma3`), or None."""
    for f in all_families():
        if arch in f.gguf_archs:
            return f
    return None


def gguf_architectures() -> list[str]:
    """Every llama.cpp architecture some family reads and writes."""
    return [a for f in all_families() for a in f.gguf_archs]


def gguf_mapping(family: Family) -> Any:
    """The module with `family`'s GGUF mapping (see `gemma_gguf.py`)."""
    import importlib

    if family.gguf_module is None:
        raise KeyError(f"family {family.name} has no GGUF mapping")
    return importlib.import_module(f"gemma_cli.engine.families.{family.gguf_module}")


def for_hf_model_type(model_type: str) -> Family | None:
    """The family whose checkpoints have this Hugging Face `model_type` (`gemma4_text`), or None."""
    for f in all_families():
        if model_type in f.hf_model_types:
            return f
    return None


# ------------------------------------------------------------------ architecture table ---
_KAGGLE = re.compile(r"kaggle://keras/[A-Za-z0-9_.\-]+/keras/(?P<name>[A-Za-z0-9_.\-]+?)(?:/\d+)?/?")


def canonical(preset: str) -> str | None:
    """The known name behind `preset` (`kaggle://keras/gemma/keras/gemma_7b_en/2` → `gemma_7b_en`)."""
    name = preset.strip()
    m = _KAGGLE.fullmatch(name)
    if m:
        name = m.group("name")
    for f in all_families():
        if name in f.presets or name in f.aliases:
            return name
    return None


def _lookup(preset: str) -> tuple[Family, str, Preset] | None:
    name = canonical(preset)
    if name is None:
        return None
    for f in all_families():
        if name in f.presets or name in f.aliases:
            row = f.aliases.get(name, name)
            return f, name, f.presets[row]
    return None


def preset_names() -> list[str]:
    """Every preset name the table knows (bare names; kaggle:// forms map onto them)."""
    return sorted({n for f in all_families() for n in (*f.presets, *f.aliases)})


def get_preset(preset: str) -> dict[str, Any] | None:
    """The serialized backbone config of a known preset (a fresh copy), or None.

    Args:
        preset: str. A keras-hub preset name (`gemma_7b_en`) or its
            `kaggle://keras/<model>/keras/<name>[/<version>]` handle.
    """
    hit = _lookup(preset)
    if hit is None:
        return None
    fam, _, row = hit
    return fam.serialized(row.config)


def published_params(preset: str) -> int | None:
    """The parameter count keras-hub publishes for the (text) backbone of `preset`."""
    hit = _lookup(preset)
    return hit[2].params if hit else None


def is_vision(preset: str) -> bool:
    """Whether the real preset carries a vision tower (planned and loaded with it, for a family
    whose table has it; else planned as its text backbone)."""
    hit = _lookup(preset)
    return bool(hit and hit[1] in hit[0].vision_presets)


def hf_model_types() -> list[str]:
    """Every Hugging Face `model_type` a local checkpoint may have."""
    return sorted(t for f in all_families() for t in f.hf_model_types)


def tiny_hf_config(name: str) -> tuple[Family, dict[str, Any]]:
    """(family, {"config", "model", "kwargs"}) of a tiny Hugging Face test model."""
    for f in all_families():
        if name in f.tiny_hf:
            return f, copy.deepcopy(f.tiny_hf[name])
    raise KeyError(f"no tiny Hugging Face config {name!r}")


def tiny_hf_vision_config(name: str) -> tuple[Family, dict[str, Any]]:
    """(family, {"config", "model", "processor", "kwargs", ...}) of a tiny image+text
    Hugging Face test model (`Family.tiny_hf_vision`)."""
    for f in all_families():
        if name in f.tiny_hf_vision:
            return f, copy.deepcopy(f.tiny_hf_vision[name])
    raise KeyError(f"no tiny Hugging Face vision config {name!r}")


def tiny_config(name: str) -> tuple[Family, dict[str, Any]]:
    """(family, backbone kwargs) of a tiny test model: `gemma`, `gemma2`, `gemma3`, ..."""
    for f in all_families():
        if name in f.tiny:
            return f, copy.deepcopy(f.tiny[name])
    raise KeyError(f"no tiny config {name!r}")


# ---- preset names: ours and keras-hub's -----------------------------------------------------
@functools.lru_cache(maxsize=1)
def keras_hub_presets() -> dict[str, str]:
    """keras-hub's preset registry, name → handle (`kaggle://...`, `hf://...`).

    Read from its `src/models/*/*_presets.py` files, which are plain dicts, so that keras-hub
    (and with it keras and TensorFlow) is not imported; empty when keras-hub is not installed.
    """
    spec = importlib.util.find_spec("keras_hub")
    if spec is None or not spec.submodule_search_locations:
        return {}
    root = Path(list(spec.submodule_search_locations)[0]) / "src" / "models"
    names: dict[str, str] = {}
    for f in sorted(root.glob("*/*_presets.py")):
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            if not (isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict)):
                continue
            for k, v in zip(node.value.keys, node.value.values, strict=True):
                if isinstance(k, ast.Constant) and isinstance(k.value, str) and isinstance(v, ast.Dict):
                    handle = ""
                    for kk, vv in zip(v.keys, v.values, strict=True):
                        if isinstance(kk, ast.Constant) and kk.value == "kaggle_handle":
                            try:
                                handle = str(ast.literal_eval(vv))
                            except ValueError:
                                handle = ""
                    names[k.value] = handle
    return names


def unknown_preset(name: str) -> str | None:
    """Why a bare preset name is not one: known neither to the architecture table
    (`engine/families/`) nor to keras-hub's registry; with the closest names."""
    registry = keras_hub_presets()
    if get_preset(name) is not None or not registry or name in registry:
        return None
    close = difflib.get_close_matches(name, sorted(set(registry) | set(preset_names())), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else (
        "give a keras-hub preset name, kaggle://, hf:// or a local preset directory")
    return f"unknown preset '{name}' ({hint})"
