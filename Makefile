# The two commands: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# gcc and libgmp-dev build the C Miller loop of SAKKE when the package installs,
# libopus-dev our Opus binding (cryptify/protocols/_opus_build.py);
# clang and libbpf-dev the relay's eBPF program (libbpf1 loads it at run time).
# (The CIG bridge's C packet path, cryptify/cig/relay/_cbridge_build.py, needs
# gcc only: it calls pylibsrtp's libsrtp, not Debian's libsrtp2; docs/bridge.md.)
RUN_DEBS := redis-server openssl gcc libgmp-dev libopus-dev clang libbpf-dev
TEST_DEBS := $(RUN_DEBS) sip-tester baresip kamailio kamailio-tls-modules rtpengine-daemon \
	poppler-utils zbar-tools qrencode img2pdf groff-base dovecot-imapd postfix chromium chromium-driver \
	iproute2 iptables
# Building the crs and cig packages, and proving them in a Debian root.
PACKAGE_DEBS := debhelper dpkg-dev fakeroot python3.11-venv python3.11-dev gcc libgmp-dev libopus-dev clang libbpf-dev rpm rpmlint debootstrap iproute2
# tests/packaging is slow (package builds, a debootstrap root): its own target.
UNIT_TESTS = $(filter-out tests.packaging,$(subst /,.,$(patsubst %.py,%,$(patsubst %/__init__.py,%,$(wildcard tests/test_*.py tests/*/__init__.py)))))

.PHONY: run run-pool test lint typecheck unit debs-run debs-test debs-packages packages test-packages venv clean man

# relay.bpf.c: the relay's eBPF object is compiled by setup.py at install.
$(STAMP): setup.cfg pyproject.toml setup.py cryptify/crs/relay/bpf/relay.bpf.c cryptify/cig/relay/_cbridge_build.py cryptify/cig/relay/cbridge.c
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

debs-packages:
	scripts/ensure-debs.sh $(PACKAGE_DEBS)

run: debs-run $(STAMP)
	$(BIN)/python scripts/devrun.py

# A two-instance pool, each instance in a network namespace of its own (root).
run-pool: debs-run $(STAMP)
	scripts/ensure-debs.sh iproute2
	$(BIN)/python scripts/devpool.py

lint: $(STAMP)
	$(BIN)/ruff check cryptify tests bench scripts twisted
	$(BIN)/ruff format --check cryptify tests bench scripts twisted

typecheck: $(STAMP)
	$(BIN)/mypy --strict cryptify

unit: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/trial -j2 $(UNIT_TESTS)

test: debs-test $(STAMP)
	$(MAKE) lint
	$(MAKE) typecheck
	$(MAKE) unit

# Manual pages from the CLIs' own definitions (docs/packaging.md).
man: $(STAMP)
	$(BIN)/python -m cryptify.tools.manpage build/man

# crs and cig as .deb and .rpm in build/packages (docs/packaging.md).
packages: debs-packages
	packaging/build.sh build/packages

# Build, install into a fresh Debian 12 root, run, upgrade (as root; slow).
test-packages: debs-packages $(STAMP)
	$(BIN)/trial tests.packaging

clean:
	rm -rf $(VENV) _trial_temp* run *.egg-info
