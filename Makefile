# Hostplane: `make up` runs it, `make test` tests it. Both install what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PKGS := etcd-server libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-system qemu-system-x86 qemu-utils libvirt-dev libvirt-clients dnsmasq-base iptables iproute2 pkg-config genisoimage chromium prometheus
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: up test bench deps venv lint typecheck unit clean lock

deps:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing"; \
	    echo "install them with: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

# Python dependencies come from requirements.lock.txt (every package, pinned), so a fresh machine
# resolves exactly what was tested; `make lock` re-resolves pyproject.toml's ranges into it.
$(STAMP): pyproject.toml requirements.lock.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock.txt 2>&1 | grep -v -E '^WARNING: Location' || true
	@$(BIN)/pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v -E '^WARNING: Location' || true
	@$(BIN)/python -c "import pyetcd, libvirt, fastapi" || { echo "python dependencies failed to install"; exit 1; }
	@touch $(STAMP)

venv: $(STAMP)

up: deps venv
	$(BIN)/hostplane up

lint: venv
	@$(BIN)/ruff check --quiet .
	@$(BIN)/lint-imports --no-cache >/dev/null || $(BIN)/lint-imports --no-cache

typecheck: venv
	@$(BIN)/mypy --no-error-summary

test: deps venv lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: deps venv
	$(BIN)/python -m tests.bench

# Re-resolve the newest versions pyproject.toml allows in a throw-away venv and pin them all.
lock:
	@rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	@.lock-venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -E '^WARNING: Location' || true
	@.lock-venv/bin/pip freeze --exclude-editable | grep -v '^#' > requirements.lock.txt
	@rm -rf .lock-venv
	@echo "requirements.lock.txt: $$(wc -l < requirements.lock.txt) packages pinned; commit it with the change that needed it"

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache

# The tiny test guest for the real-QEMU tests (Debian cloud kernel + busybox initramfs, built from
# `apt-get download`ed packages), cached under ~/.cache/hostplane-test-guest; prints its paths and sha256.
.PHONY: test-image
test-image: venv
	$(BIN)/python -m api.testguest
