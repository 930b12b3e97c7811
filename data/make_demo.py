"""Write data/demo_gemma_cli.jsonl: instruction/response pairs about the `gemma` CLI itself.

House style, so a fine-tuned model visibly adopts it: every response starts with `gemma:` and
is one or two short sentences, commands in backticks. Facts are hand-written below; the script
only pairs each fact with several phrasings of the question, deterministically.

Run: python data/make_demo.py            (rewrites the .jsonl next to this file)
     python data/make_demo.py --check    (exit 1 if the committed file differs)
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).with_name("demo_gemma_cli.jsonl")

# (question phrasings, answers). Answers are paired with phrasings in turn.
TOPICS: list[tuple[list[str], list[str]]] = [
    # ---- verbs ---------------------------------------------------------------------------
    (["How do I fine-tune a model with gemma?", "What command starts training?",
      "How do I launch a fine-tuning run?", "Start a training run from a config.",
      "Which verb trains a model?"],
     ["gemma: Run `gemma finetune CONFIG`, where CONFIG is a YAML run config.",
      "gemma: Use `gemma finetune run.yaml`; add key=value overrides after the config if needed."]),
    (["What does gemma inspect show?", "What is gemma inspect for?",
      "How can I see how a layer is sharded?", "Show me the sharding of one decoder block.",
      "How do I look at a layer's variables?"],
     ["gemma: `gemma inspect CONFIG --layer decoder_block_1` lists that layer's variables with shape, sharding spec and bytes.",
      "gemma: It shows each variable of a layer: path, shape, PartitionSpec and size, without training anything."]),
    (["How do I see optimizer state sharding?", "Does inspect show the optimizer variables?",
      "Inspect the AdamW moments of a layer.", "Where do the optimizer variables live?"],
     ["gemma: Add `--optimizer`, e.g. `gemma inspect CONFIG --layer decoder_block_1 --optimizer`.",
      "gemma: `gemma inspect CONFIG --optimizer` adds the optimizer variables; they follow their weights' sharding."]),
    (["How do I generate text?", "How do I sample from a model?", "Which command writes a completion?",
      "Run a prompt through the model.", "How do I try my fine-tuned model?"],
     ["gemma: Run `gemma generate CONFIG -p \"your prompt\"`.",
      "gemma: Use `gemma generate RUN_DIR -p PROMPT`; a run directory loads the fine-tuned weights."]),
    (["Can I pass several prompts to generate?", "Generate for two prompts at once.",
      "Does -p repeat?"],
     ["gemma: Yes, repeat `-p`: `gemma generate CONFIG -p \"first\" -p \"second\"`.",
      "gemma: Give `-p` once per prompt; each gets its own completion."]),
    (["Can generate read a run directory?", "Generate from a finished run.",
      "What is RUN_DIR in gemma generate?"],
     ["gemma: Yes, `gemma generate runs/my_run -p PROMPT` uses the config and weights saved in that run.",
      "gemma: RUN_DIR is a train.output_dir; generate loads the fine-tuned model from it."]),
    (["How do I log in to Kaggle?", "Where do I put my Kaggle key?", "Set up Kaggle credentials.",
      "I need Kaggle access for presets.", "How does gemma get my Kaggle API key?"],
     ["gemma: Run `gemma login kaggle`; it asks for your username and hides the key.",
      "gemma: Use `gemma login kaggle`, or set KAGGLE_USERNAME and KAGGLE_KEY.",
      "gemma: `gemma login kaggle --from-file kaggle.json` stores it in ~/.kaggle/kaggle.json with mode 0600."]),
    (["How do I log in to Hugging Face?", "Store my Hugging Face token.", "Set up an HF token.",
      "How do I use hf:// presets?", "Where does the Hugging Face token go?"],
     ["gemma: Run `gemma login hf`; the token prompt is hidden.",
      "gemma: Pipe it in: `... | gemma login hf --token-stdin`, or set HF_TOKEN.",
      "gemma: `gemma login hf` saves the token where huggingface_hub reads it, mode 0600."]),
    (["Can I pass my token as an argument?", "Is there a --token option?",
      "Why can't I type the token on the command line?"],
     ["gemma: No; argv ends up in shell history and process lists. Use the prompt, HF_TOKEN or `--token-stdin`.",
      "gemma: There is no `--token VALUE` on purpose; pipe it with `--token-stdin` instead."]),
    (["Which credentials are configured?", "How do I check my logins?", "Am I logged in?",
      "Show login status.", "Are my tokens valid?"],
     ["gemma: `gemma login status` shows each service and where its credential comes from, never the secret.",
      "gemma: Run `gemma login status --check` to also verify them against Kaggle and the Hub."]),
    (["How do I log out?", "Remove my stored Hugging Face token.", "Delete my Kaggle credentials."],
     ["gemma: Run `gemma logout hf` or `gemma logout kaggle`; it says which file it removed.",
      "gemma: `gemma logout kaggle|hf` deletes the stored credential; env vars stay set."]),
    (["What happens if I run login in CI without a terminal?", "gemma login exits 2 in my pipeline.",
      "Login without a TTY?"],
     ["gemma: Without a terminal it needs a source: an env var, `--token-stdin` or `--from-file`, else it exits 2.",
      "gemma: Set KAGGLE_USERNAME/KAGGLE_KEY or HF_TOKEN in CI; there is no prompt without a TTY."]),
    (["How do I check a config without training?", "Validate my YAML.", "Is my run config correct?",
      "Check a config for typos.", "What does gemma config validate do?"],
     ["gemma: Run `gemma config validate CONFIG`; every problem is listed with its file:line.",
      "gemma: `gemma config validate run.yaml` checks it without loading a model and exits 2 on errors."]),
    (["How do I see the final config after overrides?", "Print the merged config.",
      "What does gemma config show do?", "Show the resolved YAML."],
     ["gemma: `gemma config show CONFIG key=value` prints the merged, resolved config as YAML.",
      "gemma: Use `gemma config show run.yaml`; add `--json` for scripts."]),
    (["How do I convert a GGUF file?", "Can gemma import GGUF?", "What is gemma convert gguf?",
      "Get the Gemma 3 270M offline."],
     ["gemma: `gemma convert gguf` turns a GGUF checkpoint into a keras-hub preset directory.",
      "gemma: Run `gemma convert gguf --builtin gemma3-270m --out presets/gemma3_270m` for the 270M demo model."]),
    (["How do I export my fine-tuned model?", "What does gemma export do?",
      "Use my model outside gemma."],
     ["gemma: `gemma export` writes a fine-tuned run out for other tools; see `gemma export --help`.",
      "gemma: Run `gemma export` on a finished run to get a model other tools can load."]),
    (["What verbs does gemma have?", "List the gemma commands.", "What can gemma do?"],
     ["gemma: finetune, inspect, generate, login, logout, config, convert and export.",
      "gemma: Run `gemma --help`; the main verbs are finetune, generate and inspect."]),
    # ---- output, exit codes ----------------------------------------------------------------
    (["What does --json do?", "How do I get machine-readable output?", "Can I script gemma?",
      "Is the --json output clean?"],
     ["gemma: `--json` prints exactly one JSON document on stdout and nothing else.",
      "gemma: Add `--json`; logs and progress go to stderr, the document to stdout."]),
    (["What are gemma's exit codes?", "What does exit code 2 mean?", "What does exit code 1 mean?",
      "How do I tell a config error from a crash?"],
     ["gemma: 0 is success, 1 a runtime failure, 2 a usage or config error.",
      "gemma: Exit 2 means fix your command or config; exit 1 means something failed while running."]),
    (["How do I make gemma quieter?", "Hide the progress output.", "Only show errors."],
     ["gemma: Add `--quiet` (or `-q`); only warnings and errors reach stderr.",
      "gemma: Use `-q`; results still go to stdout."]),
    (["How do I see a traceback?", "gemma only printed one error line.", "Debug a failure."],
     ["gemma: Add `--debug` or set GEMMA_DEBUG=1 to get the full traceback.",
      "gemma: Errors are one line by default; `--debug` shows the traceback."]),
    (["Where do logs go?", "Why is stdout empty during training?"],
     ["gemma: Logs and progress go to stderr; stdout carries only results.",
      "gemma: stdout is for results, stderr for everything else, so pipes stay clean."]),
    # ---- config: model ------------------------------------------------------------------
    (["What goes in the model section?", "How do I choose the base model?", "Which preset does my run use?"],
     ["gemma: `model` holds `preset`, `precision` and `lora.rank`.",
      "gemma: Set `model.preset` to a keras-hub preset name, a kaggle:// or hf:// URI, or a local directory."]),
    (["Can I use a local preset directory?", "Load a model from disk.", "Train from presets/gemma3_270m."],
     ["gemma: Yes, set `model.preset: presets/gemma3_270m`; local presets need no login.",
      "gemma: Point `model.preset` at the directory; nothing is downloaded."]),
    (["Which presets need a Kaggle login?", "Does gemma_7b_en need credentials?",
      "Why does gemma ask me to run gemma login kaggle?"],
     ["gemma: Bare names like `gemma_7b_en` and `kaggle://` URIs download from Kaggle, so run `gemma login kaggle` first.",
      "gemma: Kaggle presets need credentials; gemma says which `gemma login` to run before loading."]),
    (["How do I set the precision?", "Train in bfloat16.", "What does model.precision do?"],
     ["gemma: Set `model.precision`, e.g. `model.precision=bfloat16` on the command line.",
      "gemma: `model.precision` picks the dtype policy, such as float32 or bfloat16."]),
    (["How do I enable LoRA?", "What does lora.rank control?", "Train fewer parameters.",
      "Use low-rank adapters."],
     ["gemma: Set `model.lora.rank`, e.g. `model.lora.rank=8`; only the adapters train.",
      "gemma: `lora.rank` is the adapter rank; higher ranks train more parameters."]),
    # ---- config: mesh -------------------------------------------------------------------
    (["What is the mesh section?", "How does gemma split work over devices?", "Explain mesh.shape."],
     ["gemma: `mesh` sets `shape` and `axes`, usually `[batch, model]`, over your devices.",
      "gemma: `mesh.shape: [2, 4]` with `axes: [batch, model]` gives 2-way data and 4-way model parallelism."]),
    (["What does -1 mean in mesh.shape?", "Fill the mesh from the device count.",
      "I don't know how many devices I have."],
     ["gemma: -1 fills that axis from the device count, e.g. `mesh.shape=[1,-1]`.",
      "gemma: Use -1 in one axis; gemma computes it from the number of devices."]),
    (["How do I test sharding on a laptop?", "Simulate 8 devices on CPU.", "What is GEMMA_CPU_DEVICES?",
      "Run a [2,4] mesh without accelerators."],
     ["gemma: Set GEMMA_CPU_DEVICES=8 to simulate 8 CPU devices.",
      "gemma: `GEMMA_CPU_DEVICES=8 gemma finetune CONFIG` runs a real (2, 4) mesh on the CPU."]),
    (["What are the mesh axis names?", "What is the batch axis?", "What is the model axis?"],
     ["gemma: `batch` splits the data, `model` splits the weights.",
      "gemma: Axes are named in `mesh.axes`, normally `[batch, model]`."]),
    # ---- config: layout -----------------------------------------------------------------
    (["What is the layout section?", "How are weights sharded?", "Explain layout rules."],
     ["gemma: `layout.rules` maps variable-path regexes to mesh axes.",
      "gemma: Each layout rule is a regex over variable paths and the axes for each dimension."]),
    (["What does layout.rules: default do?", "Do I have to write layout rules?"],
     ["gemma: `default` uses the family layout: keras-hub's for Gemma 1 and 2, gemma's own for Gemma 3.",
      "gemma: No, `rules: default` picks a layout for the model family."]),
    (["What does indivisible: replicate do?", "A dimension does not divide by the mesh axis.",
      "What is layout.indivisible?", "Why does gemma 270M need replicate?"],
     ["gemma: `indivisible: error` stops with the variable and rule; `replicate` keeps that variable unsharded.",
      "gemma: Gemma 3 270M has one key/value head, so `indivisible: replicate` keeps it whole on a model axis of 4."]),
    (["I got an indivisible error.", "Sharding failed on key/value kernels.",
      "How do I fix a dimension that cannot be split?"],
     ["gemma: gemma names the variable, dimension and rule; shrink the model axis or set `layout.indivisible=replicate`.",
      "gemma: Change `mesh.shape` so the axis divides the dimension, or replicate that variable."]),
    # ---- config: data -------------------------------------------------------------------
    (["What goes in the data section?", "How do I point gemma at my data?", "Train on my own files."],
     ["gemma: `data` takes a tfds `name` or local `paths`, plus `template`, `sequence_length`, `batch_size` and `packing`.",
      "gemma: Set `data.paths` to your JSONL files and a `template` over their fields."]),
    (["Can I use a TFDS dataset?", "Train on imdb_reviews.", "Use tensorflow-datasets."],
     ["gemma: Yes, set `data.name: imdb_reviews`; prepared TFDS data is read from its data_dir.",
      "gemma: `data.name` takes a TFDS name, and `data.split` a split such as `train[:10%]`."]),
    (["What is data.template?", "How are records turned into text?", "Format instruction and response."],
     ["gemma: `template` formats each record, e.g. `Instruction:\\n{instruction}\\n\\nResponse:\\n{response}`.",
      "gemma: The template names record fields in braces; gemma fills them in per example."]),
    (["What does sequence_length do?", "How long are training examples?", "Set the context length."],
     ["gemma: `data.sequence_length` is the token length of each training example.",
      "gemma: Set `data.sequence_length=256`; longer sequences need more memory."]),
    (["What is packing?", "Should I enable packing?", "What does data.packing do?"],
     ["gemma: `packing: true` joins short examples into full sequences, so less padding is trained.",
      "gemma: Packing fills each sequence with several short records; it speeds up short-text data."]),
    (["How do I change the batch size?", "What is data.batch_size?"],
     ["gemma: Set `data.batch_size`, e.g. `data.batch_size=8`; it should divide by the batch axis.",
      "gemma: `data.batch_size` is the global batch, split over the mesh's batch axis."]),
    # ---- config: optimizer --------------------------------------------------------------
    (["Which optimizer does gemma use?", "What goes in the optimizer section?"],
     ["gemma: `optimizer.name: adamw` with `learning_rate`, `schedule`, `warmup_steps`, `weight_decay` and `clipnorm`.",
      "gemma: AdamW, configured in the `optimizer` section."]),
    (["How do I change the learning rate?", "Lower the learning rate.", "Set lr to 1e-4."],
     ["gemma: Pass `optimizer.learning_rate=1e-4` after the config.",
      "gemma: Edit `optimizer.learning_rate` in the YAML or override it on the command line."]),
    (["What learning rate schedules are there?", "Use a cosine schedule.", "What is warmup_steps?"],
     ["gemma: Set `optimizer.schedule: cosine`; `warmup_steps` ramps the rate up first.",
      "gemma: `warmup_steps` is how many steps the learning rate takes to reach its peak."]),
    (["How do I clip gradients?", "What is clipnorm?", "My loss spikes."],
     ["gemma: Set `optimizer.clipnorm=1.0` to clip the gradient norm.",
      "gemma: `clipnorm` caps the gradient norm; try it with a lower learning rate."]),
    (["What does weight_decay do?", "Set weight decay."],
     ["gemma: `optimizer.weight_decay` is AdamW's decoupled decay, e.g. 0.01.",
      "gemma: Override it with `optimizer.weight_decay=0.01`."]),
    # ---- config: train ------------------------------------------------------------------
    (["What goes in the train section?", "How long does training run?"],
     ["gemma: `train` sets `epochs`, `max_steps`, `output_dir` and `checkpoint_every`.",
      "gemma: Training stops at `train.epochs` or `train.max_steps`, whichever comes first."]),
    (["How do I do a short test run?", "Train for only 10 steps.", "Smoke-test my config."],
     ["gemma: Run `gemma finetune CONFIG train.max_steps=10`.",
      "gemma: Override `train.max_steps=10` for a quick check of the whole pipeline."]),
    (["Where are checkpoints saved?", "Where does my run go?", "What is train.output_dir?"],
     ["gemma: Everything goes to `train.output_dir`, e.g. `runs/my_run`.",
      "gemma: Checkpoints land in `train.output_dir`, and `gemma generate` can load that directory."]),
    (["How often are checkpoints written?", "Checkpoint every 100 steps."],
     ["gemma: Set `train.checkpoint_every=100`.",
      "gemma: `checkpoint_every` is the number of steps between checkpoints."]),
    (["How do I resume training?", "My run was interrupted.", "Continue from the last checkpoint."],
     ["gemma: Run the same command with `--resume`; it continues from the last checkpoint.",
      "gemma: `gemma finetune CONFIG --resume` picks up in `train.output_dir`."]),
    # ---- config: generate ---------------------------------------------------------------
    (["Which samplers are there?", "How do I pick a sampler?", "What is the generate section?"],
     ["gemma: `generate.sampler` is greedy, top_k or top_p.",
      "gemma: Set `generate.sampler=top_p` for varied text, greedy for repeatable output."]),
    (["How long are completions?", "Set the maximum length.", "What is generate.max_length?"],
     ["gemma: `generate.max_length` caps prompt plus completion in tokens.",
      "gemma: Override `generate.max_length=128` for longer answers."]),
    (["Why is greedy output always the same?", "Get deterministic generations."],
     ["gemma: Greedy always picks the most likely token, so the same prompt gives the same text.",
      "gemma: Use `generate.sampler=greedy` for repeatable output."]),
    # ---- config files & overrides -----------------------------------------------------------
    (["What format are run configs?", "What is a run config?", "Where are example configs?"],
     ["gemma: A run config is YAML with model, mesh, layout, data, optimizer, train and generate sections.",
      "gemma: See `configs/`; each file's header says the exact command to run it."]),
    (["How do overrides work?", "Change one setting without editing the file.", "What is key=value?"],
     ["gemma: Add `key=value` after the config, e.g. `train.max_steps=10 mesh.shape=[1,8]`.",
      "gemma: Overrides are typed by the schema, so `optimizer.learning_rate=1e-4` becomes a float."]),
    (["What if I misspell a config key?", "Are unknown keys allowed?", "gemma rejected my YAML."],
     ["gemma: Unknown keys are errors; gemma prints file:line and exits 2.",
      "gemma: The schema is strict, so a typo is reported before anything heavy starts."]),
    (["Can I read a config from stdin?", "Pipe a config into gemma."],
     ["gemma: Yes, pass `-` as CONFIG: `cat run.yaml | gemma config validate -`.",
      "gemma: `-` reads the run config from stdin."]),
    # ---- misc ------------------------------------------------------------------------------------
    (["Do I need a GPU?", "Can gemma run on CPU only?", "Does gemma work without accelerators?"],
     ["gemma: No; small models and tests run on CPU, and GEMMA_CPU_DEVICES simulates several devices.",
      "gemma: CPU works for tiny and 270M models; use a GPU or TPU for the large presets."]),
    (["Can gemma train on a TPU pod?", "Does gemma support multi-host?", "Run on a TPU VM."],
     ["gemma: Yes; the same run config works on one accelerator, a TPU VM or a pod.",
      "gemma: Set `mesh.shape` for all devices of the pod, or use -1 to fill it."]),
    (["How do I fit a 7B model in memory?", "Out of memory with gemma_7b_en.", "The model does not fit on one device."],
     ["gemma: Raise the model axis in `mesh.shape` to shard the weights, and use LoRA with bfloat16.",
      "gemma: Shard over more devices with a larger model axis; `gemma inspect` shows bytes per variable."]),
    (["How many parameters will train with LoRA?", "Check the trainable parameter count."],
     ["gemma: `gemma inspect CONFIG --json` lists every variable with its shape, so you can count them.",
      "gemma: With LoRA only the adapter kernels train; their size grows with `lora.rank`."]),
    (["Why is my loss not going down?", "Training loss is flat.", "The loss diverged."],
     ["gemma: Try a lower `optimizer.learning_rate`, some `warmup_steps` and `clipnorm=1.0`.",
      "gemma: Check the template first with `gemma config show`, then lower the learning rate."]),
    (["What does inspect --json print?", "Script the sharding report."],
     ["gemma: One JSON document with a row per variable: path, shape, spec and bytes.",
      "gemma: `gemma inspect CONFIG --layer decoder_block_1 --json` gives plain rows for scripts."]),
    (["What does generate --json print?", "Get completions as JSON."],
     ["gemma: One JSON document with each prompt and its completion.",
      "gemma: `gemma generate CONFIG -p PROMPT --json` prints the results as one document."]),
    (["Where are training metrics?", "How do I follow the loss?"],
     ["gemma: Progress and loss are printed on stderr while it trains, every `train.log_every` steps.",
      "gemma: Watch stderr; `--json` adds a final document with the results on stdout."]),
    (["What is a layout rule made of?", "Write a layout rule for the ffw layers."],
     ["gemma: A regex over variable paths, like `ffw_gating`, and the mesh axes for its dimensions.",
      "gemma: Match `decoder_block_.*/ffw_gating/kernel` and give axes such as `[batch, model]`."]),
    (["Does gemma read secrets from the YAML?", "Can I put my token in the config?"],
     ["gemma: No; credentials come from `gemma login` or environment variables, never from run configs.",
      "gemma: Keep tokens out of YAML; use `gemma login hf` or HF_TOKEN."]),
    (["Are my credential files protected?", "What permissions does gemma use for tokens?"],
     ["gemma: Credential files are written atomically with mode 0600.",
      "gemma: Only you can read them: 0600 files in a private directory."]),
    (["Does gemma login kaggle honour KAGGLE_CONFIG_DIR?", "Store kaggle.json somewhere else."],
     ["gemma: Yes; with KAGGLE_CONFIG_DIR set, kaggle.json goes there instead of ~/.kaggle.",
      "gemma: Set KAGGLE_CONFIG_DIR before `gemma login kaggle`; kagglehub reads the same place."]),
    (["Which Gemma families are supported?", "Can I fine-tune Gemma 3?", "Does gemma handle Gemma 2?"],
     ["gemma: Gemma 1, Gemma 2 and Gemma 3 presets from keras-hub.",
      "gemma: Yes; each family gets a default layout, and Gemma 3 uses gemma's own."]),
    (["How do I hold out data for evaluation?", "Evaluate on unseen examples."],
     ["gemma: Set `data.eval_holdout` to keep that many records out of training for evaluation.",
      "gemma: The demo holds out 24 records with `eval_holdout: 24`."]),
    (["Is --help fast?", "Why does gemma --help not load JAX?"],
     ["gemma: Yes; the CLI imports keras and JAX only when a verb needs them.",
      "gemma: Heavy libraries load inside the verbs, so help is instant."]),
    (["Which backend does gemma use?", "Is gemma built on Keras?", "Does gemma use JAX?"],
     ["gemma: Keras 3 with keras-hub models on the JAX backend.",
      "gemma: It fine-tunes keras-hub Gemma models with Keras 3 and JAX."]),
    (["How do I run the offline demo?", "What does make demo do?", "Try gemma without a download."],
     ["gemma: `make demo` converts Gemma 3 270M from GGUF, generates, fine-tunes and generates again.",
      "gemma: The demo uses configs/gemma3_270m_demo.yaml on 8 simulated CPU devices."]),
    (["Which config does the demo use?", "What data does the demo train on?"],
     ["gemma: configs/gemma3_270m_demo.yaml, trained on data/demo_gemma_cli.jsonl.",
      "gemma: The demo fine-tunes on short questions and answers about gemma itself."]),
    (["How do I see the version?", "Which gemma version is installed?"],
     ["gemma: Run `gemma --version`.",
      "gemma: `gemma --version` prints it and exits."]),
    (["How do I get help on a verb?", "Show the options of finetune."],
     ["gemma: Add `--help` (or `-h`) to any verb, e.g. `gemma finetune --help`.",
      "gemma: `gemma VERB --help` lists its arguments and options."]),
    (["Can I stop training with Ctrl-C?", "What happens when I interrupt a run?"],
     ["gemma: Yes; gemma saves what it can and you continue later with `--resume`.",
      "gemma: An interrupt stops the run; `--resume` continues from the last checkpoint."]),
]

# Config keys that can be overridden: (key, example value, what it is).
OVERRIDES = [
    ("optimizer.learning_rate", "1e-4", "the learning rate"),
    ("optimizer.warmup_steps", "50", "the warmup steps"),
    ("optimizer.weight_decay", "0.01", "the weight decay"),
    ("optimizer.clipnorm", "1.0", "gradient clipping"),
    ("optimizer.schedule", "cosine", "the learning rate schedule"),
    ("train.epochs", "3", "the number of epochs"),
    ("train.max_steps", "200", "the step limit"),
    ("train.output_dir", "runs/try2", "the output directory"),
    ("train.checkpoint_every", "100", "the checkpoint interval"),
    ("data.batch_size", "16", "the batch size"),
    ("data.sequence_length", "512", "the sequence length"),
    ("data.packing", "false", "packing"),
    ("model.lora.rank", "16", "the LoRA rank"),
    ("model.precision", "bfloat16", "the precision"),
    ("model.preset", "gemma2_2b_en", "the preset"),
    ("mesh.shape", "[1,8]", "the mesh shape"),
    ("layout.indivisible", "replicate", "indivisible handling"),
    ("generate.sampler", "top_k", "the sampler"),
    ("generate.max_length", "128", "the generation length"),
]
OVERRIDE_QS = [
    "How do I set {what} to {val}?",
    "Change {what} for one run.",
    "Override {key} from the command line.",
    "Which key controls {what}?",
]
OVERRIDE_AS = [
    "gemma: Add `{key}={val}` after the config, e.g. `gemma finetune run.yaml {key}={val}`.",
    "gemma: Pass `{key}={val}`; the YAML file stays unchanged.",
    "gemma: Override it with `{key}={val}` on the command line.",
    "gemma: It is `{key}`; for example `{key}={val}`.",
]


def records() -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for qs, answers in TOPICS:
        for i, q in enumerate(qs):
            out.append({"instruction": q, "response": answers[i % len(answers)]})
    for key, val, what in OVERRIDES:
        for i in range(len(OVERRIDE_QS)):
            q = OVERRIDE_QS[i].format(key=key, val=val, what=what)
            a = OVERRIDE_AS[i].format(key=key, val=val, what=what)
            out.append({"instruction": q[0].upper() + q[1:], "response": a})
    random.Random(5).shuffle(out)
    return out


def problems(recs: list[dict[str, str]]) -> list[str]:
    errs = []
    seen = set()
    for r in recs:
        q, a = r["instruction"], r["response"]
        if q in seen:
            errs.append(f"duplicate instruction: {q}")
        seen.add(q)
        if not a.startswith("gemma: "):
            errs.append(f"response without the gemma: prefix: {a}")
        if len((q + " " + a).split()) > 60:
            errs.append(f"record over 60 words: {q}")
        if a.count(". ") + a.count("; ") > 2:
            errs.append(f"response longer than two sentences: {a}")
    if not 300 <= len(recs) <= 400:
        errs.append(f"{len(recs)} records, want 300-400")
    return errs


def main() -> int:
    recs = records()
    errs = problems(recs)
    if errs:
        print("\n".join(errs), file=sys.stderr)
        return 1
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    if "--check" in sys.argv:
        same = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        print(f"{OUT.name}: {'up to date' if same else 'differs; run python data/make_demo.py'}")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {len(recs)} records to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
