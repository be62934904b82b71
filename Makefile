# Two commands for a new machine: `make demo` and `make test`. Each makes ./.venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
# torch comes first so that nothing pulls a multi-GB CUDA build onto a machine without a GPU.
# Elsewhere, point TORCH_PIP_ARGS at the CPU wheel index of your choice, e.g. TORCH_PIP_ARGS="--index-url URL".
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: demo test install clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@if $(VENV)/bin/python -c "import torch" 2>/dev/null; then \
		echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		$(VENV)/bin/pip install -q "torch>=2.4"; \
	else \
		$(VENV)/bin/pip install -q $(TORCH_PIP_ARGS) "torch==$(TORCH_VERSION)"; \
	fi
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/hyca-batch demo

# The layers import downwards only (import-linter contracts in pyproject.toml), the code passes ruff's lint and
# format check, then the suite runs.
test: $(STAMP) chromium
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest

# One test renders the cost report in headless Chromium. Installed where this machine allows (Debian or
# Ubuntu, as root); elsewhere that test says why it skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (timeout 900 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq \
	      --no-install-recommends chromium >/dev/null) || echo "chromium could not be installed: the browser test will skip"; \
	  else echo "no chromium, and no apt-get as root to install it: the browser test will skip"; fi; }

clean:
	rm -rf $(VENV) outputs .pytest_cache
