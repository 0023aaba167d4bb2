# Two entry points a fresh machine needs: `make demo` and `make test`.
# Both create the virtual environment in .venv first (idempotent, a few minutes the first time).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-all bench bench-quick clean

venv: $(STAMP)

# torch is installed first, pinned, so that the range in setup.py never pulls a large CUDA build.
# torchtitan (tests/test_torchtitan.py) goes in without its declared dependencies (setup.py
# says why); the test extra has the two its checkpoint path imports.
$(STAMP): setup.py Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps torchtitan==0.3.0
	touch $(STAMP)

demo: venv
	$(BIN)/tierpoint demo

# -rfEs: the summary lists failures, errors and every skipped test with its reason (e.g. why
# no Slurm cluster could start); -r alone would replace the default (fE).
test: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -rfEs tests

# The default suite plus a long run of the seeded fault suite (kills at random points).
test-all: test
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tests/faultsuite.py --trials 100

bench: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/save_restore.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/drain.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/s3drain.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/replica.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/async_save.py
	$(BIN)/python bench/kernels.py
	$(BIN)/python bench/fingerprint_speed.py
	$(BIN)/python bench/scale.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/collectives.py

# The one table of issue 13 (bench/README.md), a subset that takes under 15 minutes on a
# 2-core VM: the drain bench at 1 GiB (its rows go into the table), then saves and restores
# of 1 GiB, 3 repeats each. DRAIN_JSON=FILE uses rows a drain run wrote there instead.
DRAIN_ROWS = $(if $(DRAIN_JSON),$(DRAIN_JSON),/var/tmp/tierpoint-drain-rows.json)
bench-quick: venv
	$(if $(DRAIN_JSON),,PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/drain.py --json $(DRAIN_ROWS))
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/save_restore.py --gib 1 --repeats 3 \
		--extra-rows $(DRAIN_ROWS)

clean:
	rm -rf $(VENV) build *.egg-info kernels/*.so
