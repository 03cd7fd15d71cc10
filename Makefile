# The two commands a new user runs (see README.md):
#   make demo   install everything into .venv, then run the main job
#   make test   install everything into .venv, then run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DATA_DIR ?= tdimitation_data

.PHONY: demo test install lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install when the package metadata or the pins change.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The main job: behavioral cloning on CartPole from scripted-expert demonstrations (collected
# and cached on the first run), evaluated and logged to MLflow (~30 s on 2 cores).
demo: $(VENV)/.installed
	$(BIN)/tdimitation fit --config recipes/bc/cartpole.yaml --run.data_dir $(DATA_DIR)

test: $(VENV)/.installed
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check tdimitation tests benchmarks

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_collection.py
	$(BIN)/python benchmarks/bench_storage.py

clean:
	rm -rf $(VENV) $(DATA_DIR) .pytest_cache
