# sparkfleet: provisioning for NVIDIA DGX Spark fleets, and its lab.
#   make lab        build the lab, start HOSTS simulated Sparks, run site.yml, show a chat completion
#   make test       lint, unit tests and molecule scenarios (what CI runs)
#   make lab-down   remove the lab's hosts, network and services
VENV ?= .venv
HOSTS ?= 1
export PATH := $(abspath $(VENV))/bin:$(PATH)
PY := $(VENV)/bin/python

.PHONY: setup lab lab-prepare lab-down test lint unit molecule

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	touch $@

setup: $(VENV)/.installed

lab: setup
	$(PY) -m tests.lab up --hosts $(HOSTS)
	ansible-playbook playbooks/site.yml -i inventory/lab
	$(PY) -m tests.lab demo

lab-down: setup
	$(PY) -m tests.lab down

lint: setup
	yamllint -s .
	ansible-lint
	ruff check .
	ruff format --check .
	mypy

lab-prepare: setup
	$(PY) -m tests.lab prepare

unit: lab-prepare
	pytest -q tests/unit

molecule: lab-prepare
	molecule test --all

test: lint unit molecule
