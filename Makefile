# Two entry points (see README): `make run` runs the default study, `make test` the tests.
# Each creates the virtualenv it needs from the pinned requirements.
PYTHON ?= python3
VENV ?= .venv
CORES ?= all
# Large tensor allocations are much faster without glibc returning memory at every free.
export MALLOC_MMAP_MAX_ = 0
export MALLOC_TRIM_THRESHOLD_ = 100000000000

SNAKEMAKE = $(VENV)/bin/snakemake
ARGS ?=
ifdef MIRROR
ARGS += --config mirror=$(MIRROR)
endif

.PHONY: run test lint report clean-venv

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed
	$(SNAKEMAKE) --cores $(CORES) $(ARGS)
	$(SNAKEMAKE) --report report.html $(ARGS)

test: $(VENV)/.installed
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakefmt --check .
	$(SNAKEMAKE) --lint

clean-venv:
	rm -rf $(VENV)
