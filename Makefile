# Two set-up commands on a fresh machine: `make demo` and `make test`. Each creates .venv by itself.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo test lint browser speech format bench clean

# torch goes in first and pinned: a looser requirement with no torch installed pulls a CUDA build.
$(BIN)/herd: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (herd needs Python 3.11)"; exit 2; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

demo: $(BIN)/herd
	$(BIN)/herd demo

lint: $(BIN)/herd
	$(BIN)/ruff check herd tests bench experiments
	$(BIN)/ruff format --check herd tests bench experiments

# tests/serve/test_web_page.py drives Debian's headless Chromium through its chromedriver:
# installed with apt when either is missing (as root, else through sudo), and skipped when present.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing chromium and chromium-driver (for tests/serve/test_web_page.py)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# espeak-ng synthesises the spoken words of the speech adapter's tests and study.
speech:
	@command -v espeak-ng >/dev/null || { \
	  echo "installing espeak-ng (for the speech adapter's tests)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; }

test: lint browser speech
	$(BIN)/python -m pytest

format: $(BIN)/herd
	$(BIN)/ruff format herd tests bench experiments
	$(BIN)/ruff check --fix herd tests bench experiments

bench: $(BIN)/herd
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/tokenizer_speed.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/eval.py
	$(BIN)/python bench/vocab.py
	$(BIN)/python bench/stability_overhead.py
	$(BIN)/python bench/post_train.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
