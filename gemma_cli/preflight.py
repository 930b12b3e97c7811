"""The checks that need no model: run before any heavy import and before weights load.

A mistake found after the model has loaded and the train step has compiled costs tens of
seconds on a laptop and minutes of a pod reservation. Everything that can be known from the
files, the config and a network probe is checked here first, and all problems are reported at
once, one line each: `file:line: key: what to do`.

    finetune         finetune(cfg, resume=..., dry_run=...)
    inspect          inspect(tgt, live=...)
    generate         target(tgt)
    export           target(tgt) + output(out, "--out", force=...)
    config validate  validate(cfg, network=not offline)

What is checked:

- the preset: a local directory exists and is complete (`config.json` valid JSON, the weights
  file(s), the tokenizer files), a name is known (the architecture table in `engine/families/`
  or keras-hub's preset registry, read from its files without importing it), a download has
  its credentials and its host answers (skipped by `config validate --offline`);
- the data: every path or glob matches readable files of a known format, and every record has
  the fields the config reads (the data pipeline's own streaming validator, with file:line);
- the output: `train.output_dir` / `--out` is a directory (or can be made one) that can be
  written; `--resume` has a checkpoint and its files are readable (else the previous
  checkpoint is offered); without `--resume` no earlier run is overwritten.

This module imports no keras, keras_hub, jax, tensorflow or tensorflow_datasets.

Example:
    >>> from gemma_cli import preflight
    >>> preflight.require(preflight.finetune(cfg))  # raises PreflightError with every problem
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from gemma_cli import net
from gemma_cli.errors import PreflightError, RuntimeFailure, UsageError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class Problem(str):
    """One problem line. `exit_code` 2: bad input; 1: the environment (a host not reached)."""

    exit_code: int

    def __new__(cls, text: str, exit_code: int = 2) -> Problem:
        obj = super().__new__(cls, text)
        obj.exit_code = exit_code
        return obj


def require(problems: list[str]) -> None:
    """Raise `PreflightError` (exit 2, or 1 when only hosts were unreachable) if any."""
    if problems:
        raise PreflightError(problems)


# ------------------------------------------------------------------------------ verbs ---
def finetune(cfg: Any, *, resume: bool | str = False, dry_run: bool = False, network: bool = True) -> list[Problem]:
    """Everything `gemma finetune` needs before it loads the model (`resume`: False, True or
    "auto": the checkpoint if there is one)."""
    out = quantized_training(cfg)
    out += preset(cfg, weights=True, network=network)
    out += run_dir(cfg, resume=resume, dry_run=dry_run)
    out += trackers(cfg, network=network and not dry_run)
    found = data(cfg, required=True, network=network)
    return out + (found or records(cfg))


def validate(cfg: Any, *, network: bool = True) -> list[Problem]:
    """What `gemma config validate` adds to the schema: finetune's checks, minus those that
    depend on --resume (an existing run is neither wrong nor right for a config)."""
    out = preset(cfg, weights=True, network=network)
    out += output(cfg.output_dir, "train.output_dir", cfg=cfg)
    out += trackers(cfg, network=network)
    if cfg.data is None:
        return out
    found = data(cfg, required=False, network=network)
    return out + (found or records(cfg, full=True))


def inspect(tgt: Any, *, live: bool = False) -> list[Problem]:
    """Plan mode needs the architecture only (no weights, no credentials for a known name);
    `--live` loads the model, and a run's checkpoint with its optimizer state."""
    if not live:  # a name we ship needs nothing; a download's config.json needs its host
        return preset(tgt.config, weights=False, network=True)
    out = preset(tgt.config, weights=True, network=True)
    if tgt.checkpoint is not None:
        out += checkpoint(Path(tgt.checkpoint), optimizer=True)
    return out


def target(tgt: Any, *, network: bool = True) -> list[Problem]:
    """A resolved TARGET (`gemma_cli.targets.Target`) of `generate` / `export`: its preset and,
    for a fine-tune run, its checkpoint."""
    out = preset(tgt.config, weights=True, network=network)
    if tgt.checkpoint is not None:
        out += checkpoint(Path(tgt.checkpoint), optimizer=False)
    return out


