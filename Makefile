# gatewayd -- developer entry points. `make test` is what .ci/run runs.
#
#   make venv    .venv with the project and its test extras (re-run only when pyproject.toml changes)
#   make run     the daemon in the foreground on config/gatewayd.toml (SQLite and spool under ./var/)
#   make test    installs and starts the real peers (Postfix, Dovecot, smtp-sink, PostgreSQL), runs pytest
#   make bench   every bench/*.py
#   make lint    ruff + mypy --strict
#   make clean   build and tool caches; `make distclean` also removes .venv and ./var

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp
PYTEST_ARGS ?= -q

.PHONY: venv run test peers bench lint clean distclean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test,fast]'
	touch $@

run: venv
	mkdir -p var
	$(BIN)/gatewayd run -c config/gatewayd.toml

# Installs what is missing (needs root; when not root it names what is missing and fails).
peers:
	sh tests/peers/install.sh

# GATEWAYD_TEST_PG_URL: kept when set, else the server on 127.0.0.1:5432, else a private one
# started by tests/peers/postgres.sh. The Postfix/Dovecot peers are started by the pytest fixtures.
test: venv peers
	url="$${GATEWAYD_TEST_PG_URL:-$$(bash tests/peers/postgres.sh)}" && \
	  echo "GATEWAYD_TEST_PG_URL=$$url" && \
	  GATEWAYD_TEST_PG_URL="$$url" $(BIN)/pytest $(PYTEST_ARGS)

bench: venv peers
	@set -e; for f in bench/*.py; do \
	  [ -e "$$f" ] || continue; \
	  echo "== $$f"; $(BIN)/python "$$f"; \
	done

lint: venv
	$(BIN)/ruff check gatewayd
	$(BIN)/mypy gatewayd

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# Also the venv and ./var: the spool and database of `make run` (mail not yet delivered is lost).
distclean: clean
	rm -rf $(VENV) var
