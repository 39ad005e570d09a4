# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create the virtual environment at .venv/ on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data ffmpeg test test-all bench demo clean

setup: $(STAMP) ffmpeg

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

data:  # Fashion-MNIST from Debian's packages (no run-time download): the default dataset
	@test -f $(FMNIST)/train-images-idx3-ubyte.gz || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q dataset-fashion-mnist || { $$SUDO apt-get update -q && \
	  $$SUDO apt-get install -y -q dataset-fashion-mnist; }; }

ffmpeg:  # the FFmpeg shared libraries torchcodec decodes with (Debian's ffmpeg); without them PyAV decodes instead
	@ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so' || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q ffmpeg >/dev/null || { $$SUDO apt-get update -q >/dev/null && \
	  $$SUDO apt-get install -y -q ffmpeg >/dev/null; } || \
	  echo "could not install Debian's ffmpeg: video decodes with PyAV instead of torchcodec"; }

demo: setup data  # MAE-pretrain a small Hiera on Fashion-MNIST, then write reconstructions and the loss curve
	$(VENV)/bin/hieralab pretrain --preset mae_hiera_fmnist --resume

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
