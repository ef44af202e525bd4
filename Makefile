# sparkfleet: provisioning for NVIDIA DGX Spark fleets, and its lab.
#   make lab        build the lab, start HOSTS simulated Sparks, run site.yml, show a chat completion
#   make test       lint, unit tests and molecule scenarios (what CI runs), each stage timed; the
#                   unit tests and the scenarios run side by side, LAB_JOBS at a time; all tests
#                   but those marked 'ray' or 'long' (SELECT)
#   make test-full  the same with every test; make test-pair: the 'ray' ones alone
#   make quick      lint and the unit tests that need no lab (no Docker, no root)
#   make lab-down   remove the lab's hosts, network and services
VENV ?= .venv
HOSTS ?= 1
export PATH := $(abspath $(VENV))/bin:$(PATH)
PY := $(VENV)/bin/python
# The lab's state (tests/lab/config.py); its vault password unlocks the hosts' sudo password.
LAB_VAULT_PASSWORD_FILE = $(or $(SPARKLAB_DIR),/var/lib/sparklab)/ssh/vault-password
# Molecule scenarios (every molecule/*/molecule.yml). The lab stages (the unit tests and each
# scenario) run side by side, LAB_JOBS at a time (tests/stages.py: each stage's log printed whole
# when it ends, with its time; a failing one does not stop the others, but fails the target). The
# longest start first: fleet_ops, service, hostprep, then the others alphabetically.
ALL_SCENARIOS := $(sort $(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))
LONG_SCENARIOS := fleet_ops service hostprep
SCENARIOS ?= $(foreach s,$(LONG_SCENARIOS),$(filter $(s),$(ALL_SCENARIOS))) $(filter-out $(LONG_SCENARIOS),$(ALL_SCENARIOS))
LAB_JOBS ?= 3
# -rfEs: a summary line for each failure, error and skip (with its reason); the slowest tests
PYTEST_FLAGS ?= -rfEs --durations=25
# The tests 'make test' runs, as a pytest -m expression, in the unit stage and in every scenario's
# verifier (PYTEST_ADDOPTS, which molecule's testinfra passes on): all but those marked 'ray'
# (the pair's lab tests that run a Ray cluster across two simulated Sparks; Ray's fixed 30 s node
# start-up limit flakes under CI's load) and 'long' (lab tests beyond the budget of 45 minutes on
# CI's two cores: each a further playbook run or fault on converged hosts). 'make test-full'
# runs everything (SELECT=), 'make test-pair' the 'ray' ones alone. A caller's PYTEST_ADDOPTS
# (-x, -k ...) comes first, as make found it at the top level (a sub-make inherits the exported
# value, the selection already in it); the selection after it, so its -m wins.
SELECT ?= not ray and not long
ifeq ($(MAKELEVEL),0)
export SPARKFLEET_CALLER_ADDOPTS := $(PYTEST_ADDOPTS)
endif
export PYTEST_ADDOPTS = $(strip $(SPARKFLEET_CALLER_ADDOPTS) $(if $(SELECT),-m '$(SELECT)'))
UNIT_PYTEST = pytest -q $(PYTEST_FLAGS) tests/unit

.PHONY: setup lab lab-prepare lab-down test test-pair test-full quick lint sanity ee dist unit unit-nolab molecule lab-stages
# Make's own stages one at a time, even under -j (the lab stages run side by side through
# tests/stages.py instead, their output kept apart).
.NOTPARALLEL:

# $(call timed,LABEL,COMMANDS): run COMMANDS, then print "[time] LABEL: N s" (with FAILED and the
# exit status when they fail) and exit with their status. Join several commands with '&&', not
# ';': 'set -e' does not apply inside a subshell whose status is tested, as it is here. LABEL and
# COMMANDS must not contain commas.
timed = start=$$(date +%s); \
	( set -x; $(2) ) && status=0 || status=$$?; \
	echo "[time] $(1): $$(( $$(date +%s) - start )) s$$(test $$status -eq 0 || echo " FAILED (exit $$status)")"; \
	exit $$status

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	touch $@

setup: $(VENV)/.installed

lab: setup
	$(PY) -m tests.lab up --hosts $(HOSTS)
	ansible-playbook playbooks/site.yml -i inventory/lab --vault-password-file $(LAB_VAULT_PASSWORD_FILE)
	$(PY) -m tests.lab demo

lab-down: setup
	$(PY) -m tests.lab down

lint: setup
	@$(call timed,lint,yamllint -s . && ansible-lint && ruff check . && ruff format --check . && mypy)

# ansible-test sanity on the collection as built (tests/sanity/run.py)
sanity: setup
	@$(call timed,sanity,$(PY) -m tests.sanity.run)

# The collection tarball and the Python package's wheel, for the execution environment
dist: setup
	rm -rf dist && ansible-galaxy collection build --output-path dist >/dev/null && pip wheel -q --no-deps -w dist . && rm -rf build

# The execution environment's build context (ansible-builder create; building the image needs a
# registry: ansible-builder build -f execution-environment.yml -t sparkfleet-ee:0.1.0)
ee: setup dist
	@$(call timed,execution environment,ansible-builder create -f execution-environment.yml --context .cache/ee && test -s .cache/ee/_build/requirements.yml)

lab-prepare: setup
	@$(call timed,lab prepare,$(PY) -m tests.lab prepare)

unit: lab-prepare
	@$(call timed,unit,$(UNIT_PYTEST))

unit-nolab: setup
	@$(call timed,unit (no lab),pytest -q $(PYTEST_FLAGS) -m nolab tests/unit)

# molecule into a log: it wraps the lines it frames at the terminal's width, COLUMNS in a log; a
# wide one keeps each line (a failed test's summary line) whole
MOLECULE_LOGGED := COLUMNS=400 molecule

molecule: lab-prepare
	@$(PY) -m tests.stages --jobs $(LAB_JOBS) $(foreach s,$(SCENARIOS),'molecule $(s)=$(MOLECULE_LOGGED) test -s $(s)')

# The unit tests and every scenario, side by side
lab-stages: lab-prepare
	@$(PY) -m tests.stages --jobs $(LAB_JOBS) 'molecule $(firstword $(SCENARIOS))=$(MOLECULE_LOGGED) test -s $(firstword $(SCENARIOS))' 'unit=$(UNIT_PYTEST)' $(foreach s,$(wordlist 2,99,$(SCENARIOS)),'molecule $(s)=$(MOLECULE_LOGGED) test -s $(s)')

molecule-%: lab-prepare
	@$(call timed,molecule $*,molecule test -s $*)

# The stages run in one sub-make, in order, so that the total covers them all and is printed
# whether they pass or not; the sub-make's status is the target's.
test:
	@$(call timed,total,$(MAKE) --no-print-directory lint sanity ee lab-stages)

# The pair's Ray lab tests, which 'make test' leaves out (the pair's service test alone took
# 10 min on an idle 2-core machine, 25 min at load 15; -m ray after PYTEST_ADDOPTS' -m wins)
test-pair: lab-prepare
	@$(call timed,unit (ray),$(UNIT_PYTEST) -m ray)

# Everything: 'make test' with the tests marked 'ray' and 'long'
test-full:
	@$(MAKE) --no-print-directory test SELECT=

quick:
	@$(call timed,total,$(MAKE) --no-print-directory lint unit-nolab)
