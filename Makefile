# SPDX-License-Identifier: GPL-2.0-only
# Targets are run through ./run, which installs the Debian packages first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

all: bpf venv

# The XDP objects, and the wrapper's native launcher (launcher/) beside them.
bpf:
	@$(MAKE) -s -C bpf
	@$(MAKE) -s -C launcher

$(VENV)/.stamp: setup.cfg setup.py pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check wheel
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	@touch $@

venv: $(VENV)/.stamp

demo: bpf venv
	@$(VENV)/bin/ipt2xdp demo

test: bpf venv
	@$(PY) -m pytest -q -p no:cacheprovider --durations=20 tests compat_tests

# The long differential run with ipt2xdp attached (about 1.2 s per ruleset with 4 workers).
compat-long: bpf venv
	@$(PY) -m compat_tests.differential --rulesets 2000 --attach native

# Forwarding on: the receiver forwards to a third namespace, rulesets have FORWARD rules.
compat-long-forwarding: bpf venv
	@$(PY) -m compat_tests.differential --rulesets 500 --attach native --forwarding

# 1,000 imports under a probe stream, 500 per backend (about 1.5-2 s per import: 30-40 min).
compat-updates: bpf venv
	@IPT2XDP_COMPAT_UPDATES=1000 $(PY) -m pytest -q -s -p no:cacheprovider compat_tests/test_update_under_traffic.py

# The plots need matplotlib: the 'bench' extra, installed once beside the venv's test extra. In
# compat mode as above: a plain editable install brings back the import hook, and with it about
# 17 ms of every wrapper call's start, which the wrapper benchmark then measures.
$(VENV)/.bench-stamp: $(VENV)/.stamp
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[bench]' --config-settings editable_mode=compat
	@touch $@

bench: bpf venv $(VENV)/.bench-stamp
	@$(PY) -m bench

bench-quick: bpf venv $(VENV)/.bench-stamp
	@$(PY) -m bench --quick

clean:
	@$(MAKE) -s -C bpf clean
	@$(MAKE) -s -C launcher clean
	rm -rf $(VENV) build *.egg-info

.PHONY: all bpf venv demo test compat-long compat-long-forwarding compat-updates bench bench-quick clean
