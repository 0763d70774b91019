# binexp developer commands. `make help` lists them.
PY ?= python3
DATA ?= $(or $(BINEXP_DATA),../shared/data)

.PHONY: help install test test-full smoke train sweep tb lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}'

install:  ## install binexp and its dev tools into the active Python (editable)
	$(PY) -m pip install -e ".[dev]"

test:  ## the fast test suite (what CI runs)
	pytest

test-full:  ## every test, the slow ones too
	pytest -m "slow or not slow"

smoke:  ## a seconds-long training run on synthetic data
	binexp train dataset=synthetic debug=smoke

train:  ## the main job: the ABR paper's CIFAR-10 baseline (cifar_quick, Caffe's recipe)
	BINEXP_DATA=$(DATA) binexp train dataset=cifar10 architecture=cifar_quick

sweep:  ## an example sweep: two learning rates of the MNIST LeNet, one run directory each
	BINEXP_DATA=$(DATA) binexp train -m optimizer.lr=0.01,0.003

tb:  ## TensorBoard over every run under logs/
	tensorboard --logdir logs

lint:  ## ruff
	ruff check binexp tests scripts

clean:  ## remove build leftovers (runs under logs/ are kept)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
