# The two commands a newcomer needs: `make run` and `make test`. Both set up from
# nothing but python3, Java 17 and Maven: a virtualenv in .venv with the pinned
# dependencies, and the Kafka broker's jars from Maven Central (deploy/kafka/pom.xml).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where gochat_streams/devstack.py (KAFKA_LIB) starts Kafka from.
KAFKA_LIB := .dev/kafka/lib
KAFKA_STAMP := $(KAFKA_LIB)/.copied

.PHONY: run test unit integration kafka test-deps clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,test]'
	touch $(STAMP)

# Once per pom: Maven caches the jars in ~/.m2, so a copy after `make clean` is quick.
$(KAFKA_STAMP): deploy/kafka/pom.xml
	rm -rf $(KAFKA_LIB)
	mvn -B -q -f deploy/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
		-DoutputDirectory=$(abspath $(KAFKA_LIB))
	touch $(KAFKA_STAMP)

kafka: $(KAFKA_STAMP)

run: $(STAMP) $(KAFKA_STAMP)
	$(BIN)/python -m gochat_streams.devstack

test: $(STAMP) $(KAFKA_STAMP) test-deps
	$(BIN)/python -m pytest

unit: $(STAMP) test-deps
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP) $(KAFKA_STAMP) test-deps
	$(BIN)/python -m pytest tests/integration

# Debian packages the tests use: PostgreSQL (tests/pg.py starts a throwaway server),
# promtool (in prometheus: deploy/prometheus rules), chromium (the ops page), openssl (throwaway TLS CAs).
test-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	[ -z "$$missing" ] || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; }

clean:
	rm -rf $(VENV) .dev *.egg-info .pytest_cache .hypothesis test-artifacts
