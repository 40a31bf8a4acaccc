# Two entry points: `make run` (the embedded default, end to end) and `make test`.
# Both set up everything first: a venv in .venv and Debian's Fashion-MNIST package.

PYTHON ?= python3.11
VENV ?= .venv
CORES ?= all
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: setup data test-deps run science methods test lint clean

setup: $(VENV)/.installed

# pyproject.toml states lower bounds (a cluster has its own CUDA build of torch); constraints.txt
# pins the exact versions tested here.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,slurm,trackers]'
	touch $@

data:
	@bash scripts/install-system.sh

test-deps:
	@bash scripts/install-system.sh --test

# --show-failed-logs: a failed job's log (ending with its one-line `kt: error: ...`) is printed
# under Snakemake's "Error in rule" block; jobs write their output only to results/logs/.
SNAKEMAKE_RUN := $(BIN)/snakemake --show-failed-logs

run: setup data
	$(SNAKEMAKE_RUN) --cores $(CORES)
	$(BIN)/snakemake --report results/report.html
	@echo "kt: done. Open the report: $(abspath results/report.html)"

# configs/science.yaml over the default run's zoo and logits (linked, not recomputed)
science: run
	mkdir -p results/science
	ln -sfn ../zoo results/science/zoo
	ln -sfn ../logits results/science/logits
	$(SNAKEMAKE_RUN) --cores $(CORES) --configfile configs/science.yaml
	$(BIN)/snakemake --configfile configs/science.yaml --report results/science/report.html
	@echo "kt: done. Open the report: $(abspath results/science/report.html)"

# configs/methods.yaml: kl_dp beside dkd, adaptconf, crd, bikd and ce on converged students (docs/methods-run.md)
methods: setup data
	$(SNAKEMAKE_RUN) --cores $(CORES) --configfile configs/methods.yaml
	$(BIN)/snakemake --configfile configs/methods.yaml --report results/methods/report.html
	@echo "kt: done. Open the report: $(abspath results/methods/report.html)"

test: setup test-deps
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint

clean:
	rm -rf results .snakemake