# ----------------------------------------------------------------------------- preset ---
def preset(cfg: Any, *, weights: bool, network: bool) -> list[Problem]:
    """The model.preset of `cfg`.

    Args:
        weights: bool. The verb loads weights (and the tokenizer): a local directory must be
            complete, a download needs credentials and a host that answers.
        network: bool. Check what a download needs: credentials, and the host answering
            (within a few seconds). `config validate --offline` skips this.
    """
    from gemma_cli.engine import families
    from gemma_cli.engine.model import load as model

    p = cfg.model.preset
    say = functools.partial(_say, cfg, "model.preset")
    if model.is_local(p):
        return local_preset(Path(p).expanduser(), say, weights=weights)
    if p.startswith("hf://"):
        return remote(p, "hf", say, network=network)
    if p.startswith("kaggle://"):
        known = families.canonical(p) is not None
        return remote(p, "kaggle", say, network=network) if weights or not known else []
    if p.startswith("gs://"):
        try:
            if network:
                net.require_preset(p, p)
        except RuntimeFailure as e:
            return [Problem(say(e.line()), exit_code=1)]
        return []
    if "://" in p:
        return []  # another scheme keras-hub may know: left to it
    registry = families.keras_hub_presets()
    unknown = families.unknown_preset(p)
    if unknown:
        return [say(unknown)]
    if weights or families.get_preset(p) is None:  # the weights, or an architecture we do not ship
        handle = registry.get(p, "kaggle://")
        return remote(handle if handle.startswith("hf://") else p, "hf" if handle.startswith("hf://") else "kaggle",
                      say, network=network)
    return []


def local_preset(d: Path, say: Any, *, weights: bool) -> list[Problem]:
    """A keras-hub preset directory (or a transformers checkpoint directory) is complete."""
    if not d.exists():
        hint = "run `make preset` to create it" if "gemma3_270m" in str(d) else (
            "give a keras-hub preset directory, a preset name, kaggle:// or hf://")
        return [say(f"{d}: no such directory ({hint})")]
    if not d.is_dir():
        return [say(f"{d}: not a directory (a keras-hub preset is a directory holding config.json)")]
    cfg_path = d / "config.json"
    if not cfg_path.exists():
        return [say(f"{d}: no config.json there: not a keras-hub preset directory "
                    "(create one with `gemma convert` or `gemma export --format preset`)")]
    conf, bad = _json_file(cfg_path)
    if bad:
        return [say(bad)]
    if not isinstance(conf, dict) or not ("registered_name" in conf or "model_type" in conf):
        return [say(f"{cfg_path}: neither a keras-hub config (registered_name) nor a transformers one (model_type)")]
    if not weights:
        return []
    out: list[Problem] = []
    if "registered_name" in conf:
        if (d / "model.weights.h5").exists():
            bad = _hdf5(d / "model.weights.h5")
            if bad:
                out.append(say(bad))
        elif (d / "model.weights.json").exists():
            index, bad = _json_file(d / "model.weights.json")
            if bad:
                out.append(say(bad))
            else:
                shards = sorted({s for v in (index or {}).get("weight_map", {}).values()
                                 for s in (v if isinstance(v, list) else [v])})
                missing = [s for s in shards if not (d / s).is_file()]
                if missing:
                    out.append(say(f"{d / missing[0]}: missing (a shard listed in model.weights.json"
                                   f"{f', and {len(missing) - 1} more' if len(missing) > 1 else ''})"))
        else:
            out.append(say(f"{d / 'model.weights.h5'}: missing: the preset has no weights "
                           "(model.weights.h5, or model.weights.json and its shards)"))
        tok = d / "tokenizer.json"
        if not tok.exists():
            out.append(say(f"{tok}: missing: the preset has no tokenizer"))
        else:
            tconf, bad = _json_file(tok)
            if bad:
                out.append(say(bad))
            elif _needs_vocabulary(tconf) and not any((d / "assets" / "tokenizer").glob("*")):
                out.append(say(f"{d / 'assets' / 'tokenizer'}: missing or empty: the tokenizer's vocabulary is not there"))
    else:  # a transformers checkpoint, converted by keras-hub on load
        if (d / "model.safetensors.index.json").exists():
            index, bad = _json_file(d / "model.safetensors.index.json")
            if bad:
                out.append(say(bad))
            else:
                shards = sorted(set((index or {}).get("weight_map", {}).values()))
                missing = [s for s in shards if not (d / s).is_file()]
                if missing:
                    out.append(say(f"{d / missing[0]}: missing (a shard listed in model.safetensors.index.json)"))
        elif not (d / "model.safetensors").exists():
            out.append(say(f"{d / 'model.safetensors'}: missing: the checkpoint has no weights"))
        from gemma_cli.engine.model import hf as hf_checkpoint  # light: json and the family tables

        try:
            hf_cfg = hf_checkpoint.read_config(d)
            fam = hf_checkpoint.family_of(d, hf_cfg) if hf_cfg is not None else None
        except UsageError as e:
            return out + [Problem(e.line())]
        names = fam.hf_tokenizer_files if fam is not None else ("tokenizer.model", "tokenizer.json")
        if not any((d / n).exists() for n in names):
            out.append(say(f"{d}: no tokenizer ({' or '.join(names)}) in this "
                           f"{fam.name + ' ' if fam else ''}checkpoint; save it there (tokenizer.save_pretrained)"))
    return out


