# smsgw developer entry points. `make demo` and `make test` are the README's Quick start.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup node demo test test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# The independent SMPP implementation (npm `smpp`) used by the interop tests.
node: tests/interop/node_modules/.installed
tests/interop/node_modules/.installed: tests/interop/package.json
	cd tests/interop && npm install --no-audit --no-fund --loglevel=error
	touch $@

# The daemon with two simulated carriers and a demo config; sends one OTP to show the flow.
demo: setup
	$(PY) -m gateway demo --config config/demo.yaml

# The whole suite, with the bounded versions of the soak and fault tests.
test: setup node
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) tests/interop/node_modules var
