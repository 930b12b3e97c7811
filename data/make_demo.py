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
    # ---- the verbs -------------------------------------------------------------------------
    ("gemma finetune",
     ["How do I fine-tune a model with gemma?", "What command starts training?",
      "How do I launch a fine-tuning run?", "Start a training run from a config.",
      "Which verb trains a model?", "How do I train on my data?", "Begin a LoRA run.",
      "Teach the model my examples."],
     ["gemma: To train, run `gemma finetune CONFIG` with your YAML run config.",
      "gemma: To train, use `gemma finetune run.yaml`; overrides go after the config."]),
    ("--resume",
     ["How do I resume training?", "My run was interrupted.", "Continue from the last checkpoint.",
      "Training stopped halfway, what now?", "Can I restart a run where it left off?",
      "The machine rebooted during training.", "Pick up an unfinished run.",
      "I pressed Ctrl-C by mistake during finetune."],
     ["gemma: To continue a stopped run, add `--resume`: `gemma finetune CONFIG --resume`.",
      "gemma: To continue a stopped run, repeat the finetune command with `--resume`."]),
    ("gemma config validate",
     ["How do I check a config without training?", "Validate my YAML.", "Is my run config correct?",
      "Check a config for typos.", "What does gemma config validate do?", "Lint my run config.",
      "Find errors in a config file.", "Will my config load?"],
     ["gemma: To check a config for errors, run `gemma config validate CONFIG`.",
      "gemma: To check a config for errors, use `gemma config validate run.yaml`; it lists each with file:line."]),
    ("gemma config show",
     ["How do I see the final config after overrides?", "Print the merged config.",
      "What does gemma config show do?", "Show the resolved YAML.", "Which values will my run use?",
      "Display the effective settings.", "What did my key=value overrides change?"],
     ["gemma: To print the merged config, run `gemma config show CONFIG key=value`.",
      "gemma: To print the merged config, use `gemma config show run.yaml`."]),
    ("gemma inspect",
     ["What does gemma inspect show?", "How can I see how a layer is sharded?",
      "Show me the sharding of one decoder block.", "How do I look at a layer's variables?",
      "Check the sharding before training.", "Which device holds which part of a kernel?",
      "List the shapes and specs of a layer's weights.", "How much memory does each variable take?"],
     ["gemma: To see shapes, sharding and bytes per variable, run `gemma inspect CONFIG --layer decoder_block_1`.",
      "gemma: To see shapes, sharding and bytes per variable, use `gemma inspect CONFIG`."]),
    ("gemma generate",
     ["How do I generate text?", "How do I sample from a model?", "Which command writes a completion?",
      "Run a prompt through the model.", "How do I try my fine-tuned model?",
      "Ask my run a question.", "Get text from a checkpoint.", "See what the model says."],
     ["gemma: To get text from a model or a run, use `gemma generate RUN_DIR -p PROMPT`.",
      "gemma: To get text from a model or a run, run `gemma generate CONFIG -p \"your prompt\"`."]),
    ("gemma login kaggle",
     ["How do I log in to Kaggle?", "Where do I put my Kaggle key?", "Set up Kaggle credentials.",
      "I need Kaggle access for presets.", "How does gemma get my Kaggle API key?",
      "Connect gemma to my Kaggle account.", "Save kaggle.json for gemma.", "Kaggle says I am not authenticated."],
     ["gemma: To store Kaggle credentials, run `gemma login kaggle`; the key is hidden.",
      "gemma: To store Kaggle credentials, use `gemma login kaggle --from-file kaggle.json`."]),
    ("gemma login hf",
     ["How do I log in to Hugging Face?", "Store my Hugging Face token.", "Set up an HF token.",
      "How do I use hf:// presets?", "Where does the Hugging Face token go?",
      "Connect gemma to the Hub.", "Authenticate with huggingface.", "The Hub says I need to log in."],
     ["gemma: To store a Hugging Face token, run `gemma login hf`; the prompt is hidden.",
      "gemma: To store a Hugging Face token, pipe it to `gemma login hf --token-stdin`."]),
    ("gemma login status",
     ["Which credentials are configured?", "How do I check my logins?", "Am I logged in?",
      "Show login status."],
     ["gemma: To see which credentials are set, run `gemma login status`.",
      "gemma: To see which credentials are set and valid, use `gemma login status --check`."]),
    ("gemma logout",
     ["How do I log out?", "Remove my stored Hugging Face token.", "Delete my Kaggle credentials.",
      "Forget my saved login.", "Sign out of Kaggle.", "Erase the credentials gemma keeps.",
      "Clear my token from this machine."],
     ["gemma: To remove a stored credential, run `gemma logout hf` or `gemma logout kaggle`.",
      "gemma: To remove a stored credential, use `gemma logout kaggle`; it names the file it deleted."]),
    ("gemma convert gguf",
     ["How do I convert a GGUF file?", "Can gemma import GGUF?", "What is gemma convert gguf?",
      "Get the Gemma 3 270M offline.", "Load a llama.cpp checkpoint.", "Use a quantized GGUF model.",
      "Make a keras-hub preset from GGUF.", "I downloaded a model for llama.cpp; can gemma use it?"],
     ["gemma: To make a preset from GGUF, run `gemma convert gguf FILE --out DIR`.",
      "gemma: To make a preset from GGUF, use `gemma convert gguf --builtin gemma3-270m --out presets/gemma3_270m`."]),
    ("gemma export",
     ["How do I export my fine-tuned model?", "Use my model outside gemma.",
      "Save my run for transformers."],
     ["gemma: To use a run elsewhere, run `gemma export RUN_DIR --format hf --out DIR`.",
      "gemma: To use a run elsewhere, use `gemma export RUN_DIR --format preset --out DIR`."]),
    # ---- flags ---------------------------------------------------------------------------------
    ("--json",
     ["What does --json do?", "How do I get machine-readable output?", "Can I script gemma?",
      "Is the --json output clean?", "I want to parse gemma's results in a program.",
      "Pipe gemma's output into jq.", "Structured output, please.", "Feed the result to another tool."],
     ["gemma: For output a program can read, add `--json`: one JSON document on stdout.",
      "gemma: For output a program can read, add `--json`; logs stay on stderr."]),
    ("--quiet",
     ["How do I make gemma quieter?", "Hide the progress output.", "Only show errors.",
      "Less output, please.", "Silence the progress bar.", "Suppress the log lines.",
      "The logs are too noisy."],
     ["gemma: For less output, add `--quiet` (or `-q`); only warnings and errors remain.",
      "gemma: For less output, add `--quiet`; results still go to stdout."]),
    ("--debug",
     ["How do I see a traceback?", "gemma only printed one error line.", "Debug a failure.",
      "Show me the whole Python error.", "Why did it fail? I need details.", "Get more detail on a crash.",
      "The error message is too short."],
     ["gemma: For the full traceback of an error, add `--debug` or set GEMMA_DEBUG=1.",
      "gemma: For the full traceback of an error, add `--debug`."]),
    ("--version",
     ["How do I see the version?", "Which gemma version is installed?", "Print gemma's version.",
      "What gemma am I running?", "Is my gemma up to date?", "Which build of the tool is this?"],
     ["gemma: For the installed version, run `gemma --version`.",
      "gemma: For the installed version, use `gemma --version`."]),
    ("--help",
     ["How do I get help on a verb?", "Show the options of finetune.", "List the gemma commands."],
     ["gemma: For the options of a verb, add `--help`, e.g. `gemma finetune --help`.",
      "gemma: For the list of verbs, run `gemma --help`."]),
    ("--chat",
     ["How do I chat with the model?", "Wrap my prompt in Gemma's turn format.",
      "Generate a chat answer."],
     ["gemma: For Gemma's chat turns, add `--chat`: `gemma generate RUN_DIR --chat -p QUESTION`.",
      "gemma: For Gemma's chat turns, add `--chat` to `gemma generate`."]),
    ("GEMMA_CPU_DEVICES",
     ["How do I test sharding on a laptop?", "Simulate 8 devices on CPU.", "What is GEMMA_CPU_DEVICES?",
      "Run a [2,4] mesh without accelerators.", "I have no GPU but want a device mesh.",
      "Pretend my computer has several accelerators.", "Try model parallelism without hardware.",
      "Emulate a TPU mesh on my desktop."],
     ["gemma: To simulate devices on the CPU, set `GEMMA_CPU_DEVICES=8`.",
      "gemma: To simulate devices on the CPU, run `GEMMA_CPU_DEVICES=8 gemma finetune CONFIG`."]),
    # ---- config keys ---------------------------------------------------------------------------
    ("max_steps",
     ["How do I do a short test run?", "Train for only 10 steps.", "Smoke-test my config.",
      "Limit the number of training steps.", "End the run early on purpose.",
      "Run just a few steps.", "How long does training run?", "Cap how many updates a run makes."],
     ["gemma: To limit the steps of a run, set `train.max_steps=10` after the config.",
      "gemma: To limit the steps of a run, use `gemma finetune CONFIG train.max_steps=10`."]),
    ("lora.rank",
     ["How do I enable LoRA?", "What does lora.rank control?", "Train fewer parameters.",
      "Use low-rank adapters.", "Make the LoRA bigger.", "How many parameters does LoRA train?",
      "Configure the adapter size.", "Give the adapters more capacity."],
     ["gemma: To size the LoRA adapters, set `model.lora.rank=8`; higher ranks train more.",
      "gemma: To size the LoRA adapters, set `model.lora.rank`; 0 means full fine-tuning."]),
    ("learning_rate",
     ["How do I change the learning rate?", "Lower the learning rate.", "Set lr to 1e-4.",
      "Training is unstable, what should I tune first?", "The loss diverged.",
      "Make updates smaller.", "Speed up learning.", "The loss jumps around a lot."],
     ["gemma: To change how big each update is, set `optimizer.learning_rate=1e-4`.",
      "gemma: To change how big each update is, edit `optimizer.learning_rate` or override it."]),
    ("batch_size",
     ["How do I change the batch size?", "What is data.batch_size?", "Train on more examples per step.",
      "Use bigger batches.", "How many sequences go in a batch?", "Fewer examples per update.",
      "Each step sees too few examples."],
     ["gemma: To set how many sequences each step trains on, use `data.batch_size=8`.",
      "gemma: To set how many sequences each step trains on, set `data.batch_size`; it divides by the batch axis."]),
    ("checkpoint_every",
     ["How often are checkpoints written?", "Checkpoint every 100 steps.", "Save more often.",
      "Checkpoints are too rare.", "Fewer checkpoints, please.", "When does gemma save the model?",
      "I lost too much progress in a crash."],
     ["gemma: To set how often checkpoints are saved, use `train.checkpoint_every=100`.",
      "gemma: To set how often checkpoints are saved, set `train.checkpoint_every` in steps."]),
    ("mesh.shape",
     ["What is the mesh section?", "How does gemma split work over devices?", "Explain mesh.shape.",
      "Use all devices for model parallelism."],
     ["gemma: To split work over devices, set `mesh.shape=[2,4]`: 2-way data, 4-way model.",
      "gemma: To split work over devices, set `mesh.shape: [1, -1]`; -1 fills from the device count."]),
    ("data.paths",
     ["How do I point gemma at my data?", "Train on my own files.", "Use a local JSONL file."],
     ["gemma: To train on local files, list them in `data.paths: [my_data.jsonl]`.",
      "gemma: To train on local files, set `data.paths`; JSONL, CSV, TXT and Parquet work."]),
    ("sequence_length",
     ["How long are training examples?", "Set the context length.", "What does sequence_length do?"],
     ["gemma: To set the tokens per row, use `data.sequence_length=256`.",
      "gemma: To set the tokens per row, set `data.sequence_length`; longer rows need more memory."]),
    ("warmup_steps",
     ["What is warmup_steps?", "Ramp the learning rate up slowly.", "Add a warmup."],
     ["gemma: To ramp the learning rate up, set `optimizer.warmup_steps=100`.",
      "gemma: To ramp the learning rate up, set `optimizer.warmup_steps`."]),
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
    for key, _qs, answers in TOPICS:
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