def _needs_vocabulary(tconf: Any) -> bool:
    """Whether a serialized keras-hub tokenizer loads its vocabulary from preset assets."""
    inner = tconf.get("config", {}) if isinstance(tconf, dict) else {}
    return not any(inner.get(k) for k in ("proto", "vocabulary"))


def remote(preset: str, service: str, say: Any, *, network: bool) -> list[Problem]:
    """A preset that downloads from Kaggle or the Hugging Face Hub: credentials, then the host
    (the bounded probe of `gemma_cli.engine.core.remote`, within `net.DEADLINE_S` seconds)."""
    from gemma_cli import auth

    if not network or cached(preset):
        return []  # a download cached here loads without asking the service
    try:
        auth.require_credentials(preset)
    except UsageError as e:
        return [say(e.line())]
    cred = auth.credential(service)
    if service == "hf":
        target = preset
        headers = {"Authorization": f"Bearer {cred.token}"} if cred.token else None
    else:
        target, headers = _kaggle_host(), None
    try:
        reply = net.require(service, preset, target=target, headers=headers)
    except RuntimeFailure as e:
        return [Problem(say(e.line()), exit_code=1)]
    if service == "hf" and reply.status in (401, 403):
        return [say(f"{preset}: the Hub refused access (HTTP {reply.status}); run `gemma login hf` with a "
                    "token whose account accepted the model's license")]
    if service == "hf" and reply.status == 404:
        return [say(f"{preset}: the Hub has no such repository, or it has no config.json (HTTP 404)")]
    return []


def cached(handle: str) -> bool:
    """Whether the download cache already holds `handle` (`net.cached`); a bare keras-hub name
    is looked up by its handle."""
    if not handle.startswith(("kaggle://", "hf://")):
        from gemma_cli.engine import families

        handle = families.keras_hub_presets().get(handle, "")
    return net.cached(handle)


def _kaggle_host() -> str:
    from gemma_cli import auth

    try:
        return net.host_of(auth.kaggle_hello_url()) + "/"
    except UsageError:
        return "https://www.kaggle.com/"


# ------------------------------------------------------------------------------- data ---
def data(cfg: Any, *, required: bool, network: bool = True) -> list[Problem]:
    """Every local data path matches readable files of a known format; a tfds data_dir is, or can be made, a directory."""
    d = cfg.data
    if d is None:
        return [_say(cfg, "data", "the config has no data section; finetune needs one")] if required else []
    out: list[Problem] = []
    from gemma_cli.engine.data import sources  # light: no keras, jax or TensorFlow

    for key in ("paths", "eval_paths"):
        for i, pattern in enumerate(getattr(d, key) or []):
            say = functools.partial(_say, cfg, f"data.{key}[{i}]")
            hits, files = sources.expand(pattern)
            if not hits:
                out.append(say(f"'{pattern}' matches no file (paths are relative to the current directory, "
                               f"{Path.cwd()})"))
                continue
            if not files:
                from gemma_cli.engine.data.hf_datasets import (
                    is_dataset_dir,  # light: no datasets import
                )

                if all(is_dataset_dir(Path(h)) for h in hits):
                    continue  # save_to_disk output or a folder of data files: the reader checks it
                out.append(say(f"'{pattern}' matches only directories with no data files; give files, a glob such as "
                               f"{pattern}/*.jsonl, or a dataset directory (save_to_disk output)"))
                continue
            for f in files:
                kind = sources.file_kind(f, d.format)
                if kind is None:
                    out.append(say(f"{f}: cannot tell the format from the extension; set data.format "
                                   f"({sources.kinds_hint()})"))
                    continue
                try:
                    with open(f, "rb") as fh:
                        fh.read(1)
                except OSError as e:
                    out.append(say(f"{f}: cannot read: {e.strerror or e}"))
    if d.source == "hf":
        out += hf_dataset(cfg, network=network)
    if d.data_dir:
        where = Path(d.data_dir).expanduser()
        if where.exists() and not where.is_dir():
            out.append(_say(cfg, "data.data_dir", f"{d.data_dir} is a file; tfds reads and prepares datasets in a directory"))
        elif not where.exists():  # tfds makes it when it downloads and prepares the dataset there
            out += output(where, "data.data_dir", cfg=cfg)
    return out


