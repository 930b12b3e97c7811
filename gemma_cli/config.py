"""The run-config schema and its loader.

A run config is a YAML file validated by a strict schema: unknown keys are errors, every field
is typed, bounded where it makes sense and described. Errors name the file, the line, the
dotted key, what is wrong and, for a misspelt key, the closest valid one. All problems of a
file are reported at once.

Overrides follow the MaxText/torchtune convention, `key=value` after the config path, with the
value parsed as YAML and typed by the schema:

    gemma finetune configs/x.yaml optimizer.learning_rate=1e-4 mesh.shape=[1,8]
"""

from __future__ import annotations

import difflib
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from gemma_cli import defaults as D
from gemma_cli.errors import ConfigError, UsageError
from gemma_cli.foreign import explain as explain_foreign


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------------------------- model ---
class LoraConfig(_Strict):
    """Low-rank adaptation. `rank: 0` (or no `lora` section) means full fine-tuning."""

    rank: int = Field(4, ge=0, le=4096, description="LoRA rank; 0 = full fine-tune.")
    alpha: float | None = Field(
        None, gt=0, description="LoRA alpha (scale = alpha / rank). Defaults to the rank."
    )
    target_layers: list[str] | None = Field(
        None,
        description="Names of the layers that get adapters. Defaults to keras-hub's choice "
        "(the attention query and value projections).",
    )


class ModelConfig(_Strict):
    preset: str = Field(
        ...,
        min_length=1,
        description="keras-hub preset name (gemma_7b_en), kaggle://owner/model/keras/variant, "
        "hf://org/repo, or a local preset directory (e.g. presets/gemma3_270m).",
    )
    precision: Literal["float32", "bfloat16", "mixed_bfloat16"] = Field(
        "bfloat16", description="Dtype policy of the weights and the compute."
    )
    lora: LoraConfig | None = Field(None, description="LoRA settings; absent = full fine-tune.")
    quantize: Literal["none", "int8", "int4"] = Field(
        "none",
        description="Quantize the frozen base after loading and before LoRA (QLoRA): int8, or int4 "
        "(sub-channel, blocks of 128 rows, packed two per byte). Needs model.lora to fine-tune.",
    )
    vision: Literal["frozen", "lora", "full"] = Field(
        "frozen",
        description="What of a multimodal model's vision tower (encoder and projector) trains: frozen (nothing, "
        "as MaxText's freeze_vision_encoder_params), lora (adapters on its attention query/value, with "
        "model.lora), full (every weight; a full fine-tune only).",
    )

    @property
    def lora_rank(self) -> int:
        return self.lora.rank if self.lora else 0

    def training_problem(self) -> str | None:
        """Why this model cannot be fine-tuned as configured (a quantized base without LoRA)."""
        if self.quantize == "none" or self.lora_rank:
            return None
        bits = "4-bit" if self.quantize == "int4" else "8-bit"
        return (f"{self.quantize}: {bits} needs LoRA (a quantized base is frozen; only adapters train): add "
                "`model.lora: {rank: 8}` (or model.lora.rank=8 on the command line), or set model.quantize: none "
                "for a full fine-tune")


