# lensloop: `make run` installs everything and runs the app with the demo; `make test` installs
# everything and runs the whole test suite. Both create .venv/ on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test lint bench clean-var

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "lensloop needs Python 3.11 (Django 5.2 LTS, the torch CPU wheel)")'
	@echo "installing lensloop and its dependencies into $(VENV)/ (a few minutes the first time; torch is the large one) ..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)
	@echo "installed."

install: $(STAMP)

run: install
	$(PY) manage.py run

# Two workers on two cores, the slow tests first; a progress percentage as it goes and the slowest tests at the end.
test: install
	bash scripts/test-deps.sh
	@echo "running the test suite (about 12 minutes on 2 cores) ..."
	$(PY) -m pytest -n 2 --dist loadgroup --durations=15 $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

clean-var:
	rm -rf var