def grpo_inputs(cfg: Any) -> list[Problem]:
    """GRPO's prompt records (file:line) and reward specs (each resolves: file, function,
    signature), before any model loads."""
    from gemma_cli.engine.data import prompts  # light: no keras, jax or TensorFlow
    from gemma_cli.engine.rewards import resolve

    out: list[Problem] = []
    for i, spec in enumerate(cfg.grpo.rewards if cfg.grpo else []):
        try:
            resolve(spec)
        except UsageError as e:
            out.append(_say(cfg, f"grpo.rewards[{i}]", e.line()))
    for key in ("paths", "eval_paths"):
        pats = getattr(cfg.data, key)
        if pats:
            try:
                prompts.read(pats, f"data.{key}")
            except UsageError as e:
                out.append(Problem(e.line()))
    return out


def trackers(cfg: Any, *, network: bool) -> list[Problem]:
    """`train.report_to`: each chosen tracker's package is installed (exit 2 naming the extra),
    and a tracking server it would talk to answers one bounded probe (exit 1), so that a run
    fails now and not at its first log line."""
    from gemma_cli.engine.train import trackers as T  # light: importlib only

    report_to = cfg.train.report_to
    out = [_say(cfg, "train.report_to", f"{name} is not installed; pip install 'gemma-cli[{extra}]' "
                f"(or remove {name} from train.report_to)") for name, extra in T.missing(report_to)]
    if out or not network:
        return out
    chosen = T.chosen(report_to)
    urls = []
    if "wandb" in chosen and os.environ.get("WANDB_MODE", "online") not in ("offline", "disabled", "dryrun"):
        urls.append(("wandb", (os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").rstrip("/"),
                     "set WANDB_MODE=offline to record locally and `wandb sync` later"))
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if "mlflow" in chosen and uri.startswith(("http://", "https://")):
        urls.append(("mlflow", uri.rstrip("/"), "check MLFLOW_TRACKING_URI, or unset it to record to ./mlruns"))
    for name, url, fix in urls:
        reply = net.head(url)
        if not reply.reached:
            out.append(Problem(_say(cfg, "train.report_to", f"{name}: the tracking server at {reply.host} cannot be "
                                    f"reached ({reply.error}); {fix}"), exit_code=1))
    return out


def hf_dataset(cfg: Any, *, network: bool) -> list[Problem]:
    """A `hf://` dataset: in the local cache, or the Hub answers (one bounded probe) — never
    half a minute of `datasets`' retries before one line."""
    from gemma_cli.engine.data import hf_datasets

    d = cfg.data
    repo, _, _ = hf_datasets.parse_name(d.name)
    if hf_datasets.cached_snapshot(repo, d.revision) is not None:
        return []
    say = functools.partial(_say, cfg, "data.name")
    try:
        import datasets  # noqa: F401
    except ImportError:
        return [say(f"{d.name}: reading Hugging Face datasets needs the `datasets` package; "
                    "pip install 'gemma-cli[datasets]'")]
    if not network:
        return []
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or \
        os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline:
        return [Problem(say(f"{d.name} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                            "download it once with network, or point data.paths at a copy"), exit_code=1)]
    from gemma_cli import auth

    cred = auth.credential("hf")
    reply = net.head(f"{endpoint}/api/datasets/{repo}",
                     headers={"Authorization": f"Bearer {cred.token}"} if cred.token else None)
    if not reply.reached:
        return [Problem(say(f"{d.name} is not in the local Hugging Face cache and the Hub at {reply.host} cannot be "
                            f"reached ({reply.error}); check the network, a proxy or HF_ENDPOINT, or point data.paths "
                            "at a local copy (save_to_disk output or a folder of Parquet/JSONL files)"), exit_code=1)]
    if reply.status in (401, 403):
        return [say(f"{d.name}: the Hub refused access (HTTP {reply.status}); run `gemma login hf` with a token "
                    "whose account accepted the dataset's terms")]
    if reply.status == 404:
        return [say(f"{d.name}: the Hub has no such dataset (HTTP 404)")]
    return []


def records(cfg: Any, *, full: bool = False) -> list[Problem]:
    """Every record has the fields the config reads, checked by the data pipeline itself.

    One reader of records in the project: this asks the data pipeline's validator
    (`gemma_cli.engine.data.check_records`), which names `file:line` of the first bad record.
    `gemma finetune` checks data up to 16 MiB per split whole and the start of larger data (the
    rest is checked as it streams); `gemma config validate` (`full`) reads every record.
    """
    if cfg.data is None or cfg.data.source == "tfds":
        return []  # tfds records are checked as the pipeline reads them (no TensorFlow here)
    if cfg.train.method == "grpo":
        return grpo_inputs(cfg)
    from gemma_cli.engine.data import check_records  # light: no keras, jax or TensorFlow
    from gemma_cli.engine.data.images import for_preset

    try:
        vision, name = for_preset(cfg.model.preset)  # images: checked against the model's image input
        if full:
            check_records(cfg.data, None, method=cfg.train.method, vision=vision, model_name=name)
        else:
            check_records(cfg.data, method=cfg.train.method, vision=vision, model_name=name)
    except UsageError as e:
        return [Problem(e.line())]
    return []


# ----------------------------------------------------------------------------- output ---
def output(path: str | Path, key: str, *, cfg: Any = None, force: bool = True, file: bool = False) -> list[Problem]:
    """`path` is, or can be made, a directory (or a `file`) this process can write.

    Args:
        path: str | Path. The directory (train.output_dir, --out), or the file.
        key: str. The config key or option that named it.
        cfg: RunConfig | None. For the file:line of `key`.
        force: bool. Whether an existing non-empty directory (an existing file) may be replaced
            (`--out` without `--force` may not). Defaults to True.
        file: bool. `path` names a file (`export --format gguf`). Defaults to False.
    """
    p = Path(path).expanduser()
    say = functools.partial(_say, cfg, key)
    if p.exists() and file:
        if p.is_dir():
            return [say(f"{p} is a directory; give the file to write")]
        if not force:
            return [say(f"{p}: exists (pass --force to replace it, or choose another)")]
        where = p.parent
    elif p.exists():
        if not p.is_dir():
            return [say(f"{p} is an existing file; choose a directory")]
        if not force and any(p.iterdir()):
            return [say(f"{p}: exists and is not empty (pass --force to replace it, or choose another)")]
        where = p
    else:
        where = p.parent
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir():
            return [say(f"{p}: {where} is a file, so no directory can be made under it")]
    bad = _writable(where)
    if bad:
        return [say(f"{p}: cannot write in {where} ({bad}); choose a writable location")]
    return []


def _writable(d: Path) -> str | None:
    """Why nothing can be written in directory `d`, or None. Tries it: permission bits say
    nothing about a read-only mount, or to root."""
    try:
        fd, name = tempfile.mkstemp(prefix=".gemma-write-check-", dir=d)
    except OSError as e:
        return (e.strerror or str(e)).lower()
    os.close(fd)
    try:
        os.unlink(name)
    except OSError:
        pass
    return None


def quantized_training(cfg: Any) -> list[Problem]:
    """A quantized base trains only through LoRA adapters (QLoRA): its kernels are frozen ints."""
    bad = cfg.model.training_problem()
    return [_say(cfg, "model.quantize", bad)] if bad else []


def run_dir(cfg: Any, *, resume: bool | str, dry_run: bool) -> list[Problem]:
    """train.output_dir for a fine-tune: writable; with --resume, a readable checkpoint;
    with `--resume auto`, a readable checkpoint if there is one; without either, no earlier
    run's checkpoints to overwrite."""
    from gemma_cli.engine.model import checkpoint as ckptlib

    out_dir = cfg.output_dir
    problems = output(out_dir, "train.output_dir", cfg=cfg)
    if problems:
        return problems
    latest = ckptlib.latest(out_dir)
    if resume == "auto" and latest is None:
        return []
    if resume:
        if latest is None:
            return [Problem(f"--resume: no checkpoint in {out_dir}/checkpoints (run without --resume to start)")]
        bad = checkpoint(latest, optimizer=True)
        if bad:
            return bad
        trained = ckptlib.read_state(latest).get("quantize", "none")
        if trained != cfg.model.quantize:
            return [_say(cfg, "model.quantize", f"--resume: {latest.name} was trained with model.quantize: {trained}, "
                         f"the config says {cfg.model.quantize}; set model.quantize={trained} to resume it "
                         "(or start a new run with train.output_dir=<new dir>)")]
        return []
    if latest is not None and not dry_run:
        return [_say(cfg, "train.output_dir",
                     f"{out_dir} already holds checkpoints of an earlier run (add --resume to continue it, "
                     "or set train.output_dir=<new dir>; nothing was overwritten)")]
    return []


def checkpoint(ckpt: Path, *, optimizer: bool) -> list[Problem]:
    """The files of a checkpoint can be read: state.json, the adapter or the weights, and the
    optimizer state when resuming. A bad one names the file and offers the previous
    checkpoint."""
    from gemma_cli.engine.model import checkpoint as ckptlib

    bad = _checkpoint_file_problem(ckpt, optimizer, ckptlib)
    if bad is None:
        return []
    return [Problem(f"{bad}; {ckptlib.fallback_hint(ckpt)}")]


def _checkpoint_file_problem(ckpt: Path, optimizer: bool, ckptlib: Any) -> str | None:
    state, bad = _json_file(ckpt / "state.json")
    if bad:
        return bad
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return f"{ckpt / 'state.json'}: no integer 'step' in it"
    if (ckpt / ckptlib.LORA_FILE).exists():
        bad = _hdf5(ckpt / ckptlib.LORA_FILE)
    elif (ckpt / ckptlib.FULL_DIR).is_dir():
        weights = sorted((ckpt / ckptlib.FULL_DIR).glob("model*.weights.h5"))
        bad = _hdf5(weights[0]) if weights else f"{ckpt / ckptlib.FULL_DIR / 'model.weights.h5'}: missing"
    else:
        bad = f"{ckpt}: neither {ckptlib.LORA_FILE} nor {ckptlib.FULL_DIR}/ in it"
    if bad:
        return bad
    npz = ckpt / "optimizer.npz"
    if optimizer and npz.exists():
        try:
            with zipfile.ZipFile(npz) as z:
                if "__paths__.npy" not in z.namelist():
                    return f"{npz}: no __paths__ entry: not an optimizer state written by gemma"
        except (OSError, zipfile.BadZipFile) as e:
            return f"{npz}: not a readable .npz file ({e})"
    return None


# ---------------------------------------------------------------------------- helpers ---
def _say(cfg: Any, key: str, message: str) -> Problem:
    return Problem(cfg.problem(key, message) if cfg is not None else f"{key}: {message}")


def _json_file(path: Path) -> tuple[Any, str | None]:
    """(parsed JSON, None) or (None, `path:line: what is wrong`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"{path}: missing"
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{path}: cannot read: {getattr(e, 'strerror', None) or e}"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"{path}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno}); fix or re-create the file"


def _hdf5(path: Path) -> str | None:
    """Why `path` is not a readable HDF5 file (missing, not HDF5, cut short), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        return f"{path}: missing"
    except OSError as e:
        return f"{path}: cannot read: {e.strerror or e}"
    if head != HDF5_SIGNATURE:
        return f"{path}: not an HDF5 file ({'empty' if not head else 'wrong signature'})"
    try:
        import h5py
    except ImportError:
        return None
    try:
        with h5py.File(path, "r"):
            pass
    except OSError as e:
        reason = str(e).split("(", 1)[-1].rstrip(")") if "(" in str(e) else str(e)
        return f"{path}: not a readable HDF5 file ({reason}: cut short by a crash or an incomplete copy?)"
    return None