# ----------------------------------------------------------------------------------- mesh ---
class MeshConfig(_Strict):
    shape: list[int] = Field(
        [1, -1],
        min_length=1,
        max_length=4,
        description="Devices per mesh axis; one entry may be -1 = fill from the device count.",
    )
    axes: list[str] = Field(["batch", "model"], min_length=1, max_length=4)
    batch_axis: str = Field("batch", description="Mesh axis that splits the data batch.")
    model_axis: str = Field(
        "model", description="Mesh axis the family default layout shards weights over."
    )

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        bad = [x for x in v if x == 0 or x < -1]
        if bad:
            raise ValueError(f"entries must be positive or -1, got {bad[0]}")
        if v.count(-1) > 1:
            raise ValueError(f"at most one -1 (fill from the device count), got {v}")
        return v

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"axis names must be unique, got {v}")
        return v

    def batch_problem(self, batch_size: int, shape: tuple[int, ...]) -> str | None:
        """Why `batch_size` cannot split over the batch axis of `shape` (None if it can; a
        -1 entry is unknown until the device count is)."""
        n = shape[self.axes.index(self.batch_axis)]
        if n > 0 and batch_size % n:
            return f"{batch_size} is not divisible by the '{self.batch_axis}' mesh axis ({n}); use a multiple of {n}"
        return None

    def resolve(self, n_devices: int) -> tuple[int, ...]:
        """The concrete shape for `n_devices` devices; raises UsageError if it cannot fit."""
        known = 1
        for x in self.shape:
            if x != -1:
                known *= x
        if -1 in self.shape:
            if n_devices % known:
                raise UsageError(
                    f"mesh.shape {self.shape}: the fixed axes use {known} devices, which does "
                    f"not divide the {n_devices} devices here",
                    hint=f"set mesh.shape so that its product is {n_devices}",
                )
            return tuple(n_devices // known if x == -1 else x for x in self.shape)
        if known != n_devices:
            raise UsageError(
                f"mesh.shape {self.shape} needs {known} devices but {n_devices} are available",
                hint=f"set mesh.shape so that its product is {n_devices}, "
                f"e.g. mesh.shape=[1,{n_devices}] or use -1 to fill"
                + (f"; on a CPU-only machine GEMMA_CPU_DEVICES={known} simulates {known} devices" if n_devices == 1 else ""),
            )
        return tuple(self.shape)


# --------------------------------------------------------------------------------- layout ---
class LayoutRule(_Strict):
    pattern: str = Field(..., description="Regex that must match a whole variable path (re.fullmatch, as keras.distribution.LayoutMap does).")
    axes: list[str | None] = Field(..., description="Mesh axis (or null) per dimension.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"regex does not compile: {e}") from None
        return v


class LayoutConfig(_Strict):
    rules: Literal["default", "fsdp"] | list[LayoutRule] = Field(
        "default",
        description="`default`: the model family's rules (model axis on heads or the FFW width, "
        "batch axis on the hidden dimension; an axis that does not divide its dimension moves to "
        "one it divides). `fsdp`: the family's rules plus every mesh axis on every matrix (ZeRO-3: "
        "weights, gradients and optimizer state divide by the whole device count). Or a list of "
        "{pattern, axes}: strict, see `indivisible`.",
    )
    indivisible: Literal["error", "replicate"] = Field(
        "error",
        description="A sharded dimension not divisible by its mesh axes (a rule from the config, "
        "or a family rule that no dimension can take): stop with an error, or replicate that "
        "dimension and warn.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default(cls, v: Any) -> Any:
        if isinstance(v, str):  # `layout: default` / `layout: fsdp`
            v = {"rules": v}
        if isinstance(v, list):  # `layout: [{pattern, axes}, ...]`
            v = {"rules": v}
        if isinstance(v, dict) and v.get("rules", "default") is None:  # configs saved before fsdp
            v = {**v, "rules": "default"}
        if isinstance(v, dict) and isinstance(v.get("rules"), str) and v["rules"] not in ("default", "fsdp"):
            close = difflib.get_close_matches(v["rules"], ["default", "fsdp"], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(
                f"rules must be 'default', 'fsdp' or a list of {{pattern, axes}}, got {v['rules']!r}{hint}"
            )
        return v

    @property
    def is_default(self) -> bool:
        return self.rules == "default"


# ----------------------------------------------------------------------------------- data ---
def template_fields(template: str) -> list[str]:
    """The `{field}` names of a data template, in order (str.format's own parser: the one
    reading of templates for the schema, the renderer and `generate --template`). Raises
    ValueError when the template does not parse."""
    import string

    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


class DataConfig(_Strict):
    name: str | None = Field(
        None,
        description="A dataset by name: a tfds name (imdb_reviews), or a Hugging Face dataset "
        "`hf://ORG/NAME` (read through the `datasets` library: the Hub, or its local cache "
        "offline).",
    )
    split: str = Field("train", description="Split (tfds slicing allowed: train[:10%]).")
    subset: str | None = Field(
        None, description="Hugging Face datasets: the config (subset) name, e.g. `main`."
    )
    revision: str | None = Field(
        None, description="Hugging Face datasets: a branch, tag or commit of the dataset repo."
    )
    data_dir: str | None = Field(None, description="tfds data_dir (prepared data lives here).")
    paths: list[str] | None = Field(
        None,
        description="Local files or globs (jsonl, csv, txt, parquet), or a dataset directory: "
        "`datasets`' save_to_disk output, or a folder of Parquet/JSONL files (a Hub dataset "
        "checked out).",
    )
    format: Literal["jsonl", "csv", "txt", "parquet", "chat"] | None = Field(
        None,
        description="Local file format, inferred from the extension when absent; `chat`: the "
        "records are conversations (JSONL or Parquet), also chosen automatically for records "
        "holding a list of turns or prompt/completion pairs.",
    )
    field: str = Field(
        "text", description="Field holding the text (ignored when `template` is set)."
    )
    template: str | None = Field(
        None,
        description="Prompt template over the record's fields, e.g. "
        "'Instruction:\\n{instruction}\\n\\nResponse:\\n{response}'.",
    )
    messages_field: str | None = Field(
        None,
        description="Chat records: the field holding the list of turns. Defaults to "
        "`messages` ({role, content}) or `conversations` (ShareGPT {from, value}), whichever "
        "the record has; `prompt`/`completion` pairs need none.",
    )
    loss_on: Literal["assistant", "all"] | None = Field(
        None,
        description="Which tokens carry the loss: `assistant` (the model's turns of a chat, or "
        "the `response_field` of a template) or `all`. Defaults to `assistant` for chat and "
        "for templates with a response_field, `all` otherwise.",
    )
    response_field: str | None = Field(
        None,
        description="Templates: the field whose tokens (and the template text after it) carry "
        "the loss; the prompt before it weighs 0.",
    )
    take: int | None = Field(None, ge=1, description="Use only the first N records.")
    shuffle: bool = Field(True, description="Shuffle (seeded by train.seed).")
    shuffle_buffer: int = Field(
        10_000,
        ge=1,
        description="Shuffle window in records for sources read in order (CSV, Parquet, tfds); "
        "JSONL and TXT are shuffled globally by record index.",
    )
    sequence_length: int = Field(
        D.SEQUENCE_LENGTH, ge=8, le=131_072, description="Tokens per training sequence."
    )
    batch_size: int = Field(D.BATCH_SIZE, ge=1, le=65_536, description="Global batch size.")
    packing: bool = Field(
        False,
        description="Pack several whole documents into each sequence; each keeps its own "
        "segment id (documents longer than the sequence are truncated).",
    )
    workers: int | None = Field(
        None,
        ge=0,
        le=256,
        description="Threads that read, render and tokenize records ahead of the step (0 = in the "
        "training thread). Default: the CPU count, at most 8, with an accelerator; 0 on the CPU "
        "backend, where the step itself uses every core.",
    )
    eval_split: str | None = Field(
        None, description="Split for evaluation (tfds, hf://, or a dataset directory in paths)."
    )
    eval_paths: list[str] | None = Field(None, description="Local files for evaluation.")
    eval_holdout: int | None = Field(
        None, ge=1, description="Hold out the first N records of the data for evaluation."
    )
    eval_take: int | None = Field(None, ge=1, description="Evaluate on at most N records.")

    @field_validator("template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            fields = template_fields(v)
        except ValueError as e:
            raise ValueError(f"template does not parse: {e}") from None
        if not fields:
            raise ValueError("template names no {field}")
        return v

    @property
    def source(self) -> str:
        if self.name and self.name.startswith("hf://"):
            return "hf"
        return "tfds" if self.name else "local"

    @property
    def template_fields(self) -> list[str]:
        return template_fields(self.template) if self.template else []


# ------------------------------------------------------------------------------ optimizer ---
class OptimizerConfig(_Strict):
    name: Literal["adamw", "adam", "sgd", "adafactor"] = "adamw"
    learning_rate: float | None = Field(
        None,
        gt=0,
        le=10,
        description=f"Peak learning rate. Defaults by method: {D.LR_LORA:g} with LoRA, "
        f"{D.LR_FULL:g} for a full fine-tune.",
    )
    schedule: Literal["constant", "cosine", "linear"] = Field(
        D.SCHEDULE, description="Decay after the warmup (to 0 at the last step)."
    )
    warmup_steps: int | None = Field(
        None, ge=0, description="Linear warmup steps; when absent, warmup_ratio of the steps."
    )
    warmup_ratio: float = Field(
        D.WARMUP_RATIO, ge=0, le=1, description="Warmup as a fraction of the optimizer steps (when warmup_steps is absent)."
    )
    weight_decay: float = Field(0.01, ge=0, le=1)
    exclude_from_weight_decay: list[str] = Field(["bias", "scale"])
    clipnorm: float | None = Field(None, gt=0)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)

    def warmup_for(self, total_steps: int) -> int:
        """Warmup steps of a run of `total_steps` optimizer updates."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return D.warmup_steps(total_steps, self.warmup_ratio)


# ---------------------------------------------------------------------------------- train ---
# the training methods (`engine/train/RECIPES` holds their recipes), and the config section
# each method owns (a section given under another method is an error)
METHODS = ("sft", "dpo", "grpo")
METHOD_SECTIONS: dict[str, str] = {"dpo": "dpo", "grpo": "grpo"}  # section → the method it configures


class GRPOConfig(_Strict):
    """`grpo:` — reinforcement learning with reward functions (`train.method: grpo`)."""

    rewards: list[str] = Field(
        ..., min_length=1,
        description="Reward specs, as `gemma eval --reward`: built-ins (contains, exact, regex:P, json, math, "
                    "length:N) or path/to/file.py:function with TRL's signature fn(prompts, completions, **columns).")
    reward_weights: list[float] | None = Field(None, description="One weight per reward (default: all 1).")
    num_generations: int = Field(8, ge=2, le=1024, description="Completions sampled per prompt (G).")
    max_completion_length: int = Field(256, ge=1, le=131_072)
    temperature: float = Field(1.0, gt=0, le=100)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, description="Sample from the k most likely tokens (default: all).")
    beta: float = Field(0.0, ge=0, description="KL coefficient against the reference (0: no reference pass).")
    epsilon: float = Field(0.2, gt=0, lt=1)
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip range (clip-higher); defaults to epsilon.")
    loss: Literal["grpo", "dapo", "dr_grpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    iterations: int = Field(1, ge=1, le=64, description="Policy updates per rollout (mu).")
    mask_truncated_completions: bool = Field(
        False, description="Completions that hit max_completion_length carry no loss.")

    @property
    def weights(self) -> list[float]:
        return self.reward_weights if self.reward_weights is not None else [1.0] * len(self.rewards)


class TrainConfig(_Strict):
    method: Literal[METHODS] = Field(  # type: ignore[valid-type]
        "sft", description="The training method: sft (supervised fine-tuning: next-token cross-entropy), "
                           "dpo (preference tuning on chosen/rejected pairs: DPO, IPO, hinge, SimPO or ORPO; the dpo: section), "
                           "grpo (reinforcement learning with reward functions; the grpo: section).")
    epochs: int = Field(1, ge=1, le=100_000)
    max_steps: int | None = Field(None, ge=1, description="Stop after N optimizer steps.")
    seed: int = Field(0, ge=0)
    steps_per_execution: int = Field(1, ge=1, le=10_000)
    output_dir: str | None = Field(None, description="Defaults to runs/<config name>.")
    checkpoint_every: int | None = Field(
        None, ge=1, description="Checkpoint every N steps (and always at the end)."
    )
    keep_checkpoints: int = Field(3, ge=1, le=1000)
    eval_every: int | None = Field(None, ge=1, description="Evaluate every N steps.")
    log_every: int = Field(10, ge=1, description="Write a metrics line every N steps.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "none"]] = Field(
        list(D.REPORT_TO),
        description="Experiment trackers that receive the metrics, the resolved config and the "
        "summary: tensorboard, wandb (pip install 'gemma-cli[wandb]'), mlflow "
        "(pip install 'gemma-cli[mlflow]'), or none. metrics.jsonl is always written.",
    )
    remat: Literal["none", "blocks"] = Field(
        "none",
        description="Rematerialisation: `blocks` keeps only each decoder block's input for the "
        "backward pass and recomputes the rest (far less activation memory, ~1/3 more step time); "
        "`none` keeps every activation. Generation never rematerialises.",
    )
    loss_chunk: Literal["auto", "none"] | int = Field(
        "auto",
        description="Compute the loss over the vocabulary in chunks of N sequence positions, so "
        "the full [batch, sequence, vocabulary] logits never exist. `auto`: chunk when one step's "
        "float32 logits would exceed 1 GiB per device (the 262k-token Gemma 3 vocabulary at "
        "useful batch sizes), else not; `none`: never.",
    )

    @field_validator("loss_chunk", mode="before")
    @classmethod
    def _loss_chunk(cls, v: Any) -> Any:
        if v in ("auto", "none") or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("must be 'auto', 'none' or a positive number of sequence positions")


class DpoConfig(_Strict):
    """Preference tuning (`train.method: dpo`) on chosen/rejected pairs."""

    beta: float = Field(0.1, gt=0, le=1000, description="Strength of the preference (the inverse "
                        "temperature of the implicit reward); must be > 0.")
    loss: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo"] = Field(
        "sigmoid",
        description="sigmoid: DPO; ipo: identity preference optimisation; hinge: SLiC's hinge; simpo: "
        "length-normalised log-probs with a margin `gamma`, no reference; orpo: odds ratio plus the "
        "SFT loss on the chosen answer (weight `lambda`), no reference.")
    gamma: float = Field(0.5, ge=0, le=100, description="SimPO: the target reward margin (TRL's simpo_gamma).")
    lambda_: float = Field(1.0, alias="lambda", ge=0, le=100,
                           description="ORPO: weight of the odds-ratio term against the SFT loss.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="sigmoid: the assumed share of flipped labels "
                                   "(conservative DPO).")
    reference: Literal["auto", "precompute", "none"] | None = Field(
        None,
        description="The reference model of sigmoid/ipo/hinge: `auto` (the default) is the model itself with its LoRA "
        "adapters switched off (no second copy of the weights); `precompute` computes the reference "
        "log-probabilities once before training; `none` trains reference-free (reference log-probs 0). "
        "simpo and orpo have no reference.")

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @property
    def uses_reference(self) -> bool:
        return self.loss not in ("simpo", "orpo") and self.reference != "none"


# ------------------------------------------------------------------------------- generate ---
class GenerateConfig(_Strict):
    max_new_tokens: int = Field(
        D.MAX_NEW_TOKENS, ge=1, le=131_072, description="Tokens to generate after the prompt."
    )
    max_length: int | None = Field(
        None,
        ge=1,
        le=131_072,
        description="Total tokens incl. the prompt (keras-hub's count); when set it wins over "
        "max_new_tokens. Prefer max_new_tokens.",
    )
    sampler: Literal["greedy", "top_k", "top_p", "random", "beam"] = Field(
        "greedy", description="greedy, top_k, top_p, random or beam."
    )
    temperature: float = Field(D.TEMPERATURE, gt=0, le=100)
    top_k: int = Field(D.TOP_K, ge=1, description="top_k sampler: sample from the k likeliest tokens.")
    top_p: float = Field(D.TOP_P, gt=0, le=1, description="top_p sampler: the smallest set of tokens with this much probability.")
    num_beams: int = Field(4, ge=1, le=64)
    seed: int | None = Field(None, ge=0)


# ------------------------------------------------------------------------------------ run ---
class RunConfig(_Strict):
    name: str | None = Field(None, description="Run name; defaults to the config file's stem.")
    model: ModelConfig
    mesh: MeshConfig = Field(default_factory=MeshConfig)
    layout: LayoutConfig = Field(default_factory=LayoutConfig)
    data: DataConfig | None = None
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    dpo: DpoConfig | None = Field(None, description="Preference tuning settings (train.method: dpo).")
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    grpo: GRPOConfig | None = None

    def batch_rows(self) -> tuple[int, str]:
        """(sequences per step, how they are counted): data.batch_size, or for GRPO the
        batch_size prompts × grpo.num_generations completions."""
        b = self.data.batch_size if self.data else 2
        if self.train.method == "grpo" and self.grpo is not None:
            g = self.grpo.num_generations
            return b * g, f"batch_size × grpo.num_generations = {b} × {g} = {b * g} sequences"
        return b, ""

    def batch_problem(self, shape: tuple[int, ...]) -> str | None:
        """Why a step's sequences cannot split over the batch axis of `shape` (None if they can):
        the one batch divisibility check (config validation and the run on its devices)."""
        rows, label = self.batch_rows()
        bad = self.mesh.batch_problem(rows, shape)
        return f"{label}: {bad}" if bad and label else bad

    # set by the loader, not part of the schema
    source_path: str | None = Field(None, exclude=True, repr=False)
    _located: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _method_defaults(self) -> RunConfig:
        """Defaults that depend on other keys, resolved once so that `config show` and the
        run's saved config.yaml say the value used (gemma_cli/defaults.py)."""
        if self.optimizer.learning_rate is None:
            self.optimizer.learning_rate = D.learning_rate(self.model.lora_rank)
        return self

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output_dir or f"runs/{self.name or 'run'}")

    def problem(self, key: str, message: str) -> str:
        """One problem line about `key` (`data.paths[0]`): `file:line: key: message`, the line
        being where the key is written (or `override 'k=v': ...` when an override set it)."""
        loc = tuple(int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"[A-Za-z_]\w*|\[\d+\]", key))
        if self._located is None:
            return f"{key}: {message}"
        return self._located(loc, message)


# -------------------------------------------------------------------------- YAML + lines ---
_Loc = tuple[Any, ...]


def _line_map(text: str) -> dict[_Loc, int]:
    """Dotted location → 1-based line of the key (or list item) in the YAML text."""
    lines: dict[_Loc, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, loc: _Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (loc + (k.value,)) if isinstance(k, yaml.ScalarNode) else loc
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[loc + (i,)] = item.start_mark.line + 1
                walk(item, loc + (i,))

    if root is not None:
        walk(root, ())
    return lines


def _unwrap(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(tp) for a in _unwrap(arg)]
    return [tp]


def _fields_at(loc: _Loc) -> list[str]:
    """The valid keys of the schema object at `loc` (for 'did you mean')."""
    current: list[Any] = [RunConfig]
    for part in loc:
        nxt: list[Any] = []
        for tp in current:
            if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
                f = tp.model_fields.get(part)
                if f is not None:
                    nxt.extend(_unwrap(f.annotation))
            elif typing.get_origin(tp) is list and isinstance(part, int):
                nxt.extend(_unwrap(typing.get_args(tp)[0]))
        current = nxt
    keys: list[str] = []
    for tp in current:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            keys.extend(k for k, f in tp.model_fields.items() if not f.exclude)
    return keys


def _all_keys() -> list[str]:
    """Every dotted key of the schema (model.lora.rank, ...), sections first to last."""
    out: list[str] = []

    def walk(tp: Any, prefix: str) -> None:
        for k, f in tp.model_fields.items():
            if f.exclude:
                continue
            out.append(prefix + k)
            for sub in _unwrap(f.annotation):
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    walk(sub, prefix + k + ".")

    walk(RunConfig, "")
    return out


def _dotted(loc: _Loc) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


class _Located:
    def __init__(self, where: str, lines: dict[_Loc, int], overrides: dict[_Loc, str]):
        self.where, self.lines, self.overrides = where, lines, overrides

    def __call__(self, loc: _Loc, message: str) -> str:
        for i in range(len(loc), -1, -1):
            if loc[:i] in self.overrides:
                return f"override '{self.overrides[loc[:i]]}': {_dotted(loc)}: {message}"
        if self.where == "<preset>":  # a config made up for a preset TARGET: no file to name
            return f"{_dotted(loc)}: {message}"
        for i in range(len(loc), -1, -1):
            if loc[:i] in self.lines:
                return f"{self.where}:{self.lines[loc[:i]]}: {_dotted(loc)}: {message}"
        return f"{self.where}: {_dotted(loc)}: {message}"


def _pydantic_message(err: dict[str, Any]) -> str:
    kind = err["type"]
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        key = loc[-1]
        foreign = explain_foreign(str(key), _dotted(loc[:-1]) if loc[:-1] else "")
        if foreign:
            return foreign
        elsewhere = [k for k in _all_keys() if k.rpartition(".")[2] == key]
        if elsewhere:
            return f"did you mean `{elsewhere[0]}`? (`{key}` belongs in the {elsewhere[0].rpartition('.')[0] or 'top'} section)"
        close = difflib.get_close_matches(str(key), _fields_at(loc[:-1]), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        valid = ", ".join(_fields_at(loc[:-1]))
        return f"unknown key{hint}" + ("" if close else f"; valid keys: {valid}")
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind in ("literal_error", "enum") and "input" in err:
        return f"{msg}, got {err['input']!r}"
    if "input" in err and not isinstance(err["input"], (dict, list)):
        return f"{msg}, got {err['input']!r}"
    return msg


def _one_branch(errs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Errors of a union field (`layout.rules`: a name or a list of rules) from the branch the
    input was meant for: pydantic reports every branch and puts the branch's type in `loc`."""
    out = []
    for er in errs:
        loc = tuple(er["loc"])
        branch = next((p for p in loc if isinstance(p, str) and "[" in p), None)
        if branch is not None:
            if branch.startswith("literal[") and isinstance(er.get("input"), (list, dict)):
                continue  # a list given: the name branch's complaint is noise
            er = {**er, "loc": tuple(p for p in loc if p != branch)}
        out.append(er)
    return out or errs


def _grpo_checks(cfg: RunConfig) -> list[tuple[_Loc, str]]:
    g = cfg.grpo
    if cfg.train.method != "grpo":
        return []
    if g is None:
        return [(("train", "method"), "train.method: grpo needs a grpo: section with at least `rewards:`")]
    out: list[tuple[_Loc, str]] = []
    if g.reward_weights is not None and len(g.reward_weights) != len(g.rewards):
        out.append((("grpo", "reward_weights"), f"{len(g.reward_weights)} weights for {len(g.rewards)} rewards"))
    d = cfg.data
    if d is not None:
        if d.packing:
            out.append((("data", "packing"), "grpo trains on sampled completions, one per row: set data.packing: false"))
        if g.max_completion_length >= d.sequence_length:
            out.append((("grpo", "max_completion_length"),
                        f"{g.max_completion_length} leaves no room for a prompt in data.sequence_length "
                        f"{d.sequence_length}; lower it or raise data.sequence_length"))
    return out


def _cross_checks(cfg: RunConfig) -> list[tuple[_Loc, str]]:
    """Checks that span several keys: one place, all reported together."""
    problems: list[tuple[_Loc, str]] = []
    for section, method in METHOD_SECTIONS.items():
        if getattr(cfg, section, None) is not None and cfg.train.method != method:
            problems.append(((section,), f"the {section}: section belongs to train.method: {method}, "
                                         f"but this config trains with train.method: {cfg.train.method} "
                                         f"(set train.method: {method}, or remove the section)"))
    problems += _dpo_checks(cfg)
    problems += _grpo_checks(cfg)
    if cfg.model.vision == "lora" and not cfg.model.lora_rank:
        problems.append((("model", "vision"), "lora puts adapters on the vision tower: it needs model.lora (or use frozen / full)"))
    if cfg.model.vision == "full" and cfg.model.lora_rank:
        problems.append((("model", "vision"), "full trains every tower weight, a full fine-tune; with model.lora use "
                                              "vision: lora or frozen"))
    m = cfg.mesh
    if len(m.shape) != len(m.axes):
        problems.append(
            (("mesh", "axes"), f"{len(m.axes)} axes {m.axes} for a {len(m.shape)}-d shape {m.shape}")
        )
    if m.batch_axis not in m.axes:
        problems.append((("mesh", "batch_axis"), f"'{m.batch_axis}' is not one of the axes {m.axes}"))
    if isinstance(cfg.layout.rules, str) and m.model_axis not in m.axes:
        problems.append((("mesh", "model_axis"), f"'{m.model_axis}' is not one of the axes {m.axes}"))
    for i, rule in enumerate([] if isinstance(cfg.layout.rules, str) else cfg.layout.rules):
        for j, ax in enumerate(rule.axes):
            if ax is not None and ax not in m.axes:
                problems.append(
                    (
                        ("layout", "rules", i, "axes", j),
                        f"axis '{ax}' is not a mesh axis; mesh.axes is {m.axes} (use null to replicate)",
                    )
                )
    d = cfg.data
    if d is not None:
        if bool(d.name) == bool(d.paths):
            problems.append((("data",), "give exactly one source: `name` (tfds) or `paths` (local files)"))
        if d.eval_split and not d.name and not d.paths:
            problems.append((("data", "eval_split"), "eval_split needs a dataset `name` (tfds or hf://) or a dataset directory in `paths`; use eval_paths or eval_holdout"))
        if d.name and d.name.startswith("hf://"):
            hm = re.fullmatch(r"hf://([\w.-]+(?:/[\w.-]+)?)(?::([\w.-]+))?(?:@([\w.\[\]:%+-]+))?", d.name)
            if not hm:
                problems.append((("data", "name"), f"{d.name!r} is not hf://ORG/NAME[:SUBSET][@SPLIT]"))
            else:
                if hm.group(2) and d.subset and hm.group(2) != d.subset:
                    problems.append((("data", "subset"), f"{d.subset!r} differs from the subset in data.name ({hm.group(2)!r}); give it once"))
                if hm.group(3) and "split" in d.model_fields_set and hm.group(3) != d.split:
                    problems.append((("data", "split"), f"{d.split!r} differs from the split in data.name ({hm.group(3)!r}); give it once"))
        elif d.revision is not None:
            problems.append((("data", "revision"), "is for Hugging Face datasets (data.name: hf://ORG/NAME)"))
        if sum(x is not None for x in (d.eval_split, d.eval_paths, d.eval_holdout)) > 1:
            problems.append((("data",), "give at most one of eval_split, eval_paths, eval_holdout"))
        if d.response_field is not None:
            if not d.template:
                problems.append((("data", "response_field"), "needs a data.template (chat data marks the model's turns itself)"))
            elif d.response_field not in d.template_fields:
                problems.append(
                    (("data", "response_field"), f"'{d.response_field}' is not a field of data.template {d.template_fields}")
                )
        if d.template and d.format == "chat":
            problems.append((("data", "template"), "a template and format: chat exclude each other; drop one"))
        if d.messages_field is not None and d.template:
            problems.append((("data", "messages_field"), "is for chat records; it does not apply with data.template"))
        if d.loss_on == "assistant" and d.template and d.response_field is None:
            problems.append(
                (("data", "loss_on"), "`assistant` with a template needs data.response_field (the field that carries the loss)")
            )
        if d.format == "chat" and d.name and not d.name.startswith("hf://"):
            problems.append((("data", "format"), "chat reads local files (data.paths) or hf:// datasets; tfds records use field or template"))
        if m.batch_axis in m.axes and len(m.shape) == len(m.axes):
            bad = cfg.batch_problem(tuple(m.shape))
            if bad:
                problems.append((("data", "batch_size"), bad))
    t = cfg.train
    if t.eval_every and d is not None and not (d.eval_split or d.eval_paths or d.eval_holdout):
        problems.append((("train", "eval_every"), "set but data has no eval_split, eval_paths or eval_holdout"))
    lora = cfg.model.lora
    if lora and lora.target_layers is not None and not lora.target_layers:
        problems.append((("model", "lora", "target_layers"), "empty list; omit it for the default"))
    return problems


def _dpo_checks(cfg: RunConfig) -> list[tuple[_Loc, str]]:
    if cfg.train.method != "dpo":
        return []
    out: list[tuple[_Loc, str]] = []
    p = cfg.dpo or DpoConfig()
    if p.loss in ("simpo", "orpo") and p.reference is not None:
        out.append((("dpo", "reference"), f"dpo.loss: {p.loss} has no reference model; remove dpo.reference"))
    d = cfg.data
    if d is not None:
        if d.packing:
            out.append((("data", "packing"), "train.method: dpo does not pack: each chosen and rejected answer is a row of "
                                            "its own, so the pair's log-probs stay two whole sequences; set packing: false"))
        if d.loss_on == "all":
            out.append((("data", "loss_on"), "train.method: dpo compares the completions only; remove data.loss_on"))
        if d.name:
            out.append((("data", "name"), "train.method: dpo reads preference pairs from local files (data.paths)"))
        if d.template:
            out.append((("data", "template"), "train.method: dpo reads preference records (prompt/chosen/rejected); "
                                             "drop data.template"))
        m = cfg.mesh
        if m.batch_axis in m.axes and len(m.shape) == len(m.axes):
            rows = m.shape[m.axes.index(m.batch_axis)]
            if rows > 0 and d.batch_size % (2 * rows):
                out.append((("data", "batch_size"), f"{d.batch_size}: with train.method: dpo the batch counts sequences, two "
                            f"per pair (chosen, rejected) kept on one device, so it must be a multiple of 2 × the batch "
                            f"axis ({rows}) = {2 * rows}"))
    return out


# ------------------------------------------------------------------------------ overrides ---
def _parse_override(item: str) -> tuple[_Loc, Any]:
    if "=" not in item:
        raise ConfigError([f"override '{item}': expected key=value, e.g. optimizer.learning_rate=1e-4"])
    key, _, raw = item.partition("=")
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*", key):
        raise ConfigError([f"override '{item}': '{key}' is not a dotted key like train.max_steps"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError([f"override '{item}': value is not valid YAML: {str(e).splitlines()[0]}"]) from None
    loc: list[Any] = []
    for part in re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\[\d+\]", key):
        loc.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(loc), value


def _apply(data: dict[str, Any], loc: _Loc, value: Any, item: str) -> None:
    node: Any = data
    for i, part in enumerate(loc[:-1]):
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ConfigError([f"override '{item}': {_dotted(loc[: i + 1])} does not exist"])
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise ConfigError([f"override '{item}': {_dotted(loc[:i])} is not a mapping"])
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    last = loc[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ConfigError([f"override '{item}': {_dotted(loc)} does not exist"])
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError([f"override '{item}': {_dotted(loc[:-1])} is not a mapping"])


# --------------------------------------------------------------------------------- loader ---
def read_text(path: str) -> tuple[str, str]:
    """(text, display name); `-` reads stdin."""
    if path == "-":
        return sys.stdin.read(), "<stdin>"
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such config file", hint="see configs/ for examples")
    if p.is_dir():
        raise UsageError(f"{path}: is a directory, expected a YAML run config")
    try:
        return p.read_text(encoding="utf-8"), path
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read: {e}") from None


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load, override and validate a run config. Raises ConfigError with every problem.

    Args:
        path: str. A YAML file, or `-` for stdin.
        overrides: list[str]. `key=value` items applied after the file.

    Example:
        >>> cfg = load_config("configs/gemma3_270m_demo.yaml", ["train.max_steps=5"])
    """
    text, where = read_text(path)
    return parse_config(text, where, overrides)


def parse_config(text: str, where: str = "<config>", overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        ctx, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if ctx and cmark is not None and mark is not None and cmark.line != mark.line:
            problem += f" ({ctx} started at line {cmark.line + 1})"
        raise ConfigError([f"{where}{line}: YAML syntax error: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{where}:1: expected a mapping of sections (model, mesh, ...), got {type(data).__name__}"])
    if isinstance(data.get("layout"), (str, list)):  # `layout: default` / a bare rule list
        data["layout"] = {"rules": data["layout"]}
    lines = _line_map(text)
    override_locs: dict[_Loc, str] = {}
    for item in overrides:
        loc, value = _parse_override(item)
        _apply(data, loc, value, item)
        override_locs[loc] = item
    if not data.get("name") and where not in ("<stdin>", "<config>"):
        data["name"] = Path(where).stem
    located = _Located(where, lines, override_locs)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        errs = _one_branch(e.errors(include_url=False))
        errs.sort(key=lambda er: lines.get(tuple(er["loc"]), 10**9))
        raise ConfigError([located(tuple(er["loc"]), _pydantic_message(er)) for er in errs]) from None
    problems = _cross_checks(cfg)
    if problems:
        raise ConfigError([located(loc, msg) for loc, msg in problems])
    cfg.source_path = None if where.startswith("<") else where
    cfg._located = located
    return cfg


def dump_config(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as plain data (what `config show` prints and runs save)."""
    return cfg.model_dump(mode="json", by_alias=True)


def to_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
