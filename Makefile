# Two commands set up a fresh Debian 12 / Raspberry Pi OS machine: `make demo` and `make test`.
# Both are idempotent: the virtualenv is rebuilt only when pyproject.toml changes, and system
# packages are installed only when missing.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# apt needs root; use sudo when we are not.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT_PACKAGES := mosquitto socat
PYTEST_ARGS ?=
# `make test` runs the suite in this many pytest-xdist workers: most tests wait on real protocol
# timers (CAN, Modbus, MQTT, the plant), so two workers halve the wall time even on 2 cores.
TEST_WORKERS ?= 2
BENCH_ARGS ?=

.PHONY: all demo test test-quick test-deep test-loaded bench lint typecheck unit clean \
	system-packages venv mutation deb deb-packages

all: test

# System packages the tests and demo use: a real MQTT broker, socat for RTU over a pty pair,
# systemd's analyzer for the unit's security score (the package also brings systemd itself, which
# is not started: nothing here needs it running), gcc for the slow-card shim (tools/slowdisk.c),
# RabbitMQ for the broker-cluster tests (hil/rabbitmq.py starts its own nodes), and lintian for
# the Debian package's test (tests/test_deb.py). The packages'
# own services are not started by the install: a policy-rc.d that says no (exit 101) is in place
# while apt runs, unless the machine has one already; under systemd the rabbitmq-server and epmd
# units are also disabled (and stopped, had they started). Nothing holds 5672, 1883 or 4369.
# (Without systemd, do not call /etc/init.d/rabbitmq-server: even its `stop` starts an epmd.)
system-packages:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v socat >/dev/null 2>&1 || missing="$$missing socat"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v gcc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || missing="$$missing rabbitmq-server"; \
	command -v lintian >/dev/null 2>&1 || missing="$$missing lintian"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		policy=""; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null && \
			$(SUDO) chmod 755 /usr/sbin/policy-rc.d && policy=ours; \
		fi; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
		status=$$?; \
		if [ "$$policy" = ours ]; then $(SUDO) rm -f /usr/sbin/policy-rc.d; fi; \
		case "$$missing" in *rabbitmq-server*) \
			if [ -d /run/systemd/system ]; then \
				$(SUDO) systemctl disable --now rabbitmq-server epmd.socket epmd >/dev/null 2>&1 || true; \
			fi;; \
		esac; \
		exit $$status; \
	fi

$(STAMP): pyproject.toml
	@if ! $(PYTHON) -m venv --help >/dev/null 2>&1 || ! $(PYTHON) -c 'import ensurepip' >/dev/null 2>&1; then \
		echo "installing python3-venv"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) system-packages
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every test but the deep soaks, plus the static checks: this is what CI runs. Each test has a
# time limit (pyproject.toml, conftest.py); the slowest 15 are listed at the end.
test: $(STAMP) system-packages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=15 $(PYTEST_ARGS)

# The inner loop while developing: no static checks, no test marked slow.
test-quick: $(STAMP) system-packages
	$(BIN)/python -m pytest -m "not slow and not deep" $(PYTEST_ARGS)

# The long soaks: the ledger's 100 SIGKILLs, the load benchmark's smoke run, and the core's
# properties at 17,000 examples each (docs/testing.md has the time).
test-deep: $(STAMP) system-packages
	$(BIN)/python -m pytest -m deep --durations=15 $(PYTEST_ARGS)
	HYPOTHESIS_PROFILE=nightly $(BIN)/python -m pytest --timeout=1200 tests/core/test_core_properties.py $(PYTEST_ARGS)

# `make test` while a CPU hog keeps every core busy: how CI's shared machines feel.
test-loaded: $(STAMP) system-packages
	tools/with-cpu-hog $(MAKE) test

# Mutation testing of the safety core (issue 13): mutmut changes controller/core/ one operator or
# constant at a time and a test in tests/core/ must fail on each ([tool.mutmut] in pyproject.toml;
# hypothesis profile "mutation" in tests/core/conftest.py). Starts afresh in mutants/; about 25
# minutes on two busy cores. Lists the survivors (a survivor in a rule is a missing test); mutants
# strict mypy rejects are left out of the list. `$(BIN)/mutmut show NAME` prints one mutant's diff.
mutation: $(STAMP)
	rm -rf mutants
	PATH="$(abspath $(BIN)):$$PATH" HYPOTHESIS_PROFILE=mutation $(BIN)/mutmut run
	$(BIN)/mutmut results | grep -v ': caught by type check$$' || true

# Benchmarks (issue 8): about 25 minutes; writes bench/results.json and docs/performance.md.
# Run it on a quiet machine: the figures are only as steady as the machine under them.
bench: $(STAMP) system-packages
	$(BIN)/python -m bench $(BENCH_ARGS)

# The Debian package for this machine's architecture: dist/v2g-controller_<version>_<arch>.deb
# (packaging/README.md). Its virtualenv is built with the system's python3, whatever PYTHON is.
# About 1-2 minutes, 19 MiB on amd64; needs network for pip (or a local wheel index).
DEB_PYTHON ?= /usr/bin/python3
deb: deb-packages
	$(DEB_PYTHON) packaging/build_deb.py --out dist

# What `make deb` needs beyond a fresh Debian 12: the system python3's venv module (dpkg-deb is
# always there). lintian, to check the result, comes with system-packages.
deb-packages:
	@if ! $(DEB_PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then \
		echo "installing python3-venv"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; \
	fi

demo: $(STAMP) system-packages
	$(BIN)/python -m hil.demo --config config/example-cn.yaml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis mutants
