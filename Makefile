# Two commands set up a fresh machine: `make demo` runs the whole flow on a small generated image set,
# `make test` runs the test suite. Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test clean-demo

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	PATH="$(abspath $(VENV))/bin:$$PATH" bash test/eval_acc_perf.sh --demo

test: $(VENV)/.installed
	$(PY) -m pytest -q
