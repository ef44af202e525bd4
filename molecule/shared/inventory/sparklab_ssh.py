#!/usr/bin/env python3
"""Inventory script: how molecule scenarios reach their simulated DGX Sparks.

As a fleet is reached: SSH to the host's address on the lab network, as a non-root user with
passwordless sudo (the lab's ``ansible`` account; ``make lab`` logs in as the account whose sudo
asks for a password). Each scenario links this directory as an inventory source
(``provisioner.inventory.links.hosts``); Ansible reads it after molecule's own inventory file, so
these host variables replace the ``community.docker.docker`` connection molecule's driver sets.
testinfra reads the same inventory (``ansible-inventory --list``), so the verifiers log in the
same way, with ``--sudo``. Lists the running containers labelled ``sparklab.molecule`` with the
scenario's name (``MOLECULE_SCENARIO_NAME``); ``--host NAME`` prints ``{}`` (all is in ``_meta``).
The connection variables are the lab's (``tests/lab/access.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tests.lab.access import ansible_host_vars
from tests.lab.config import LabConfig


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def hosts(scenario: str) -> dict[str, str]:
    """Container name -> address on the lab network, for the scenario's running containers."""
    names = _docker(
        "ps", "--filter", f"label=sparklab.molecule={scenario}", "--format", "{{.Names}}"
    ).split()
    template = f'{{{{(index .NetworkSettings.Networks "{LabConfig.network}").IPAddress}}}}'
    found = {}
    for name in names:
        addr = _docker("inspect", "-f", template, name).strip()
        if addr:
            found[name] = addr
    return found


def main() -> None:
    if "--host" in sys.argv:
        print("{}")
        return
    cfg = LabConfig()
    scenario = os.environ.get("MOLECULE_SCENARIO_NAME", "")
    found = hosts(scenario) if scenario else {}
    hostvars = {
        name: ansible_host_vars(cfg, addr, sudo_password=False) for name, addr in found.items()
    }
    print(json.dumps({"_meta": {"hostvars": hostvars}, "all": {"hosts": sorted(found)}}))


if __name__ == "__main__":
    main()
