# The README's commands. Each target first brings up .venv (seconds when it exists).
PYTHON := .venv/bin/python
DETECTOR ?= mask-rcnn

.PHONY: setup test test-slow demo demo-models

setup:
	@bash tools/setup_env.sh

test: setup
	$(PYTHON) -m pytest

test-slow: setup
	$(PYTHON) -m pytest -m slow

demo: setup
	@if [ -f tools/demo.py ]; then $(PYTHON) tools/demo.py --detector $(DETECTOR); \
	else echo "demo not built yet"; fi
