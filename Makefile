# The two commands a newcomer needs: `make run` and `make test`. Both set up from
# nothing but python3: a virtualenv in .venv with the pinned dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test unit integration test-deps clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m gochat_streams.devstack

test: $(STAMP) test-deps
	$(BIN)/python -m pytest

unit: $(STAMP) test-deps
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP) test-deps
	$(BIN)/python -m pytest tests/integration

# Debian packages the tests use: PostgreSQL (tests/pg.py starts a throwaway server),
# promtool (in prometheus: deploy/prometheus rules), chromium (the ops page).
test-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	[ -z "$$missing" ] || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; }

clean:
	rm -rf $(VENV) .dev *.egg-info .pytest_cache .hypothesis test-artifacts
