# The two commands of the README: `make demo` and `make test`. Both install what is missing.
# The venv and the Asterisk chroot are cached outside the clone so a second run is warm. The venv's
# editable install points at one checkout: a clone elsewhere installs itself again (its path is in the stamp).
SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/pbx
VENV ?= $(CACHE)/venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)
export PBX_CACHE_DIR := $(CACHE)

.PHONY: all deps venv chroot demo test unit lint typecheck clean

all: test

# Debian packages the host needs (Postgres server, sipp, debootstrap). Idempotent.
deps:
	@bash devstack/install_host_deps.sh

venv: deps
	@test -x $(PY) || python3 -m venv $(VENV)
	@stamp=$(VENV)/.installed-$$( (cat pyproject.toml; pwd) | sha1sum | cut -c1-12); \
	if [ ! -f $$stamp ]; then \
	  $(PY) -m pip install -q --upgrade pip && \
	  $(PY) -m pip install -q -e '.[dev]' && rm -f $(VENV)/.installed-* && touch $$stamp; \
	fi

chroot: venv
	@$(VENV)/bin/pbxctl dev chroot

demo: chroot
	@$(PY) -m devstack.demo

test: chroot lint typecheck
	@PBX_SHARED_DIR=$(SHARED) $(PY) -m pytest -q -p no:cacheprovider --durations=15

unit: venv
	@$(PY) -m pytest -q -p no:cacheprovider -m 'not stack'

lint: venv
	@$(VENV)/bin/ruff check -q . && $(VENV)/bin/ruff format -q --check .

typecheck: venv
	@$(VENV)/bin/mypy --no-error-summary

clean:
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache
