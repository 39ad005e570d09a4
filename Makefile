# Two entry points for a fresh machine: `make bench` (the main job) and `make test`.
# Both create the virtual environment at .venv/ on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup test test-all bench demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

test: setup
	$(VENV)/bin/python -m pytest

test-all: setup  # includes the slow tests (full-depth Hiera-L/H parity)
	$(VENV)/bin/python -m pytest -m ''

bench: setup  # every registered model: parameters, FLOPs, speed next to the official package
	$(VENV)/bin/hieralab bench --json bench.json

demo: bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
