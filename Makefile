# The two commands a newcomer needs: `make run` and `make test`. Both set up from
# nothing but python3: a virtualenv in .venv with the pinned dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test unit integration postgres clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m gochat_streams.devstack

test: $(STAMP) postgres
	$(BIN)/python -m pytest

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP) postgres
	$(BIN)/python -m pytest tests/integration

# The PostgreSQL store tests start a throwaway server (tests/pg.py) from Debian's package.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql; }

clean:
	rm -rf $(VENV) .dev *.egg-info .pytest_cache .hypothesis
