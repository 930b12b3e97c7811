"""Write the demo's chat data about the `gemma` CLI itself, and its held-out questions.

- `demo_gemma_cli.jsonl`: conversations in `messages` form (one user question, one assistant
  answer), the training data of `make demo`.
- `demo_heldout.jsonl`: questions phrased differently from every training question, each with
  the command or flag (`expect`) that a correct answer contains, and a reference answer as a
  `messages` conversation (the eval loss of the demo is measured on these).

House style, so a fine-tuned model visibly adopts it: every answer starts with `gemma:`, is one
short sentence or two, and names the command, flag or key first, in backticks. Each topic's
answers all contain its key command, so that a topic learnt is a command learnt. Facts are
hand-written below; the script pairs each question with an answer and shuffles,
deterministically.

Run: python data/make_demo.py            (rewrites both .jsonl files next to this file)
     python data/make_demo.py --check    (exit 1 if a committed file differs or a rule fails)
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent
TRAIN_FILE = HERE / "demo_gemma_cli.jsonl"
HELDOUT_FILE = HERE / "demo_heldout.jsonl"

# (key, question phrasings, answers). Answers are paired with phrasings in turn. Every answer
# of a topic contains its key, the substring a held-out answer on that topic is scored by.
TOPICS: list[tuple[str, list[str], list[str]]] = [
    ("gemma finetune",
     ["How do I fine-tune a model with gemma?", "What command starts training?",
      "How do I launch a fine-tuning run?", "Start a training run from a config.",
      "Which verb trains a model?", "How do I train on my data?"],
     ["gemma: Run `gemma finetune CONFIG`, where CONFIG is a YAML run config.",
      "gemma: `gemma finetune run.yaml` trains; add key=value overrides after the config."]),
    ("--resume",
     ["How do I resume training?", "My run was interrupted.", "Continue from the last checkpoint.",
      "Training stopped halfway, what now?", "Can I restart a run where it left off?"],
     ["gemma: Run the same command with `--resume`: `gemma finetune CONFIG --resume`.",
      "gemma: Add `--resume`; it continues from the last checkpoint in `train.output_dir`."]),
    ("gemma config validate",
     ["How do I check a config without training?", "Validate my YAML.", "Is my run config correct?",
      "Check a config for typos.", "What does gemma config validate do?"],
     ["gemma: Run `gemma config validate CONFIG`; every problem is listed with its file:line.",
      "gemma: `gemma config validate run.yaml` checks it without loading a model."]),
    ("gemma config show",
     ["How do I see the final config after overrides?", "Print the merged config.",
      "What does gemma config show do?", "Show the resolved YAML.", "Which values will my run use?"],
     ["gemma: `gemma config show CONFIG key=value` prints the merged config as YAML.",
      "gemma: Run `gemma config show run.yaml`; add `--json` for scripts."]),
    ("gemma inspect",
     ["What does gemma inspect show?", "How can I see how a layer is sharded?",
      "Show me the sharding of one decoder block.", "How do I look at a layer's variables?",
      "Check the sharding before training."],
     ["gemma: `gemma inspect CONFIG --layer decoder_block_1` lists each variable's shape, spec and bytes.",
      "gemma: Run `gemma inspect CONFIG`; it shows path, shape and PartitionSpec per variable."]),
    ("--optimizer",
     ["How do I see optimizer state sharding?", "Does inspect show the optimizer variables?",
      "Inspect the AdamW moments of a layer.", "Where do the optimizer variables live?"],
     ["gemma: Add `--optimizer`: `gemma inspect CONFIG --layer decoder_block_1 --optimizer`.",
      "gemma: `gemma inspect CONFIG --optimizer` adds them; they follow their weights' sharding."]),
    ("gemma generate",
     ["How do I generate text?", "How do I sample from a model?", "Which command writes a completion?",
      "Run a prompt through the model.", "How do I try my fine-tuned model?"],
     ["gemma: Run `gemma generate CONFIG -p \"your prompt\"`.",
      "gemma: `gemma generate RUN_DIR -p PROMPT` loads the fine-tuned weights of a run."]),
    ("--chat",
     ["How do I chat with the model?", "Wrap my prompt in Gemma's turn format.",
      "Generate a chat answer.", "Ask the model a question as a user turn."],
     ["gemma: Add `--chat`: `gemma generate RUN_DIR --chat -p \"question\"`.",
      "gemma: `--chat` builds Gemma's user and model turns and stops at the end of the answer."]),
    ("gemma login kaggle",
     ["How do I log in to Kaggle?", "Where do I put my Kaggle key?", "Set up Kaggle credentials.",
      "I need Kaggle access for presets.", "How does gemma get my Kaggle API key?"],
     ["gemma: Run `gemma login kaggle`; it asks for your username and hides the key.",
      "gemma: `gemma login kaggle --from-file kaggle.json` stores it with mode 0600."]),
    ("gemma login hf",
     ["How do I log in to Hugging Face?", "Store my Hugging Face token.", "Set up an HF token.",
      "How do I use hf:// presets?", "Where does the Hugging Face token go?"],
     ["gemma: Run `gemma login hf`; the token prompt is hidden.",
      "gemma: `gemma login hf --token-stdin` reads the token from a pipe, or set HF_TOKEN."]),
    ("gemma login status",
     ["Which credentials are configured?", "How do I check my logins?", "Am I logged in?",
      "Show login status."],
     ["gemma: `gemma login status` shows each service and where its credential comes from.",
      "gemma: Run `gemma login status --check` to also verify them."]),
    ("gemma logout",
     ["How do I log out?", "Remove my stored Hugging Face token.", "Delete my Kaggle credentials.",
      "Forget my saved login."],
     ["gemma: Run `gemma logout hf` or `gemma logout kaggle`; it says which file it removed.",
      "gemma: `gemma logout kaggle` deletes the stored credential; env vars stay set."]),
    ("gemma convert gguf",
     ["How do I convert a GGUF file?", "Can gemma import GGUF?", "What is gemma convert gguf?",
      "Get the Gemma 3 270M offline.", "Load a llama.cpp checkpoint."],
     ["gemma: `gemma convert gguf FILE --out DIR` writes a keras-hub preset directory.",
      "gemma: Run `gemma convert gguf --builtin gemma3-270m --out presets/gemma3_270m`."]),
    ("gemma export",
     ["How do I export my fine-tuned model?", "What does gemma export do?",
      "Use my model outside gemma.", "Save my run for transformers."],
     ["gemma: `gemma export RUN_DIR --format hf --out DIR` merges LoRA and writes a transformers model.",
      "gemma: Run `gemma export RUN_DIR --format preset --out DIR` for a keras-hub preset."]),
    ("--json",
     ["What does --json do?", "How do I get machine-readable output?", "Can I script gemma?",
      "Is the --json output clean?", "I want to parse gemma's results in a program."],
     ["gemma: Add `--json`; it prints exactly one JSON document on stdout.",
      "gemma: Use `--json`; logs go to stderr and the document to stdout."]),
    ("--quiet",
     ["How do I make gemma quieter?", "Hide the progress output.", "Only show errors.",
      "Less output, please."],
     ["gemma: Add `--quiet` (or `-q`); only warnings and errors reach stderr.",
      "gemma: Use `--quiet`; results still go to stdout."]),
    ("--debug",
     ["How do I see a traceback?", "gemma only printed one error line.", "Debug a failure.",
      "Show me the whole Python error."],
     ["gemma: Add `--debug` or set GEMMA_DEBUG=1 to get the full traceback.",
      "gemma: Errors are one line by default; `--debug` shows the traceback."]),
    ("--version",
     ["How do I see the version?", "Which gemma version is installed?", "Print gemma's version."],
     ["gemma: Run `gemma --version`.",
      "gemma: `gemma --version` prints it and exits."]),
    ("--help",
     ["How do I get help on a verb?", "Show the options of finetune.", "List the gemma commands."],
     ["gemma: Add `--help` to any verb, e.g. `gemma finetune --help`.",
      "gemma: `gemma --help` lists the verbs; `gemma VERB --help` their options."]),
    ("GEMMA_CPU_DEVICES",
     ["How do I test sharding on a laptop?", "Simulate 8 devices on CPU.", "What is GEMMA_CPU_DEVICES?",
      "Run a [2,4] mesh without accelerators.", "I have no GPU but want a device mesh."],
     ["gemma: Set GEMMA_CPU_DEVICES=8 to simulate 8 CPU devices.",
      "gemma: `GEMMA_CPU_DEVICES=8 gemma finetune CONFIG` runs a real (2, 4) mesh on the CPU."]),
    ("mesh.shape",
     ["What is the mesh section?", "How does gemma split work over devices?", "Explain mesh.shape.",
      "Use all devices for model parallelism."],
     ["gemma: Set `mesh.shape`, e.g. `mesh.shape=[2,4]` with axes [batch, model].",
      "gemma: `mesh.shape: [1, -1]` fills the model axis from the device count."]),
    ("layout.indivisible",
     ["I got an indivisible error.", "Sharding failed on key/value kernels.",
      "What does indivisible: replicate do?"],
     ["gemma: Set `layout.indivisible=replicate` to keep that variable whole, or shrink the model axis.",
      "gemma: `layout.indivisible: replicate` leaves a dimension that does not divide unsharded."]),
    ("data.paths",
     ["How do I point gemma at my data?", "Train on my own files.", "Use a local JSONL file."],
     ["gemma: Set `data.paths: [my_data.jsonl]`; JSONL, CSV, TXT and Parquet work.",
      "gemma: List your files in `data.paths`; chat records are detected by their `messages`."]),
    ("data.name",
     ["Can I use a TFDS dataset?", "Train on imdb_reviews.", "Use tensorflow-datasets."],
     ["gemma: Set `data.name: imdb_reviews`; prepared TFDS data is read from its data_dir.",
      "gemma: `data.name` takes a TFDS name and `data.split` a split such as `train[:10%]`."]),
    ("sequence_length",
     ["How long are training examples?", "Set the context length.", "What does sequence_length do?"],
     ["gemma: Set `data.sequence_length=256`; it is the token length of each row.",
      "gemma: `data.sequence_length` caps each example in tokens."]),
    ("packing",
     ["What is packing?", "Should I enable packing?", "Put several short examples in one row."],
     ["gemma: `data.packing: true` puts several short records in each row, so less padding is trained.",
      "gemma: Turn on `data.packing` for short texts; it saves padding."]),
    ("batch_size",
     ["How do I change the batch size?", "What is data.batch_size?", "Train on more examples per step."],
     ["gemma: Set `data.batch_size`, e.g. `data.batch_size=8`; it divides by the batch axis.",
      "gemma: `data.batch_size` is the global batch, split over the mesh's batch axis."]),
    ("learning_rate",
     ["How do I change the learning rate?", "Lower the learning rate.", "Set lr to 1e-4.",
      "Training is unstable, what should I tune first?"],
     ["gemma: Pass `optimizer.learning_rate=1e-4` after the config.",
      "gemma: Edit `optimizer.learning_rate` in the YAML or override it on the command line."]),
    ("warmup_steps",
     ["What is warmup_steps?", "Ramp the learning rate up slowly.", "Add a warmup."],
     ["gemma: Set `optimizer.warmup_steps=100`; the rate climbs to its peak over those steps.",
      "gemma: `optimizer.warmup_steps` is how many steps the warmup takes."]),
    ("clipnorm",
     ["How do I clip gradients?", "My loss spikes.", "What is clipnorm?"],
     ["gemma: Set `optimizer.clipnorm=1.0` to clip the gradient norm.",
      "gemma: `optimizer.clipnorm` caps the gradient norm; try it with a lower learning rate."]),
    ("max_steps",
     ["How do I do a short test run?", "Train for only 10 steps.", "Smoke-test my config.",
      "Limit the number of training steps."],
     ["gemma: Run `gemma finetune CONFIG train.max_steps=10`.",
      "gemma: Override `train.max_steps=10` for a quick check of the whole pipeline."]),
    ("output_dir",
     ["Where are checkpoints saved?", "Where does my run go?", "What is train.output_dir?"],
     ["gemma: Everything goes to `train.output_dir`, e.g. `runs/my_run`.",
      "gemma: Checkpoints land in `train.output_dir`; `gemma generate` can load that directory."]),
    ("checkpoint_every",
     ["How often are checkpoints written?", "Checkpoint every 100 steps.", "Save more often."],
     ["gemma: Set `train.checkpoint_every=100`.",
      "gemma: `train.checkpoint_every` is the number of steps between checkpoints."]),
    ("eval_every",
     ["How do I evaluate during training?", "Track a validation loss.", "Evaluate every 50 steps."],
     ["gemma: Set `train.eval_every=50` with `data.eval_paths` or `data.eval_holdout`.",
      "gemma: `train.eval_every` runs the eval set every that many steps."]),
    ("lora.rank",
     ["How do I enable LoRA?", "What does lora.rank control?", "Train fewer parameters.",
      "Use low-rank adapters."],
     ["gemma: Set `model.lora.rank`, e.g. `model.lora.rank=8`; only the adapters train.",
      "gemma: `model.lora.rank` is the adapter rank; higher ranks train more parameters."]),
    ("model.preset",
     ["How do I choose the base model?", "Which preset does my run use?", "Train from presets/gemma3_270m."],
     ["gemma: Set `model.preset` to a keras-hub name, a kaggle:// or hf:// URI, or a directory.",
      "gemma: `model.preset: presets/gemma3_270m` loads a local preset; nothing is downloaded."]),
    ("precision",
     ["How do I set the precision?", "Train in bfloat16.", "What does model.precision do?"],
     ["gemma: Set `model.precision=bfloat16` on the command line or in the YAML.",
      "gemma: `model.precision` picks the dtype policy, such as float32 or bfloat16."]),
    ("generate.sampler",
     ["Which samplers are there?", "How do I pick a sampler?", "Get deterministic generations."],
     ["gemma: `generate.sampler` is greedy, top_k or top_p.",
      "gemma: Set `generate.sampler=greedy` for repeatable output, top_p for varied text."]),
    ("max_length",
     ["How long are completions?", "Set the maximum length.", "Get longer answers."],
     ["gemma: Override `generate.max_length=128`; it counts prompt plus completion.",
      "gemma: `generate.max_length` caps prompt and completion in tokens; `--max-length` too."]),
    ("make demo",
     ["How do I run the offline demo?", "Try gemma without a download.", "What does make demo do?"],
     ["gemma: Run `make demo`; it converts Gemma 3 270M, fine-tunes it and scores its answers.",
      "gemma: `make demo` trains configs/gemma3_270m_demo.yaml on 8 simulated CPU devices."]),
]

# Questions never trained on, each phrased unlike every training question, and what a correct
# answer contains (any one of `expect`, case-insensitive). The reference answer is for the
# eval loss only; scoring looks for `expect`.
HELDOUT: list[tuple[str, list[str], str]] = [
    ("What's the command that kicks off fine-tuning from a YAML file?", ["gemma finetune"],
     "gemma: Run `gemma finetune CONFIG`."),
    ("My job crashed at step 300. How can I carry on from there?", ["--resume"],
     "gemma: Run it again with `--resume`."),
    ("Before a long job, how can I make sure my YAML has no mistakes?", ["gemma config validate"],
     "gemma: Run `gemma config validate CONFIG`."),
    ("Which command prints the partition spec of each weight in a layer?", ["gemma inspect"],
     "gemma: `gemma inspect CONFIG --layer decoder_block_1` shows them."),
    ("I have a Kaggle API key. How do I give it to gemma?", ["gemma login kaggle"],
     "gemma: Run `gemma login kaggle`."),
    ("How can gemma use my Hugging Face access token?", ["gemma login hf"],
     "gemma: Run `gemma login hf`."),
    ("I need results a script can read. Which flag should I add?", ["--json"],
     "gemma: Add `--json`."),
    ("An error printed a single line; how do I get the full stack trace?", ["--debug", "GEMMA_DEBUG"],
     "gemma: Add `--debug`."),
    ("How can I fake eight devices on a machine with only a CPU?", ["GEMMA_CPU_DEVICES"],
     "gemma: Set GEMMA_CPU_DEVICES=8."),
    ("How do I stop training after a fixed number of steps?", ["max_steps"],
     "gemma: Override `train.max_steps=100`."),
    ("Where do I set how big the adapters are?", ["lora.rank"],
     "gemma: Set `model.lora.rank`."),
    ("How do I turn a .gguf checkpoint into something gemma can load?", ["gemma convert gguf"],
     "gemma: Run `gemma convert gguf FILE --out DIR`."),
    ("How can I print my config with the command-line changes applied?", ["gemma config show"],
     "gemma: Run `gemma config show CONFIG key=value`."),
    ("I want gemma to forget the token I stored earlier.", ["gemma logout"],
     "gemma: Run `gemma logout hf`."),
    ("How do I make a run print nothing but warnings and errors?", ["--quiet", "`-q`"],
     "gemma: Add `--quiet`."),
    ("How do I get an answer out of the model I just trained?", ["gemma generate"],
     "gemma: Run `gemma generate RUN_DIR -p PROMPT`."),
    ("How can I make the optimizer take smaller steps?", ["learning_rate"],
     "gemma: Lower `optimizer.learning_rate`."),
    ("How can I tell which release of gemma I have?", ["--version"],
     "gemma: Run `gemma --version`."),
    ("How do I put more examples into every step?", ["batch_size"],
     "gemma: Raise `data.batch_size`."),
    ("How do I write a checkpoint more often than now?", ["checkpoint_every"],
     "gemma: Set `train.checkpoint_every=50`."),
]


def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def records() -> list[dict]:
    """The training conversations, shuffled (seed 5)."""
    out = []
    for _key, qs, answers in TOPICS:
        for i, q in enumerate(qs):
            out.append({"messages": _chat(q, answers[i % len(answers)])})
    random.Random(5).shuffle(out)
    return out


def heldout() -> list[dict]:
    """The held-out questions: `prompt` (for `gemma generate --prompt-file`), `expect`, and the
    question with its reference answer as `messages` (for the eval loss)."""
    return [{"prompt": q, "expect": expect, "messages": _chat(q, ref)} for q, expect, ref in HELDOUT]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9_.\-]+", text.lower()))


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the two questions' word sets."""
    wa, wb = _words(a), _words(b)
    return len(wa & wb) / max(len(wa | wb), 1)


