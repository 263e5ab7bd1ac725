# Set-up and entry points. Needs python3.11 and a C++ compiler (g++) only;
# everything else is installed into .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

BENCH_STAMP := $(VENV)/.installed-bench-stamp

.PHONY: install demo test bench bench-quick bench-lite0 bench-install clean \
	train-fashion

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found: install Python 3.11 (e.g. apt-get install python3.11 python3.11-venv, or pyenv install 3.11)"; exit 2; }
	@command -v $${CXX:-g++} >/dev/null 2>&1 || { echo "make: no C++ compiler ($${CXX:-g++}) found: Theano needs one (apt-get install g++, or xcode-select --install)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,plot]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m pipeline.demo

# Two test processes (pytest-xdist): most tests wait on the runs they start,
# so two halve the suite's time on 2 cores (705 -> 357 s, 2026-11-29).
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2

bench-install: $(BENCH_STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,plot,bench]'
	touch $(BENCH_STAMP)

# A few minutes: 20,000 images. Results: bench/results/latest.{json,md,png}.
bench: bench-install
	$(BIN)/python bench/run.py

# Under a minute: 2,000 images.
bench-quick: bench-install
	$(BIN)/python bench/run.py --quick

# A few minutes: EfficientNet-Lite0-shaped predictor, plain Theano vs
# model_store/ops vs onnxruntime, same weights. bench/results/lite0_latest.*
bench-lite0: bench-install
	$(BIN)/python bench/lite0_predictor.py
	$(BIN)/python bench/lite0_predictor.py --profile

# Trains fashion-cnn from model_store/specs/fashion-cnn.json on Debian's
# Fashion-MNIST (apt-get install dataset-fashion-mnist) into the shipped
# store with the settings in model_store/train_config.py (FASHION_DEFAULTS), and
# evaluates it on the 10,000 test images.
train-fashion: install
	$(BIN)/python -m pipeline.cli --store model_store/models train \
	  --dataset fashion-mnist --name fashion-cnn

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
