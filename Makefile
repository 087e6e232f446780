# make demo   - set up .venv (first time only) and run the demo sweep on the bundled digits data
# make test   - set up .venv and run the fast test suite
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Offline unless the user chose otherwise: no login prompt, nothing sent.
export WANDB_MODE ?= offline
export WANDB_ERROR_REPORTING ?= false

# MNIST for the reproduction presets: $(ROBUSTFL_DATA)/mnist (the shared folder's official files by default)
export ROBUSTFL_DATA ?= $(abspath ../shared/data)

.PHONY: demo test test-all lint format bench reproduce clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# The CPU build first: a bare "torch" requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[dev,flower]"
	touch $(STAMP)

demo: $(STAMP)
	rm -rf outputs/demo
	$(BIN)/robustfl -m experiment=grid hydra/launcher=joblib hydra.sweep.dir=outputs/demo
	$(BIN)/robustfl-report outputs/demo -o outputs/demo/report

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m ""

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# The published settings (docs/results.md). On 2 cores with the default MLP: bucketing_mimic's
# 60 runs take about 7 minutes, bucketing_momentum's 96 about 15, byzfl_heatmap's 96 about 35
# (two joblib workers).
reproduce: $(STAMP)
	$(BIN)/robustfl -m experiment=bucketing_mimic hydra/launcher=joblib hydra.sweep.dir=outputs/reproduce/bucketing_mimic resume=true
	$(BIN)/robustfl -m experiment=bucketing_momentum hydra/launcher=joblib hydra.sweep.dir=outputs/reproduce/bucketing_momentum resume=true
	$(BIN)/robustfl -m experiment=byzfl_heatmap hydra/launcher=joblib hydra.sweep.dir=outputs/reproduce/byzfl_heatmap resume=true
	$(BIN)/robustfl-report outputs/reproduce/bucketing_mimic -o outputs/reproduce/bucketing_mimic/report
	$(BIN)/robustfl-report outputs/reproduce/bucketing_momentum -o outputs/reproduce/bucketing_momentum/report
	$(BIN)/robustfl-report outputs/reproduce/byzfl_heatmap -o outputs/reproduce/byzfl_heatmap/report
	$(BIN)/robustfl -m experiment=privacy_tradeoff hydra/launcher=joblib hydra.sweep.dir=outputs/reproduce/privacy_tradeoff resume=true
	$(BIN)/robustfl -m experiment=compression_tradeoff hydra/launcher=joblib hydra.sweep.dir=outputs/reproduce/compression_tradeoff resume=true
	$(BIN)/robustfl-report outputs/reproduce/privacy_tradeoff -o outputs/reproduce/privacy_tradeoff/report
	$(BIN)/robustfl-report outputs/reproduce/compression_tradeoff -o outputs/reproduce/compression_tradeoff/report

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
