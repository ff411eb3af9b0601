# The two commands: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DEBS := redis-server openssl
TEST_DEBS := $(RUN_DEBS) sip-tester baresip kamailio rtpengine-daemon

.PHONY: run test lint typecheck unit debs-run debs-test venv clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --config-settings editable_mode=compat -e '.[test]'
	$(BIN)/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
	touch $(STAMP)

venv: $(STAMP)

debs-run:
	scripts/ensure-debs.sh $(RUN_DEBS)

debs-test:
	scripts/ensure-debs.sh $(TEST_DEBS)

run: debs-run $(STAMP)
	$(BIN)/python scripts/devrun.py

lint: $(STAMP)
	$(BIN)/ruff check cryptify tests bench scripts twisted
	$(BIN)/ruff format --check cryptify tests bench scripts twisted

typecheck: $(STAMP)
	$(BIN)/mypy --strict cryptify

unit: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/trial -j2 tests

test: debs-test $(STAMP)
	$(MAKE) lint
	$(MAKE) typecheck
	$(MAKE) unit

clean:
	rm -rf $(VENV) _trial_temp* run *.egg-info