MAX_SIMILARITY = 0.5  # a held-out question shares at most half its words with any training one


def problems(train: list[dict], held: list[dict]) -> list[str]:
    """Style and held-out rules; an empty list when all hold."""
    errs = []
    seen: set[str] = set()
    questions = []
    for r in train:
        q, a = r["messages"][0]["content"], r["messages"][1]["content"]
        questions.append(q)
        if q in seen:
            errs.append(f"duplicate question: {q}")
        seen.add(q)
        if not a.startswith("gemma: "):
            errs.append(f"answer without the gemma: prefix: {a}")
        if len(a.split()) > 25:
            errs.append(f"answer over 25 words: {a}")
    for key, qs, answers in TOPICS:
        for a in answers:
            if key.lower() not in a.lower():
                errs.append(f"topic {key!r}: answer without its key: {a}")
    answers_all = [r["messages"][1]["content"].lower() for r in train]
    for h in held:
        q = h["prompt"]
        if h["messages"][0]["content"] != q:
            errs.append(f"held-out {q!r}: messages do not ask the prompt")
        close = max(questions, key=lambda t: similarity(q, t))
        if similarity(q, close) > MAX_SIMILARITY:
            errs.append(f"held-out {q!r} is too close to the training question {close!r} ({similarity(q, close):.2f})")
        for e in h["expect"]:
            if e.lower() in q.lower():
                errs.append(f"held-out {q!r} contains its expected answer {e!r}")
        if not any(e.lower() in a for e in h["expect"] for a in answers_all):
            errs.append(f"held-out {q!r}: no training answer contains any of {h['expect']}")
        if not any(e.lower() in h["messages"][1]["content"].lower() for e in h["expect"]):
            errs.append(f"held-out {q!r}: the reference answer misses {h['expect']}")
    if len(held) < 10:
        errs.append(f"{len(held)} held-out questions, want at least 10")
    return errs


def _jsonl(recs: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)


def main() -> int:
    train, held = records(), heldout()
    errs = problems(train, held)
    if errs:
        print("\n".join(errs), file=sys.stderr)
        return 1
    files = {TRAIN_FILE: _jsonl(train), HELDOUT_FILE: _jsonl(held)}
    if "--check" in sys.argv:
        stale = [p.name for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        for p in files:
            print(f"{p.name}: {'differs; run python data/make_demo.py' if p.name in stale else 'up to date'}")
        return 1 if stale else 0
    for p, text in files.items():
        p.write_text(text, encoding="utf-8")
    print(f"wrote {len(train)} conversations to {TRAIN_FILE.name}, {len(held)} held-out questions to {HELDOUT_FILE.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
