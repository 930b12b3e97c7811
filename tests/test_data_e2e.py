"""The data pipeline through `gemma finetune` and `gemma generate` on the tiny models.

- chat data: only the answers carry the loss (counted in the summary and the log), and
  `generate --chat` prompts with the prefix training saw;
- a large file with one broken line in the middle: exit 2 naming file:line once the stream
  reaches it, the checkpoints before it intact, no final checkpoint or summary;
- TensorFlow blocked: the local-file data path and the TensorBoard scalars run without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_finetune import assert_one_error_line, config, gemma

from gemma_cli.engine.data.pipeline import CHECK_ALL_BYTES

ROOT = Path(__file__).resolve().parents[1]

CONVERSATION = [
    {"role": "system", "content": "answer briefly"},
    {"role": "user", "content": "what does a mesh have"},
    {"role": "assistant", "content": "a batch axis and a model axis"},
    {"role": "user", "content": "what do layout rules map"},
    {"role": "assistant", "content": "variable paths to mesh axes"},
]


def test_chat_finetune_trains_only_the_answers_and_generate_prompts_the_same_prefix(tmp_path, tiny_gemma3):
    import keras_hub

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": CONVERSATION}) + "\n" for _ in range(16)))
    cfg = config(tmp_path, tiny_gemma3, mesh=[2, 4], layout={"indivisible": "replicate"},
                 data={"paths": [str(data)], "sequence_length": 128}, train={"max_steps": 3})
    r = gemma("finetune", cfg, "--json")
    assert r.exit_code == 0, (r.stderr, r.exception)
    s = json.loads(r.stdout)
    # every row is the same conversation: count what carries the loss from the tokenizer alone
    tok = keras_hub.tokenizers.Tokenizer.from_preset(str(tiny_gemma3))
    answers = [t["content"] for t in CONVERSATION if t["role"] == "assistant"]
    per_row = sum(len(tok(a)) + 1 for a in answers)  # each answer and its <end_of_turn>
    rows = 3 * 4
    assert s["data"]["sequences"] == rows and s["data"]["records"] == rows and s["data"]["truncated"] == 0
    assert s["data"]["tokens_trained"] == rows * per_row
    assert s["data"]["tokens_trained"] < s["data"]["tokens_total"] / 2
    assert f"{rows * per_row:,} carrying the loss" in r.stderr
    assert "16 chat records" in r.stderr

    # generate --chat from the run: its prompt is the training prefix up to the first answer
    from gemma_cli.engine.core.report import NullReporter
    from gemma_cli.engine.data import Encoder, Renderer
    from gemma_cli.engine.sample.generate import Generator
    from gemma_cli.targets import resolve

    train_ids = Encoder(tok).doc(Renderer(_data_cfg(), "chat")("x:1", {"messages": CONVERSATION}), 1000).ids.tolist()
    tgt = resolve(str(tmp_path / "out"), ["generate.max_length=64"], verb="generate")
    gen = Generator(tgt.config, NullReporter(), tgt.checkpoint)
    prefix = [("system", "answer briefly"), ("user", "what does a mesh have")]
    ids = gen.chat_prompt_ids(prefix)
    assert train_ids[: len(ids)] == ids
    first_answer = tok("a batch axis and a model axis").tolist()
    assert train_ids[len(ids) : len(ids) + len(first_answer)] == first_answer
    g = gemma("generate", tmp_path / "out", "--chat", "-p", "what does a mesh have", "--json", "--max-length", "64")
    assert g.exit_code == 0, (g.stderr, g.exception)
    res = json.loads(g.stdout)["results"][0]
    assert res["prompt_tokens"] == len(gen.chat_prompt_ids("what does a mesh have"))
    assert 0 <= res["completion_tokens"] <= 64 - res["prompt_tokens"]


def _data_cfg():
    from gemma_cli.config import DataConfig

    return DataConfig(paths=["x"], format="chat")


def test_broken_line_in_a_large_file_stops_the_stream_naming_it(tmp_path, tiny_gemma3):
    """Past CHECK_ALL_BYTES (16 MiB) data is checked as it streams: 96 records of 0.2 MB (an unused field)."""
    data = tmp_path / "big.jsonl"
    pad = "x" * 200_000
    lines = [json.dumps({"text": f"the quick brown fox {i}", "pad": pad}) for i in range(96)]
    lines[48] = lines[48][:1000]  # cut short: not valid JSON
    data.write_text("\n".join(lines) + "\n")
    assert data.stat().st_size > CHECK_ALL_BYTES
    cfg = config(tmp_path, tiny_gemma3, data={"paths": [str(data)]},
                 train={"epochs": 1, "max_steps": None, "checkpoint_every": 2, "keep_checkpoints": 100})
    r = gemma("finetune", cfg, "-q")
    line = assert_one_error_line(r)
    assert f"{data}:49: not valid JSON" in line, line
    out = tmp_path / "out"
    steps = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))
    assert 24 not in steps  # the epoch (96 records / batch 4) did not end
    for k in steps:  # every checkpoint is of a step that completed, with its data position
        state = json.loads((out / "checkpoints" / f"step_{k:08d}" / "state.json").read_text())
        assert state["data_position"]["positions"] == [k] * 4  # 4 streams, one row each per step
    assert not (out / "summary.json").exists()


def test_local_data_and_tensorboard_without_tensorflow(tmp_path, tiny_gemma3):
    """A fresh process where `import tensorflow` fails: build the data of a chat config from the
    preset's tokenizer, read batches, write and read back TensorBoard scalars."""
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": CONVERSATION}) + "\n" for _ in range(8)))
    script = f"""
import sys
sys.modules["tensorflow"] = None  # import tensorflow → ImportError
from gemma_cli.engine.core import runtime
runtime.setup()
import keras_hub
from gemma_cli.config import DataConfig
from gemma_cli.engine.data import build
from gemma_cli.engine.train.tensorboard import ScalarWriter
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
tok = keras_hub.tokenizers.Tokenizer.from_preset({str(tiny_gemma3)!r})
cfg = DataConfig(paths=[{str(data)!r}], sequence_length=48, batch_size=4, packing=True)
b = build(cfg, tok, seed=0, streams=(0, 2, 2))
it = iter(b.train)
x, y, sw = next(it)
next(it)
from pathlib import Path
tb = ScalarWriter(Path({str(tmp_path / "tb")!r}))
tb.scalars(3, {{"train/loss": 1.5}})
tb.close()
acc = EventAccumulator({str(tmp_path / "tb")!r})
acc.Reload()
scalars = {{t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}}
loaded = [m for m, v in sys.modules.items() if (m == "tensorflow" or m.startswith("tensorflow.")) and v is not None]
print(x["token_ids"].shape, float(sw.sum()) > 0, scalars, loaded)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    env.update(PYTHONPATH=str(ROOT), GEMMA_CPU_DEVICES="1")
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "(4, 48) True {'train/loss': [(3, 1.5)]} []"


def test_finetune_without_tensorflow(tmp_path, tiny_gemma3):
    cfg = config(tmp_path, tiny_gemma3, lora=4, mesh=[1, 1], train={"max_steps": 2})
    script = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "from gemma_cli.cli import main\n"
        f"sys.argv = ['gemma', 'finetune', {str(cfg)!r}, '--json']\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    env.update(PYTHONPATH=str(ROOT), GEMMA_CPU_DEVICES="1")
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads(p.stdout)
    assert s["steps"] == 2 and (tmp_path / "out" / "tensorboard").is_dir()
    # generate from the fine-tuned run, plain and --chat, still without TensorFlow
    gen = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "from gemma_cli.cli import main\n"
        f"sys.argv = ['gemma', 'generate', {s['output_dir']!r}, '-p', 'the quick brown', '-p', 'a mesh has',"
        " '--max-length', '32', '--json'] + sys.argv[1:]\n"
        "try:\n    main()\nfinally:\n"
        "    print('TF', [m for m, v in sys.modules.items() if m.startswith('tensorflow') and v is not None], file=sys.stderr)\n"
    )
    for extra in ([], ["--chat"]):
        g = subprocess.run([sys.executable, "-c", gen, *extra], env=env, capture_output=True, text=True, timeout=600)
        assert g.returncode == 0, g.stderr[-3000:]
        doc = json.loads(g.stdout)
        assert doc["kind"] == "run" and len(doc["results"]) == 2
        assert all(r["completion_tokens"] >= 1 and isinstance(r["completion"], str) for r in doc["results"]), doc
        assert "TF []" in g.stderr
