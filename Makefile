# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv on first use.
# torch is pinned to the CPU wheel in the SAME pip command as the package: an open range alone would pull
# a multi-GB CUDA build. The package itself only asks for torch>=2.3 (see pyproject.toml).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint fashion-mnist clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH_PIN) -e '.[test,nlp]'
	touch $@

# Optional real data: the full Fashion-MNIST from Debian (tests that need it skip, with a reason, without it).
fashion-mnist:
	@test -d $(FASHION) || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
		|| echo "note: could not install dataset-fashion-mnist (needs root/apt); Fashion-MNIST tests will skip"

demo: $(VENV)/.installed
	$(VENV)/bin/kdlab demo

test: $(VENV)/.installed fashion-mnist
	$(PY) -m pytest

# ruff lint and format check (configured in pyproject.toml); CI runs it before the tests
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs report
