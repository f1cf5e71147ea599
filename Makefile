# Two commands for a fresh machine: `make book` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: book test setup pretrain results clean-book

setup: $(STAMP)

# torch is installed first from its pinned CPU build; the lock keeps later installs from replacing it.
$(STAMP): pyproject.toml requirements/lock.txt requirements/torch.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements/torch.txt
	$(BIN)/python -m pip install -q -c requirements/torch.txt -c requirements/lock.txt -e '.[book,dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

pretrain: setup
	$(BIN)/forgetting pretrain

book: setup pretrain
	$(BIN)/forgetting book

test: setup
	$(BIN)/python -m pytest

clean-book:
	rm -rf _build
