# Set-up commands for a fresh machine (see README):
#   make test        creates .venv, installs nnunet-ext with its test extras, runs the whole test suite
#                    (about 25 minutes on 2 CPU cores, two tests at a time; JOBS=1 runs them serially)
#   make test-quick  the same without the slow end-to-end tests (pytest -m "not slow")
#   make demo        creates .venv, installs, runs the Skeleton Recall demo end to end on the CPU
#   make quality     creates .venv, installs, runs the CPU-budget quality benchmark (about 40 minutes on 2 cores)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JOBS ?= 2
# one test per core (pytest-xdist; JOBS=1 runs them one after another); every test has its own nnU-Net folders
PYTEST := nnUNet_def_n_proc=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n $(JOBS) --dist worksteal

.PHONY: install test test-quick demo quality clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PYTEST) --durations=15

test-quick: $(STAMP)
	$(PYTEST) -m "not slow" --durations=10

demo: $(STAMP)
	$(BIN)/nnunet-ext demo --workdir demo_output

quality: $(STAMP)
	$(BIN)/nnunet-ext benchmark quality --budget cpu --workdir quality_benchmark

clean:
	rm -rf $(VENV) demo_output quality_benchmark
